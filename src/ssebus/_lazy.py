"""Starting the broadcaster at the first request, for servers that send no ASGI lifespan.

daphne never sends ``lifespan.startup`` (nor does any server run with its lifespan off), so
nothing would start the broadcaster and every request would get a 503. :class:`LazyStart`
runs ``async with broadcaster:`` in one task the endpoint owns, on the server's event loop,
from the first request until it is asked to stop: :meth:`LazyStart.aclose`, or the stop
signal the endpoint's :class:`~ssebus._shutdown.SignalChain` catches in front of the
server's. It starts only a :class:`~ssebus.Broadcaster` that never ran, and only where that
signal will come (:func:`why_not`): otherwise nothing would ever stop it, and the endpoint
answers 503 and says why.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from functools import partial
from typing import Any

import anyio

from ._seam import _asyncio_loop
from ._shutdown import SignalChain

__all__ = ["LazyStart", "why_not"]

logger = logging.getLogger("ssebus")


def why_not(signals: SignalChain | None) -> str | None:
    """Why a lazily started broadcaster would have nobody to stop it; None if it would."""
    if signals is None:
        return "stop_on_signals=False leaves nothing to stop it"
    if threading.current_thread() is not threading.main_thread():
        return (
            "requests run off the main thread, on event loops that end with them "
            "(a TestClient outside `with TestClient(app)`?)"
        )
    # The chain is in front of a server's own SIGTERM handler (uvicorn's, hypercorn's,
    # Twisted's under daphne): the server will be stopped, and the chain stops us first.
    # Other endpoints' chains in between are looked through.
    handler = signal.getsignal(signal.SIGTERM)
    if handler is not signals._handler:
        handler = None
    while isinstance(chain := getattr(handler, "__self__", None), SignalChain):
        handler = chain._previous.get(signal.SIGTERM)
    if not callable(handler):
        return (
            "no server handles SIGTERM in this process, so nothing would stop it (in "
            "tests: `async with broadcaster`, or `with TestClient(app)`)"
        )
    return None


class LazyStart:
    """Runs ``broadcaster`` from the first request on, at most once, until :meth:`aclose`."""

    def __init__(self, broadcaster: object) -> None:
        self._broadcaster = broadcaster
        self._started: anyio.Event | None = None
        self._asked: anyio.Event | None = None
        self._done: anyio.Event | None = None
        self._then: Callable[[], object] | None = None
        self._task: Any = None  # the asyncio task, held so it is not collected
        #: Why the start failed, once it has.
        self.failure: str | None = None

    def wanted(self) -> bool:
        """True while the first start is under way, and before it while the broadcaster
        has never run (one that ran and stopped stays stopped, whoever ran it)."""
        if self._started is not None:
            return not self._started.is_set()
        return getattr(self._broadcaster, "_state", None) == "new"

    async def start(self) -> None:
        """Start it once, however many requests ask at the same time; return once it runs
        (or failed to start: see :attr:`failure`)."""
        if self._started is None:
            self._started, self._asked, self._done = anyio.Event(), anyio.Event(), anyio.Event()
            run = partial(self._run, self._started, self._asked, self._done)
            loop = _asyncio_loop()
            if loop is not None:
                self._task = loop.create_task(run())
            else:
                import trio  # only reached under trio

                # A system task: owned by the run itself, which outlives every request.
                trio.lowlevel.spawn_system_task(run)
        await self._started.wait()

    async def _run(self, started: anyio.Event, asked: anyio.Event, done: anyio.Event) -> None:
        manager: Any = self._broadcaster
        try:
            async with manager:
                logger.info(
                    "SseEndpoint started the Broadcaster at the first request: no ASGI "
                    "lifespan came (daphne sends none); it stops with the server's "
                    "SIGINT/SIGTERM"
                )
                started.set()
                await asked.wait()
        except Exception as exc:  # a system task must not raise: it would end the run
            self.failure = repr(exc)
        finally:
            started.set()
            done.set()
            then, self._then = self._then, None
            if then is not None:
                then()

    def stop_soon(self, then: Callable[[], object]) -> bool:
        """From a plain loop callback (a signal's): stop a run we own, then call ``then()``.
        False if there is no run of ours to stop."""
        if self._asked is None or self._done is None or self._done.is_set():
            return False
        self._then = then
        self._asked.set()
        return True

    async def aclose(self) -> None:
        """Stop the run we own (every stream gets its goodbye) and wait until it has ended."""
        if self._asked is None or self._done is None:
            return
        self._asked.set()
        await self._done.wait()
