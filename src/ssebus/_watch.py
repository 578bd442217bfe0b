"""Disconnect watching: ASGI reports a client's leaving only through ``receive``.

Every open stream needs a pending ``receive()``, so whatever waits on it is multiplied by
the number of idle streams, and every full garbage collection traverses it. On asyncio
the task is one of ``receive()`` itself, with a done-callback that is the
:class:`StreamWatch` object: no coroutine, closure or bound method of ssebus's per stream.
Elsewhere (trio) a background task reads ``receive`` in a loop.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any

from ._connection import SseConnection
from ._seam import Background, _asyncio_loop
from ._types import Receive

__all__ = ["OnStall", "StreamWatch"]

#: What ``on_stall`` is: a coroutine function of the connection, run in the background.
OnStall = Callable[[SseConnection], Coroutine[Any, Any, None]]


class StreamWatch:
    """One stream's dealings with the background: reading ``receive`` until the client
    leaves, which aborts ``connection`` (:meth:`watch`, :meth:`stop`), and running
    ``on_stall(connection)`` when it is cut as stalled.

    The object itself is the callback of both, so that an idle stream holds nothing more:
    called with the finished ``receive()`` task, or with nothing (as the connection's
    ``on_stall``) when the connection is cut while its client does not read.
    """

    __slots__ = ("_background", "_context", "_receive", "_watching", "connection", "on_stall")

    connection: SseConnection

    def __init__(self, background: Background | None, on_stall: OnStall | None) -> None:
        #: Set before :meth:`watch` is called, as is ``connection``.
        self._background = background
        self.on_stall = on_stall
        self._receive: Receive | None = None
        self._context: contextvars.Context | None = None
        #: The pending ``receive()`` (a task or future) on asyncio, or what cancels the
        #: reading task elsewhere.
        self._watching: asyncio.Future[Any] | Callable[[], object] | None = None

    def watch(self, receive: Receive) -> None:
        """Read ``receive`` until ``http.disconnect``, then abort the connection (a
        ``receive`` that raises aborts it too)."""
        assert self._background is not None
        if _asyncio_loop() is None:
            self._watching = self._background.start(partial(_read_until_disconnect, self, receive))
            return
        self._receive = receive
        # Each read runs in this copy of the request's context, as a task started here would.
        self._context = contextvars.copy_context()
        self._read()

    def stop(self) -> None:
        """Stop watching (the stream has ended)."""
        watching, self._watching, self._receive = self._watching, None, None
        if callable(watching):  # a task elsewhere
            watching()
        elif watching is not None:  # an asyncio future, or a server's own (granian's)
            watching.cancel()

    def _read(self) -> None:
        receive, context = self._receive, self._context
        assert receive is not None
        assert context is not None
        loop = _asyncio_loop()
        assert loop is not None
        assert self._background is not None
        try:
            awaitable = context.run(receive)
        except Exception as exc:
            self.connection.abort(f"receive failed: {exc!r}")
            return
        self._watching = self._background.hang(loop, awaitable, context, self)

    def __call__(self, done: asyncio.Future[Any] | None = None) -> None:
        assert self._background is not None
        if done is None:  # the connection's on_stall
            if self.on_stall is not None:
                self._background.start(partial(self.on_stall, self.connection))
            return
        self._background.forget(done)
        if done is not self._watching or done.cancelled():
            return  # stopped meanwhile
        self._watching = None
        connection = self.connection
        exc = done.exception()
        if exc is not None:
            if isinstance(exc, Exception):  # one request's failure never reaches anyone else
                connection.abort(f"receive failed: {exc!r}")
            return
        try:
            disconnected = done.result()["type"] == "http.disconnect"
        except Exception as exc:
            connection.abort(f"receive failed: {exc!r}")
            return
        if disconnected:
            connection.left = True
            connection.abort("client disconnected")
        else:
            self._read()


async def _read_until_disconnect(watch: StreamWatch, receive: Receive) -> None:
    """The background task that watches ``receive`` where there is no asyncio loop."""
    connection = watch.connection
    try:
        while (await receive())["type"] != "http.disconnect":
            pass
    except Exception as exc:  # one request's failure never reaches anyone else
        connection.abort(f"receive failed: {exc!r}")
    else:
        connection.left = True
        connection.abort("client disconnected")
