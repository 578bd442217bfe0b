"""The one place where asyncio and trio are told apart, for the two hot spots that need it.

anyio's own primitives work everywhere but cost more per object than a bare asyncio
future or task; every idle stream holds one of each, so on asyncio ssebus uses the bare
ones (as ``anyio.Event.__new__`` picks a backend class) and anyio's elsewhere.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Union

import anyio
import anyio.abc

__all__ = [
    "Background",
    "TurnClock",
    "Waiter",
    "new_waiter",
    "soon_from_anywhere",
    "turn_clock",
    "wake",
]


_get_running_loop = asyncio.events._get_running_loop  # C; None outside a loop's thread


def _asyncio_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


#: What a sleeping writer waits on: a bare future on asyncio, an ``anyio.Event`` elsewhere.
Waiter = Union["asyncio.Future[None]", anyio.Event]


def new_waiter() -> tuple[Waiter, Awaitable[object]]:
    """A one-shot wake-up and what to await for it (no coroutine is made on asyncio)."""
    loop = _asyncio_loop()
    if loop is not None:
        future: asyncio.Future[None] = loop.create_future()
        return future, future
    event = anyio.Event()
    return event, event.wait()


def wake(waiter: Waiter) -> None:
    """Wake whoever awaits ``waiter``, from its own loop directly or from any other thread
    through that loop's ``call_soon_threadsafe``; harmless if it already woke or was
    cancelled."""
    if isinstance(waiter, asyncio.Future):
        loop = waiter.get_loop()
        if loop is not _get_running_loop():  # another loop's stream: a granian thread worker
            loop.call_soon_threadsafe(_resolve, waiter)
        elif not waiter.done():  # a cancelled wait leaves a cancelled future
            waiter.set_result(None)
    else:
        waiter.set()


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Background:
    """Small background tasks, one per stream, owned by one task group's owner.

    On asyncio each is a bare task (an anyio task costs 2.6 KiB more per idle stream),
    tracked here and awaited by :meth:`aclose`; elsewhere it is a task in ``tasks``.
    """

    def __init__(self, tasks: anyio.abc.TaskGroup) -> None:
        self._tasks = tasks
        self._running: set[asyncio.Task[None]] = set()

    def start(self, function: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], object]:
        """Run ``function()``; returns the function that cancels it."""
        loop = _asyncio_loop()
        if loop is None:
            scope = anyio.CancelScope()

            async def run() -> None:
                with scope:
                    await function()

            self._tasks.start_soon(run)
            return scope.cancel
        task = loop.create_task(function())
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        return task.cancel

    async def aclose(self) -> None:
        """Cancel every task still running and wait until they have ended."""
        with anyio.CancelScope(shield=True):
            while self._running:
                for task in self._running:
                    task.cancel()
                await asyncio.wait(self._running)


def soon_from_anywhere() -> Callable[[Callable[[], object]], object]:
    """A function that runs a callback soon on the current event loop, safe to call from a
    signal handler or another thread (asyncio's ``call_soon_threadsafe``, trio's token)."""
    loop = _asyncio_loop()
    if loop is not None:
        return loop.call_soon_threadsafe
    import trio  # only reached under trio

    return trio.lowlevel.current_trio_token().run_sync_soon


class TurnClock:
    """Counts the turns of one asyncio loop while some stream on it is busy, and wakes
    streams waiting for a given turn (``write_delay="auto"``, see ``SseConnection``).

    One callback per turn, scheduled only within ``span`` turns of the latest write: an
    idle loop runs none. Each waiting stream gets a future of its own, since cancelling a
    task cancels the future it awaits.
    """

    __slots__ = ("_busy_until", "_loop", "_ticking", "_waiters", "turn")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = weakref.ref(loop)  # the loop keys its clock in a weak mapping
        self.turn = 0
        self._busy_until = 0
        self._ticking = False
        self._waiters: dict[int, list[asyncio.Future[None]]] = {}

    def wrote(self, span: int) -> int:
        """A stream wrote and may wait ``span`` turns from now: the current turn."""
        turn = self.turn
        self._busy_until = turn + span
        if not self._ticking:
            loop = self._loop()
            if loop is not None:
                self._ticking = True
                loop.call_soon(self._tick)
        return turn

    def at(self, turn: int) -> Awaitable[object]:
        """What to await until ``turn`` (later than the current one, within the span of
        a write) has begun."""
        loop = self._loop()
        assert loop is not None  # called from a stream on it
        future: asyncio.Future[None] = loop.create_future()
        waiting = self._waiters.get(turn)
        if waiting is None:
            self._waiters[turn] = [future]
        else:
            waiting.append(future)
        return future

    def _tick(self) -> None:
        self.turn = turn = self.turn + 1
        waiting = self._waiters.pop(turn, None)
        if waiting is not None:
            for future in waiting:
                if not future.done():  # a cancelled stream leaves a cancelled future
                    future.set_result(None)
        loop = self._loop()
        if loop is not None and (turn < self._busy_until or self._waiters):
            loop.call_soon(self._tick)
        else:
            self._ticking = False


_clocks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, TurnClock] = (
    weakref.WeakKeyDictionary()
)


def turn_clock() -> TurnClock | None:
    """The running asyncio loop's turn clock (one per loop: streams may run on several),
    or None elsewhere, where a stream counts its turns as checkpoints of its own."""
    loop = _asyncio_loop()
    if loop is None:
        return None
    clock = _clocks.get(loop)
    if clock is None:
        clock = _clocks[loop] = TurnClock(loop)
    return clock
