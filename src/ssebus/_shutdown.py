"""Stopping with the server: every stream ends when the process is asked to stop.

ASGI servers (uvicorn, hypercorn, gunicorn's uvicorn worker) wait for open responses to
finish before they send lifespan shutdown, and an event stream never finishes by itself,
so a plain ``uvicorn app:app`` would wait forever. ssebus therefore listens for the signals
the server listens for (SIGINT, SIGTERM, and SIGQUIT, which gunicorn sends its workers):
its handler is chained in front of the one already installed, and first asks the
broadcaster to close: every stream gets its final jittered ``retry:`` and ends (within the
broadcaster's ``shutdown_timeout``). Then the signal is handed on, as if it had only just
arrived, to whoever had it before (the server starts its own graceful shutdown and finds
no stream to wait for; Python's default ends the process; trio raises KeyboardInterrupt
where it is safe). A second signal meanwhile is handed on at once. Nothing is patched. A
server that installs its handlers later replaces ours, so :meth:`SignalChain.ensure` is
called again at every new stream.

A server that listens through asyncio's ``loop.add_signal_handler`` (hypercorn, granian's
workers) hears the signal through the loop's wakeup fd whatever Python handler is
installed: its shutdown starts alongside ours, and the signal is not raised again (granian's
worker blocks for good on a third stop request).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from ._seam import soon_from_anywhere

try:
    # signal.getsignal converts each answer to an enum, through a raised ValueError for a
    # handler that is a function: 5-10 us a signal, at every new stream.
    import _signal  # type: ignore[import-not-found, unused-ignore]

    _getsignal: Callable[[int], object] = _signal.getsignal
except ImportError:  # pragma: no cover - an interpreter without CPython's _signal
    _getsignal = signal.getsignal

__all__ = ["SignalChain"]

logger = logging.getLogger("ssebus")

#: Ctrl+C, an orchestrator's stop, and gunicorn's quick shutdown of its workers.
SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGQUIT") if hasattr(signal, name)
)


class SignalChain:
    """On SIGINT, SIGTERM or SIGQUIT, calls ``on_stop(then)`` on the event loop; ``then()``,
    once the streams have ended, hands the signal on to the handler that was there before."""

    def __init__(self, on_stop: Callable[[Callable[[], object]], object]) -> None:
        self._on_stop = on_stop
        self._stopping: int | None = None
        self._handler = self._handle  # one bound method, so "is ours installed?" can tell
        self._previous: dict[int, Any] = {}
        self._soon: Callable[[Callable[[], object]], object] | None = None

    def ensure(self) -> None:
        """Install (again) where ours is not the current handler; only the main thread can."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in SIGNALS:
            current = _getsignal(signum)
            if current is self._handler:
                continue
            if current in (signal.SIG_IGN, None):
                continue  # someone chose to ignore it (or it is not Python's to change)
            if isinstance(getattr(current, "__self__", None), asyncio.AbstractEventLoop):
                # uvloop's own dispatcher (loop.add_signal_handler): replacing it, even
                # for a moment, loses the server's callback. Left alone.
                continue
            self._soon = soon_from_anywhere()
            try:
                signal.signal(signum, self._handler)
            except (ValueError, OSError):  # not the main thread of the main interpreter
                return
            self._previous[signum] = current

    def restore(self) -> None:
        """Put back the handlers ours replaced, where ours is still the one installed."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, previous in self._previous.items():
            if signal.getsignal(signum) is self._handler:
                signal.signal(signum, previous)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        soon = self._soon
        if self._stopping is None and soon is not None:
            self._stopping = signum
            try:
                # Handed on from a plain loop callback, never from inside a task of ours:
                # trio then raises KeyboardInterrupt in its main task, where servers
                # expect it, not in the broadcaster's.
                soon(lambda: self._on_stop(lambda: soon(self._hand_on)))
            except RuntimeError:  # the loop is already closed
                pass
            else:
                return
        self._pass_on(signum, frame)

    def _hand_on(self) -> None:
        """The streams have ended: the signal goes where it would have gone."""
        signum, self._stopping = self._stopping, None
        if signum is None:
            return
        previous = self._previous.get(signum, signal.SIG_DFL)
        if signal.getsignal(signum) is self._handler:
            signal.signal(signum, previous)
        self._previous.pop(signum, None)
        if not _loop_dispatched(previous):
            signal.raise_signal(signum)

    def _pass_on(self, signum: int, frame: FrameType | None) -> None:
        previous = self._previous.get(signum, signal.SIG_DFL)
        if callable(previous):
            previous(signum, frame)
        else:
            signal.signal(signum, previous)
            signal.raise_signal(signum)


def _loop_dispatched(handler: object) -> bool:
    """True for the placeholder asyncio installs with ``loop.add_signal_handler``: the loop
    has already run its own handler for this signal (through its wakeup fd)."""
    unix_events = getattr(asyncio, "unix_events", None)
    return handler is not None and handler is getattr(unix_events, "_sighandler_noop", None)
