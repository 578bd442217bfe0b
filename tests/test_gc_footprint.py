"""What an idle stream leaves for the garbage collector: every full collection traverses
each gc-tracked object of every open stream, so with tens of thousands of idle streams a
few objects more per stream stretch each collection, and the fan-out it interrupts (see
the README's "The garbage collector at scale"; ``benchmarks/gc_objects.py`` measures it
under a real server)."""

from __future__ import annotations

import asyncio
import collections
import gc
import sys
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from dataclasses import dataclass
from typing import Any

from ssebus import (
    Broadcaster,
    EventMap,
    InMemoryEventBus,
    InMemoryHistory,
    SseConnection,
    SseEndpoint,
)
from ssebus._frame import Frame
from ssebus._metrics import Metrics

Message = MutableMapping[str, Any]
App = Callable[[dict[str, Any], Callable[[], Awaitable[Message]], Any], Coroutine[Any, Any, None]]

#: Streams opened before counting (one-time allocations), then counted.
WARMUP, STREAMS = 20, 200
#: gc-tracked objects an idle ssebus stream may hold beyond those of an app that only
#: awaits the client's disconnect, on asyncio: 18 measured (its connection, outbox and
#: the outbox's two lists, the writer's three coroutines and the future it sleeps on, the
#: context manager that also watches, two partials, the task of the pending receive and
#: its context), 41 before the disconnect watch became a done-callback.
MAX_EXTRA_OBJECTS = 20


class _Client:
    """A server's side of one request: ``receive`` answers the request, then waits until
    :meth:`leave`."""

    def __init__(self, loop: asyncio.AbstractEventLoop, port: int) -> None:
        self.scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "path": "/",
            "query_string": b"",
            "headers": [(b"accept", b"text/event-stream")],
            "client": ("127.0.0.1", port),
            "server": ("127.0.0.1", 8000),
        }
        self.requested = False
        self.gone = loop.create_future()
        self.started = False

    async def receive(self) -> Message:
        if not self.requested:
            self.requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        return await self.gone  # type: ignore[no-any-return]

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True

    def leave(self) -> None:
        self.gone.set_result({"type": "http.disconnect"})


async def _only_awaits_disconnect(scope: Any, receive: Any, send: Any) -> None:
    """The least a streaming app can hold: its request and a pending ``receive()``."""
    await send({"type": "http.response.start", "status": 200, "headers": []})
    while (await receive())["type"] != "http.disconnect":
        pass


async def _objects_per_idle_stream(app: App) -> float:
    """gc-tracked objects per idle stream of ``app``, counted over ``STREAMS`` streams."""
    loop = asyncio.get_running_loop()
    clients: list[_Client] = []
    requests: list[asyncio.Task[None]] = []

    async def open_streams(count: int) -> None:
        for _ in range(count):
            client = _Client(loop, 10_000 + len(clients))
            clients.append(client)
            requests.append(loop.create_task(app(client.scope, client.receive, client.send)))
        for _ in range(10):  # each reaches its idle wait
            await asyncio.sleep(0)
        assert all(client.started for client in clients)

    def tracked() -> collections.Counter[str]:
        gc.collect()
        return collections.Counter(type(o).__name__ for o in gc.get_objects())

    try:
        await open_streams(WARMUP)
        before = tracked()
        await open_streams(STREAMS)
        growth = tracked()
        growth.subtract(before)
        return sum(growth.values()) / STREAMS
    finally:
        for client in clients:
            client.leave()
        await asyncio.wait_for(asyncio.gather(*requests), 10)


async def _ssebus_and_baseline() -> tuple[float, float]:
    broadcaster = Broadcaster(InMemoryEventBus(), EventMap({}))
    endpoint = SseEndpoint(broadcaster, stop_on_signals=False)
    async with broadcaster:
        ssebus = await _objects_per_idle_stream(endpoint)
        assert broadcaster.metrics().connections_opened == WARMUP + STREAMS
    baseline = await _objects_per_idle_stream(_only_awaits_disconnect)
    return ssebus, baseline


def test_an_idle_stream_holds_few_gc_tracked_objects_beyond_a_pending_receive() -> None:
    ssebus, baseline = asyncio.run(_ssebus_and_baseline())
    extra = ssebus - baseline
    assert extra <= MAX_EXTRA_OBJECTS, (
        f"an idle stream holds {extra:.1f} gc-tracked objects more than an app that only "
        f"awaits the disconnect ({ssebus:.1f} against {baseline:.1f}); at most "
        f"{MAX_EXTRA_OBJECTS} expected: what does each stream keep now?"
    )


async def _cyclic_garbage_of_closed_streams(count: int) -> int:
    broadcaster = Broadcaster(InMemoryEventBus(), EventMap({}))
    endpoint = SseEndpoint(broadcaster, stop_on_signals=False)
    loop = asyncio.get_running_loop()
    async with broadcaster:
        gc.collect()
        gc.disable()
        try:
            clients = [_Client(loop, 10_000 + i) for i in range(count)]
            requests = [loop.create_task(endpoint(c.scope, c.receive, c.send)) for c in clients]
            for _ in range(10):
                await asyncio.sleep(0)
            assert all(client.started for client in clients)
            for client in clients:
                client.leave()
            await asyncio.wait_for(asyncio.gather(*requests), 10)
            for _ in range(10):
                await asyncio.sleep(0)
            del requests, clients
            return gc.collect()
        finally:
            gc.enable()


def test_a_closed_stream_leaves_no_reference_cycle_for_the_collector() -> None:
    """Reference counting frees a closed stream whole (12 cyclic objects per stream were
    left before), so an app may ``gc.freeze()`` its open streams without leaking them."""
    assert asyncio.run(_cyclic_garbage_of_closed_streams(50)) == 0


# On asyncio ``SseConnection.run`` is cancelled through its own task rather than an anyio
# scope (six objects fewer per stream): only ``abort``'s cancellation may end it quietly.


def _idle_connection() -> SseConnection:
    connection = SseConnection("c1", max_queue=8, write_timeout=None, metrics=Metrics())
    connection.start(b"", 0)
    return connection


async def _write(data: bytes) -> None:
    await asyncio.sleep(0)


async def _run_and_abort(cancel_too: bool) -> tuple[asyncio.Task[None], SseConnection]:
    connection = _idle_connection()
    task = asyncio.get_running_loop().create_task(connection.run(_write))
    await asyncio.sleep(0.01)
    connection.abort("client disconnected")
    if cancel_too:
        task.cancel()
    await asyncio.wait([task])
    return task, connection


def test_abort_ends_an_idle_run_without_cancelling_its_task() -> None:
    task, connection = asyncio.run(_run_and_abort(cancel_too=False))
    assert not task.cancelled()
    assert task.result() is None
    if sys.version_info >= (3, 11):  # the request is not left "being cancelled"
        assert task.cancelling() == 0  # type: ignore[attr-defined]
    assert connection.aborted


def test_a_server_cancelling_the_request_during_an_abort_still_cancels_it() -> None:
    task, _ = asyncio.run(_run_and_abort(cancel_too=True))
    assert task.cancelled()


async def _cancel_idle_run() -> asyncio.Task[None]:
    connection = _idle_connection()
    task = asyncio.get_running_loop().create_task(connection.run(_write))
    await asyncio.sleep(0.01)
    task.cancel()
    await asyncio.wait([task])
    return task


def test_a_server_cancelling_an_idle_request_cancels_it() -> None:
    assert asyncio.run(_cancel_idle_run()).cancelled()


async def _abort_from_its_own_write() -> SseConnection:
    connection = _idle_connection()

    async def write(data: bytes) -> None:
        connection.abort("write failed")  # as a watchdog or a failed send would, mid-write

    connection.offer(Frame(None, None, b"data: x\n\n"))
    await connection.run(write)
    await asyncio.sleep(0.01)  # nothing cancels the task later
    return connection


def test_an_abort_from_the_writer_itself_ends_run_and_leaves_its_task_alone() -> None:
    assert asyncio.run(_abort_from_its_own_write()).aborted


# A frame kept in history is scanned by every full collection for as long as it is kept,
# and replays from Redis render new ones that live across several loop turns (the replay
# is paced), long enough to be promoted to the oldest generation.


@dataclass(frozen=True)
class _Shipped:
    order: int


async def _tracked_objects_per_retained_frame(count: int) -> float:
    bus = InMemoryEventBus()
    events = EventMap({_Shipped: ("order-shipped", lambda e: {"order": e.order})})
    broadcaster = Broadcaster(bus, events, history=InMemoryHistory(2 * count), heartbeat=None)
    async with bus, broadcaster:
        await bus.publish(_Shipped(-1))  # one-time allocations
        await asyncio.sleep(0)
        gc.collect()
        before = len(gc.get_objects())
        for order in range(count):
            await bus.publish(_Shipped(order))
        await asyncio.sleep(0)  # the loop drops the cancelled timers of the handlers' limits
        gc.collect()
        return (len(gc.get_objects()) - before) / count


def test_a_retained_frame_without_topics_is_one_gc_tracked_object() -> None:
    """No set of its own for an empty audience (one per frame before: 216 bytes more)."""
    per_frame = asyncio.run(_tracked_objects_per_retained_frame(500))
    assert per_frame <= 1.05, f"{per_frame:.2f} gc-tracked objects per frame in history"
