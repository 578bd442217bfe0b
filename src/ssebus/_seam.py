"""The one place where asyncio and trio are told apart, for the two hot spots that need it.

anyio's own primitives work everywhere but cost more per object than a bare asyncio
future or task; every idle stream holds one of each, so on asyncio ssebus uses the bare
ones (as ``anyio.Event.__new__`` picks a backend class) and anyio's elsewhere.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import anyio
import anyio.abc

__all__ = ["Background", "Waiter"]


def _asyncio_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class Waiter:
    """A one-shot wake-up: :meth:`wait` returns once :meth:`wake` was called.

    ``Waiter.create()`` makes a bare future on asyncio and an ``anyio.Event`` elsewhere.
    """

    __slots__ = ("_event", "_future")

    def __init__(self, future: asyncio.Future[None] | None, event: anyio.Event | None) -> None:
        self._future = future
        self._event = event

    @classmethod
    def create(cls) -> Waiter:
        loop = _asyncio_loop()
        if loop is not None:
            return cls(loop.create_future(), None)
        return cls(None, anyio.Event())

    def wait(self) -> Awaitable[object]:
        """What to await; no coroutine is made on asyncio."""
        if self._future is not None:
            return self._future
        assert self._event is not None
        return self._event.wait()

    def wake(self) -> None:
        future = self._future
        if future is not None:
            if not future.done():  # a cancelled wait leaves a cancelled future
                future.set_result(None)
        elif self._event is not None:
            self._event.set()


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
