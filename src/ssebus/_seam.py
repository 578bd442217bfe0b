"""The one place where asyncio and trio are told apart, for the two hot spots that need it.

anyio's own primitives work everywhere but cost more per object than a bare asyncio
future or task; every idle stream holds one of each, so on asyncio ssebus uses the bare
ones (as ``anyio.Event.__new__`` picks a backend class) and anyio's elsewhere.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol, Union

import anyio
import anyio.abc

__all__ = [
    "Background",
    "RunScope",
    "TurnClock",
    "Waiter",
    "Done",
    "cancel_run",
    "new_waiter",
    "read_once",
    "run_cancellable",
    "soon_from_anywhere",
    "turn_clock",
    "wake",
]


_get_running_loop = asyncio.events._get_running_loop  # C; None outside a loop's thread
#: Whether ``loop.create_task`` takes a ``context`` and ``Task.uncancel`` exists (3.11+).
_TASK_CONTEXT = _UNCANCEL = sys.version_info >= (3, 11)
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

    def forget(self, read: Done) -> None:
        """A task of :meth:`hang` (or a read of :func:`read_once`) is done."""
        if asyncio.isfuture(read):  # granian's reads are futures of its own type
            self._running.discard(read)

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


#: What cancels a stream's run (``SseConnection._scope``): its own asyncio task, then
#: ``_CANCELLED`` once cancelled; an anyio cancel scope elsewhere; None when not running.
RunScope = Union["asyncio.Task[Any]", anyio.CancelScope, object, None]
_CANCELLED = object()


class _Cancellable(Protocol):
    _scope: RunScope


def _native_task() -> asyncio.Task[Any] | None:
    """The current asyncio task, which :func:`run_cancellable` cancels itself; None
    elsewhere, or before Python 3.11 (no ``Task.uncancel``)."""
    if not _UNCANCEL or _get_running_loop() is None:
        return None
    try:
        return asyncio.current_task()
    except RuntimeError:  # a loop that runs no task now
        return None


async def run_cancellable(owner: _Cancellable, body: Coroutine[Any, Any, None]) -> None:
    """Await ``body`` so that :func:`cancel_run` ``(owner)``, from any task or thread,
    cuts it short, after which this returns quietly.

    On asyncio (3.11+) the running task itself is cancelled, as an anyio scope would do
    it, for less: a scope is six more objects per stream for the collector (with its
    task state). ``Task.uncancel`` tells that cancellation from anyone else's.
    """
    task = _native_task()
    if task is None:
        with anyio.CancelScope() as owner._scope:
            await body
        return
    owner._scope = task
    try:
        await body
    except asyncio.CancelledError:
        if owner._scope is not _CANCELLED:
            raise  # not cancel_run's
        owner._scope = None
        if task.uncancel():  # type: ignore[attr-defined]
            raise  # not only cancel_run's
    finally:
        if owner._scope is _CANCELLED:  # the body swallowed it: take the request back
            task.uncancel()  # type: ignore[attr-defined]
        owner._scope = None


def cancel_run(owner: _Cancellable) -> None:
    """Cancel what :func:`run_cancellable` runs for ``owner``, unless that is the calling
    task (it sees its own state before its next wait) or it was cancelled already."""
    scope = owner._scope
    if isinstance(scope, asyncio.Task):
        loop = scope.get_loop()
        if loop is not _get_running_loop():  # a granian thread worker's stream
            loop.call_soon_threadsafe(cancel_run, owner)
        elif scope is not asyncio.current_task(loop):
            owner._scope = _CANCELLED
            scope.cancel()
    elif isinstance(scope, anyio.CancelScope):
        scope.cancel()


class Done(Protocol):
    """A read of :func:`read_once`: a future on asyncio, :class:`_Read` elsewhere."""

    def cancel(self) -> object: ...

    def cancelled(self) -> bool: ...

    def exception(self) -> BaseException | None: ...

    def result(self) -> Any: ...


class _Read:
    """A read in a background task, seen as a future is (trio)."""

    __slots__ = ("_cancel", "_error", "_value")

    def __init__(self) -> None:
        self._value: Any = None
        self._error: BaseException | None = None
        self._cancel: Callable[[], object] | None = None

    def cancel(self) -> object:
        return self._cancel() if self._cancel is not None else None

    def cancelled(self) -> bool:
        return False  # a cancelled read calls back no one

    def exception(self) -> BaseException | None:
        return self._error

    def result(self) -> Any:
        return self._value


def read_once(
    background: Background,
    receive: Callable[[], Awaitable[Any]],
    context: contextvars.Context,
    callback: Callable[[Any], object],
) -> Done:
    """Await one ``receive()`` in the background, in ``context``, then ``callback(read)``
    with the finished read, which is returned: its ``cancel()`` stops it (no callback).
    On asyncio the read is a task of ``receive()`` itself (:meth:`Background.hang`)."""
    loop = _asyncio_loop()
    if loop is not None:
        return background.hang(loop, context.run(receive), context, callback)
    read = _Read()

    async def run() -> None:
        try:
            read._value = await receive()
        except Exception as exc:
            read._error = exc
        callback(read)

    read._cancel = context.run(background.start, run)
    return read
