"""Disconnect watching: ASGI reports a client's leaving only through ``receive``.

Every open stream needs a pending ``receive()``, so whatever waits on it is multiplied by
the number of idle streams, and every full garbage collection traverses it. On asyncio
each read is a task of ``receive()`` itself, with a done-callback that is the
:class:`StreamWatch` object: no coroutine, closure or bound method of ssebus's per stream
(``_seam.read_once``; elsewhere, trio, a background task per read).
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any

from ._connection import SseConnection
from ._seam import Background, Done, read_once
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
        #: The pending read (``_seam.read_once``); its ``cancel()`` stops it.
        self._watching: Done | None = None

    def watch(self, receive: Receive) -> None:
        """Read ``receive`` until ``http.disconnect``, then abort the connection (a
        ``receive`` that raises aborts it too)."""
        self._receive = receive
        # Each read runs in this copy of the request's context, as a task started here would.
        self._context = contextvars.copy_context()
        self._read()

    def stop(self) -> None:
        """Stop watching (the stream has ended)."""
        watching, self._watching, self._receive = self._watching, None, None
        if watching is not None:
            watching.cancel()

    def _read(self) -> None:
        receive, context = self._receive, self._context
        assert receive is not None
        assert context is not None
        assert self._background is not None
        try:
            self._watching = read_once(self._background, receive, context, self)
        except Exception as exc:
            self.connection.abort(f"receive failed: {exc!r}")

    def __call__(self, done: Done | None = None) -> None:
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
