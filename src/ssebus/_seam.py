"""The one place where asyncio and trio are told apart, for the two hot spots that need it.

anyio's own primitives work everywhere but cost more per object than a bare asyncio
future or task; every idle stream holds one of each, so on asyncio ssebus uses the bare
ones (as ``anyio.Event.__new__`` picks a backend class) and anyio's elsewhere.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Union

import anyio
import anyio.abc

__all__ = ["Background", "Waiter", "new_waiter", "soon_from_anywhere", "wake"]


_get_running_loop = asyncio.events._get_running_loop  # C; None outside a loop's thread
#: Whether ``loop.create_task`` takes a ``context`` (Python 3.11+).
_TASK_CONTEXT = sys.version_info >= (3, 11)
#: Where the done-callbacks of :meth:`Background.hang` run: they read no context variable.
_CALLBACK_CONTEXT = contextvars.Context()


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
        self._running: set[asyncio.Future[Any]] = set()
        self._discard = self._running.discard  # one bound method, not one per task

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
        task.add_done_callback(self._discard)
        return task.cancel

    def hang(
        self,
        loop: asyncio.AbstractEventLoop,
        awaitable: Awaitable[Any],
        context: contextvars.Context,
        callback: Callable[[asyncio.Future[Any]], object],
    ) -> asyncio.Future[Any]:
        """asyncio only: await ``awaitable`` in a task of its own (in ``context``), tracked
        like :meth:`start`'s, and call ``callback(task)`` once it is done, which must
        :meth:`forget` it. Nothing of ssebus's waits meanwhile: no coroutine, closure or
        bound method per task, only the task (``awaitable`` itself if it is a future)."""
        future: asyncio.Future[Any]
        if asyncio.iscoroutine(awaitable):
            if _TASK_CONTEXT:
                future = loop.create_task(awaitable, context=context)  # type: ignore[call-arg]
            else:  # Python 3.10: the task copies the current context, the same variables
                future = context.run(loop.create_task, awaitable)
        else:
            future = asyncio.ensure_future(awaitable, loop=loop)
        self._running.add(future)
        # In a context of its own, shared: given none, each callback would copy one.
        future.add_done_callback(callback, context=_CALLBACK_CONTEXT)
        return future

    def forget(self, future: asyncio.Future[Any]) -> None:
        """A task of :meth:`hang` is done."""
        self._running.discard(future)

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
