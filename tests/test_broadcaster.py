"""``Broadcaster``: domain events in, one encoded frame out to every live connection.

Each test drives the whole in-process pipeline (bus -> broadcaster -> per-connection queue
-> writer) with simulated clients: ``async with broadcaster.connect(...) as conn: await
conn.run(write)``, where ``write`` appends to a buffer, raises, or hangs. What a client
received is read back with ``ssebus.testing.parse_events``, i.e. as a browser sees it.

Ids are opaque position tokens: a test takes them from ``Broadcaster.position_id()`` right
after a publish and compares tokens, never id arithmetic. A stream without Last-Event-ID
starts with an ``id:`` block alone (the client's position, no event dispatched).
"""

from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import Callable, Collection, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import domain
import pytest
from clients import GUARD, Client, join, running, serve, wait_until
from domain import DomainEvent, OrderCreatedDomainEvent, OrderStatusChangedDomainEvent
from encoders import CountingEncoder

from ssebus import (
    Broadcaster,
    ClosedError,
    ConfigurationError,
    DuplicateConnectionError,
    EventMap,
    Frame,
    InMemoryEventBus,
    InMemoryHistory,
    ServerSentEvent,
)
from ssebus.testing import ParsedEvent, parse_events

pytestmark = pytest.mark.anyio

# --- the domain ----------------------------------------------------------------------------


@dataclass(frozen=True)
class OrderArchivedDomainEvent(DomainEvent):
    """Not in the event map: never broadcast."""

    order_id: str


@dataclass(frozen=True)
class BrokenPayloadDomainEvent(DomainEvent):
    """Mapped, but its payload function raises."""


@dataclass(frozen=True)
class UnserializableDomainEvent(DomainEvent):
    """Mapped, but its payload cannot be turned into JSON."""

    value: object


def order_events() -> EventMap:
    """The order events, and two whose payload fails."""
    events = domain.order_events()

    @events.on(BrokenPayloadDomainEvent, "broken")
    def broken(e: BrokenPayloadDomainEvent) -> dict[str, Any]:
        raise KeyError("customer")

    events.add(UnserializableDomainEvent, "unserializable", lambda e: {"value": e.value})
    return events


def created(n: int) -> OrderCreatedDomainEvent:
    return OrderCreatedDomainEvent(f"ord-{n}")


# --- simulated clients ---------------------------------------------------------------------


def have_written(clients: Sequence[Client], writes: int) -> Callable[[], bool]:
    return lambda: all(len(c.writes) == writes for c in clients)


def have_events(clients: Sequence[Client], events: int) -> Callable[[], bool]:
    return lambda: all(len(c.events()) == events for c in clients)


def position_marker(broadcaster: Broadcaster, tenant: str | None = None) -> bytes:
    """The ``id:`` block alone that hands a client the current position."""
    return f"id: {broadcaster.position_id(tenant)}\n\n".encode()


def registered_ids(broadcaster: Broadcaster) -> set[str]:
    return {connection.id for connection in broadcaster.registry.snapshot()}


def received(client: Client) -> list[tuple[str, Any, str]]:
    """(type, decoded data, id) of every event the client's browser would dispatch."""
    return [(e.type, json.loads(e.data), e.last_event_id) for e in client.events()]


def expected_created(numbers: Sequence[int], ids: Sequence[str]) -> list[tuple[str, Any, str]]:
    return [
        ("order-created", {"orderId": f"ord-{n}", "status": "created"}, event_id)
        for n, event_id in zip(numbers, ids, strict=True)
    ]


def pipeline(
    **options: Any,
) -> AbstractAsyncContextManager[tuple[InMemoryEventBus, Broadcaster, anyio.abc.TaskGroup]]:
    """``running`` with the order events: the broadcaster's shutdown ends every client."""
    return running(order_events(), **options)


async def publish_created(
    bus: InMemoryEventBus, broadcaster: Broadcaster, numbers: Sequence[int]
) -> list[str]:
    """Publish ``created(n)`` for each n through the bus; return the ids they got."""
    ids = []
    for n in numbers:
        before = broadcaster.position
        await bus.publish(created(n))
        assert broadcaster.position > before
        ids.append(broadcaster.position_id())
    return ids


def warnings_about(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "ssebus" and r.levelno >= logging.WARNING and text in r.getMessage()
    ]


# --- delivery ------------------------------------------------------------------------------


async def test_a_published_domain_event_reaches_a_client_as_its_mapped_sse_event() -> None:
    async with pipeline() as (bus, broadcaster, tasks):
        client = await join(tasks, broadcaster)
        await bus.publish(OrderStatusChangedDomainEvent("ord-7", "created", "paid"))
        await wait_until(lambda: len(client.events()) == 1)
        event_id = broadcaster.position_id()
    assert client.events() == [
        ParsedEvent(
            type="order-status-changed",
            data='{"orderId":"ord-7","oldStatus":"created","newStatus":"paid"}',
            last_event_id=event_id,
        )
    ]
    marker, frame = client.stream.split(b"\n\n", 1)
    assert marker.startswith(b"id: ")
    assert marker != f"id: {event_id}".encode()
    assert frame.startswith(
        f"id: {event_id}\nevent: order-status-changed\n"
        'data: {"orderId":"ord-7","oldStatus":"created","newStatus":"paid"}\n\n'.encode()
    )


async def test_every_client_receives_every_event_in_publish_order_exactly_once() -> None:
    clients_count, events_count = 50, 200
    async with pipeline() as (bus, broadcaster, tasks):
        clients = [await join(tasks, broadcaster) for _ in range(clients_count)]
        ids = await publish_created(bus, broadcaster, range(events_count))
        await wait_until(lambda: all(c.frames() == 1 + events_count for c in clients))
        streams = {c.stream for c in clients}  # before the goodbye, whose retry varies
    assert len(set(ids)) == events_count
    assert len(streams) == 1  # byte for byte the same stream everywhere
    assert received(clients[0]) == expected_created(range(events_count), ids)
    assert parse_events(streams.pop()) == clients[0].events()


async def test_events_of_different_types_keep_their_relative_order() -> None:
    async with pipeline() as (bus, broadcaster, tasks):
        clients = [await join(tasks, broadcaster) for _ in range(3)]
        await bus.publish(created(1))
        await bus.publish(OrderStatusChangedDomainEvent("ord-1", "created", "paid"))
        await bus.publish(created(2))
        await bus.publish(OrderStatusChangedDomainEvent("ord-1", "paid", "shipped"))
        await wait_until(lambda: all(len(c.events()) == 4 for c in clients))
    for client in clients:
        assert [(e.type, json.loads(e.data)["orderId"]) for e in client.events()] == [
            ("order-created", "ord-1"),
            ("order-status-changed", "ord-1"),
            ("order-created", "ord-2"),
            ("order-status-changed", "ord-1"),
        ]


async def test_each_event_is_encoded_once_and_the_same_bytes_reach_every_client() -> None:
    encoder = CountingEncoder()
    async with pipeline(encoder=encoder) as (bus, broadcaster, tasks):
        clients = [await join(tasks, broadcaster) for _ in range(10)]
        await wait_until(have_written(clients, 1))  # each client's position marker
        encoded_before = len(encoder.outputs)
        for n in range(5):
            await bus.publish(created(n))
            # Let every writer take the frame alone, so each write is exactly one frame.
            await wait_until(have_written(clients, n + 2))
        events = encoder.outputs[encoded_before:]
        assert len(events) == 5
        for client in clients:
            assert len(client.writes) == 6
            for written, encoded in zip(client.writes[1:], events, strict=True):
                assert written is encoded


async def test_a_publish_returns_the_frame_it_queued() -> None:
    async with pipeline() as (_, broadcaster, tasks):
        client = await join(tasks, broadcaster)
        frame = broadcaster.publish(created(1))
        assert frame is not None
        assert frame.event == "order-created"
        assert frame.tick == broadcaster.position
        assert frame.id == broadcaster.position_id()
        await wait_until(lambda: len(client.events()) == 1)
        assert client.writes[-1] is frame.data


async def test_frames_queued_while_a_writer_is_busy_go_out_in_one_write() -> None:
    gate = anyio.Event()
    client = Client()

    async def slow_second_write(data: bytes) -> None:
        client.writes.append(data)
        if len(client.writes) == 2:
            await gate.wait()

    async with pipeline(write_timeout=None) as (bus, broadcaster, tasks):
        await join(tasks, broadcaster, client, write=slow_second_write)
        await wait_until(lambda: len(client.writes) == 1)  # the position marker
        await publish_created(bus, broadcaster, [1])
        await wait_until(lambda: len(client.writes) == 2)  # frame 1, written slowly
        await publish_created(bus, broadcaster, [2, 3, 4])
        gate.set()
        await wait_until(lambda: len(client.events()) == 4)
        assert len(client.writes) == 3
        assert len(parse_events(client.writes[2])) == 3
        assert broadcaster.metrics().frames_sent == 4


async def test_an_unmapped_event_is_ignored_and_logged_at_debug_level(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="ssebus")
    async with pipeline() as (bus, broadcaster, tasks):
        client = await join(tasks, broadcaster)
        before = broadcaster.position, broadcaster.position_id()
        await bus.publish(OrderArchivedDomainEvent("ord-1"))
        assert broadcaster.publish(OrderArchivedDomainEvent("ord-2")) is None
        assert (broadcaster.position, broadcaster.position_id()) == before
        ids = await publish_created(bus, broadcaster, [1])
        await wait_until(lambda: len(client.events()) == 1)
        assert broadcaster.metrics().events_published == 1
        assert broadcaster.metrics().events_dropped == 0
    assert received(client) == expected_created([1], ids)
    debug = [
        r
        for r in caplog.records
        if r.levelno == logging.DEBUG and "OrderArchivedDomainEvent" in r.getMessage()
    ]
    assert len(debug) == 2
    assert not warnings_about(caplog, "OrderArchivedDomainEvent")


@pytest.mark.parametrize(
    "bad_event",
    [
        pytest.param(BrokenPayloadDomainEvent(), id="payload-raises"),
        pytest.param(UnserializableDomainEvent(object()), id="not-json"),
        pytest.param(UnserializableDomainEvent(float("nan")), id="nan"),
        pytest.param(UnserializableDomainEvent({1, 2}), id="set"),
        pytest.param(UnserializableDomainEvent("lone \ud800 surrogate"), id="surrogate"),
    ],
)
async def test_an_event_whose_payload_cannot_be_built_is_dropped_alone_and_logged(
    bad_event: DomainEvent, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="ssebus")
    hooked: list[tuple[str, float]] = []
    async with pipeline(metrics_hook=lambda n, v: hooked.append((n, v))) as (
        bus,
        broadcaster,
        tasks,
    ):
        clients = [await join(tasks, broadcaster) for _ in range(3)]
        before = await publish_created(bus, broadcaster, [1])
        await bus.publish(bad_event)  # the publisher is not disturbed
        assert broadcaster.publish(bad_event) is None
        after = await publish_created(bus, broadcaster, [2, 3])
        await wait_until(lambda: all(len(c.events()) == 3 for c in clients))
        metrics = broadcaster.metrics()
    assert metrics.events_dropped == 2
    assert metrics.events_published == 3
    assert hooked.count(("events_dropped", 1)) == 2
    for client in clients:
        assert received(client) == expected_created([1, 2, 3], before + after)
    dropped = [
        r
        for r in caplog.records
        if r.levelno >= logging.ERROR and type(bad_event).__name__ in r.getMessage()
    ]
    assert len(dropped) == 2
    # One line with the exception's repr, no traceback.
    assert all(r.exc_info is None and "\n" not in r.getMessage() for r in dropped)
    if isinstance(bad_event, BrokenPayloadDomainEvent):
        assert all(repr(KeyError("customer")) in r.getMessage() for r in dropped)


async def test_broadcast_of_a_ready_made_event_gets_the_next_position() -> None:
    async with pipeline() as (_, broadcaster, tasks):
        client = await join(tasks, broadcaster)
        before = broadcaster.position_id()
        frame = broadcaster.broadcast(ServerSentEvent(data="maintenance at 22:00", event="notice"))
        assert frame.id is not None
        assert frame.id != before
        assert frame.tick == broadcaster.position
        assert frame.id == broadcaster.position_id()
        assert frame.event == "notice"
        await wait_until(lambda: len(client.events()) == 1)
    assert client.events() == [
        ParsedEvent(type="notice", data="maintenance at 22:00", last_event_id=frame.id)
    ]


async def test_broadcast_replaces_an_id_the_caller_gave_with_its_position() -> None:
    """Ids carry positions: a caller's id would make the client resume from nowhere."""
    async with pipeline() as (_, broadcaster, tasks):
        client = await join(tasks, broadcaster)
        frame = broadcaster.broadcast(ServerSentEvent(data="x", id="custom-1"))
        assert frame.id != "custom-1"
        assert frame.id == broadcaster.position_id()
        await wait_until(lambda: len(client.events()) == 1)
    assert b"custom-1" not in client.stream
    assert client.events()[0].last_event_id == frame.id


async def test_broadcast_events_are_kept_in_history_for_resume() -> None:
    async with pipeline() as (bus, broadcaster, tasks):
        first = await publish_created(bus, broadcaster, [1])
        notice = broadcaster.broadcast(ServerSentEvent(data="hello", event="notice"))
        second = await publish_created(bus, broadcaster, [2])
        client = await join(tasks, broadcaster, last_event_id=first[0])
        await wait_until(lambda: len(client.events()) == 2)
    assert [(e.type, e.last_event_id) for e in client.events()] == [
        ("notice", notice.id),
        ("order-created", second[0]),
    ]


# --- failing and slow clients --------------------------------------------------------------


async def test_a_client_whose_write_raises_is_removed_and_logged_while_others_get_all(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken(data: bytes) -> None:
        raise ConnectionResetError("peer went away")

    caplog.set_level(logging.INFO, logger="ssebus")
    async with pipeline() as (bus, broadcaster, tasks):
        good = [await join(tasks, broadcaster) for _ in range(3)]
        bad = await join(tasks, broadcaster, write=broken)
        assert bad.connection is not None
        bad_id = bad.connection.id
        ids = await publish_created(bus, broadcaster, range(20))
        await bad.finished.wait()
        await wait_until(lambda: all(len(c.events()) == 20 for c in good))
        assert bad_id not in registered_ids(broadcaster)
        assert broadcaster.metrics().write_errors == 1
        assert broadcaster.metrics().active_connections == 3
    assert bad.connection.closed
    assert "ConnectionResetError" in (bad.connection.close_reason or "")
    for client in good:
        assert received(client) == expected_created(range(20), ids)
    logged = warnings_about(caplog, bad_id)
    assert len(logged) == 1
    assert "write failed" in logged[0].getMessage()


async def test_a_client_whose_write_hangs_is_removed_after_write_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="ssebus")
    async with pipeline(write_timeout=0.05) as (bus, broadcaster, tasks):
        good = [await join(tasks, broadcaster) for _ in range(3)]
        stuck = await join(tasks, broadcaster, Client(stall=True))
        assert stuck.connection is not None
        stuck_id = stuck.connection.id
        ids = await publish_created(bus, broadcaster, range(10))
        await stuck.finished.wait()
        assert stuck_id not in registered_ids(broadcaster)
        ids += await publish_created(bus, broadcaster, range(10, 20))
        await wait_until(lambda: all(len(c.events()) == 20 for c in good))
        assert broadcaster.metrics().write_errors == 1
    assert "timed out" in (stuck.connection.close_reason or "")
    for client in good:
        assert received(client) == expected_created(range(20), ids)
    assert len(warnings_about(caplog, stuck_id)) == 1


async def test_a_client_that_stops_draining_is_evicted_and_the_others_are_unaffected(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="ssebus")
    hooked: list[tuple[str, float]] = []
    async with pipeline(
        max_queue=4, write_timeout=None, metrics_hook=lambda n, v: hooked.append((n, v))
    ) as (bus, broadcaster, tasks):
        good = [await join(tasks, broadcaster) for _ in range(3)]
        slow = await join(tasks, broadcaster, Client(stall=True))
        assert slow.connection is not None
        slow_id = slow.connection.id
        ids: list[str] = []
        for n in range(20):
            ids += await publish_created(bus, broadcaster, [n])
            # The good clients keep up; the slow one never finishes a write.
            await wait_until(have_events(good, n + 1))
        await slow.finished.wait()
        metrics = broadcaster.metrics()
        assert slow_id not in registered_ids(broadcaster)
    assert metrics.evictions == 1
    assert metrics.active_connections == 3
    assert ("evictions", 1) in hooked
    assert "evicted" in (slow.connection.close_reason or "")
    for client in good:
        assert received(client) == expected_created(range(20), ids)
    assert any("evicted" in r.getMessage() for r in warnings_about(caplog, slow_id))


async def test_a_full_queue_evicts_only_beyond_max_queue_frames() -> None:
    async with pipeline(max_queue=3, write_timeout=None) as (bus, broadcaster, _):
        # Registered but not yet writing: every frame waits in its queue.
        async with broadcaster.connect() as connection:
            await publish_created(bus, broadcaster, [1, 2, 3])
            assert not connection.closed
            await publish_created(bus, broadcaster, [4])
            assert connection.closed
            assert broadcaster.metrics().evictions == 1
            assert connection.id not in registered_ids(broadcaster)
            client = Client()
            await connection.run(client.write)  # returns at once: nothing more is written
            assert client.writes == []


async def test_connections_come_and_go_during_broadcasts_without_breaking_delivery() -> None:
    events_count = 80
    churned: list[Client] = []
    async with pipeline() as (bus, broadcaster, tasks):
        stable = [await join(tasks, broadcaster) for _ in range(5)]
        publishing_done = anyio.Event()

        async def churn() -> None:
            while not publishing_done.is_set():
                client = Client()
                churned.append(client)
                scope = anyio.CancelScope()
                tasks.start_soon(functools.partial(serve, broadcaster, client, scope=scope))
                await anyio.lowlevel.checkpoint()
                await anyio.lowlevel.checkpoint()
                scope.cancel()
                await anyio.lowlevel.checkpoint()

        async with anyio.create_task_group() as churners:
            for _ in range(4):
                churners.start_soon(churn)
            ids: list[str] = []
            for n in range(events_count):
                ids += await publish_created(bus, broadcaster, [n])
                await anyio.lowlevel.checkpoint()
            publishing_done.set()
        await wait_until(lambda: all(c.frames() == 1 + events_count for c in stable))
        await wait_until(lambda: all(c.finished.is_set() for c in churned))
        assert len(broadcaster.registry) == len(stable)
    expected = expected_created(range(events_count), ids)
    for client in stable:
        assert received(client) == expected
    # A client that was connected for a while saw a contiguous run of events.
    assert len(churned) > 10
    for client in churned:
        got = received(client)
        if got:
            start = expected.index(got[0])
            assert got == expected[start : start + len(got)]


# --- heartbeats ----------------------------------------------------------------------------


async def test_comment_heartbeats_are_ping_lines_that_dispatch_nothing_and_keep_the_id() -> None:
    async with pipeline(heartbeat=0.02) as (bus, broadcaster, tasks):
        client = await join(tasks, broadcaster)
        ids = await publish_created(bus, broadcaster, [1, 2])
        await wait_until(lambda: client.stream.count(b": ping\n") >= 2)
        pings_at = len(client.writes)
        assert client.writes[-1] == b": ping\n"
        assert received(client) == expected_created([1, 2], ids)
        assert client.parser().last_event_id == ids[-1]
        ids += await publish_created(bus, broadcaster, [3])
        await wait_until(lambda: len(client.events()) == 3)
        assert pings_at < len(client.writes)
    assert received(client) == expected_created([1, 2, 3], ids)
    comments = [line for line in client.stream.split(b"\n") if line.startswith(b":")]
    assert set(comments) <= {b": ping", b": server shutting down"}


async def test_comment_heartbeats_reach_an_idle_client_before_any_event() -> None:
    async with pipeline(heartbeat=0.02) as (_, broadcaster, tasks):
        client = await join(tasks, broadcaster)
        await wait_until(lambda: client.stream.count(b": ping\n") >= 2)
        assert client.events() == []
        # It has its position from the start, so a cut now loses nothing (issue 11, #1).
        assert client.parser().last_event_id == broadcaster.position_id()


async def test_event_heartbeats_carry_no_id_and_keep_the_clients_position() -> None:
    """A ping frame has no ``id:`` (it would leak the newest position of any tenant), so
    the client's id stays that of the last frame it got."""
    ping = b"event: ping\ndata: \n\n"
    async with pipeline(heartbeat=0.02, heartbeat_style="event") as (bus, broadcaster, tasks):
        client = await join(tasks, broadcaster)
        origin = broadcaster.position_id()
        await wait_until(lambda: any(e.type == "ping" for e in client.events()))
        first_ping = next(e for e in client.events() if e.type == "ping")
        assert first_ping.data == ""
        assert first_ping.last_event_id == origin
        ids = await publish_created(bus, broadcaster, [1, 2])
        await wait_until(lambda: client.events()[-1].type == "ping" and len(client.events()) > 3)
        last_ping = client.events()[-1]
    assert last_ping.last_event_id == ids[-1]
    pings = client.stream.count(ping)
    assert pings == len([e for e in client.events() if e.type == "ping"])
    assert client.stream.count(b"id: ") == 1 + 2  # the marker and the two events
    assert [(e.type, e.last_event_id) for e in client.events() if e.type != "ping"] == [
        ("order-created", ids[0]),
        ("order-created", ids[1]),
    ]


async def test_resuming_from_an_event_heartbeats_id_replays_nothing_missing_or_twice() -> None:
    async with pipeline(heartbeat=0.02, heartbeat_style="event") as (bus, broadcaster, tasks):
        first, scope = Client(), anyio.CancelScope()
        tasks.start_soon(functools.partial(serve, broadcaster, first, scope=scope))
        await wait_until(lambda: first.connection is not None)
        ids = await publish_created(bus, broadcaster, [1, 2])
        await wait_until(lambda: len(first.events()) >= 3 and first.events()[-1].type == "ping")
        scope.cancel()
        await first.finished.wait()
        resume_from = first.parser().last_event_id
        assert resume_from == ids[-1]
        ids += await publish_created(bus, broadcaster, [3, 4])  # missed while away
        second = await join(tasks, broadcaster, last_event_id=resume_from)
        ids += await publish_created(bus, broadcaster, [5])
        await wait_until(lambda: len([e for e in second.events() if e.type != "ping"]) == 3)
    seen = [
        (e.type, json.loads(e.data), e.last_event_id)
        for client in (first, second)
        for e in client.events()
        if e.type != "ping"
    ]
    assert seen == expected_created([1, 2, 3, 4, 5], ids)


async def test_no_heartbeat_is_sent_when_heartbeat_is_none() -> None:
    async with pipeline(heartbeat=None) as (_, broadcaster, tasks):
        client = await join(tasks, broadcaster)
        await anyio.sleep(0.06)
        assert client.stream == position_marker(broadcaster)


# --- resume --------------------------------------------------------------------------------


async def test_resuming_from_event_k_replays_the_later_events_then_live_ones() -> None:
    async with pipeline() as (bus, broadcaster, tasks):
        ids = await publish_created(bus, broadcaster, range(1, 6))
        client = await join(tasks, broadcaster, last_event_id=ids[1])  # saw events 1 and 2
        ids += await publish_created(bus, broadcaster, [6, 7])
        await wait_until(lambda: len(client.events()) == 5)
        assert broadcaster.metrics().frames_sent == 5  # 3 replayed, 2 live
    assert received(client) == expected_created([3, 4, 5, 6, 7], ids[2:])


async def test_resuming_from_the_newest_id_replays_nothing() -> None:
    async with pipeline() as (bus, broadcaster, tasks):
        ids = await publish_created(bus, broadcaster, range(1, 4))
        client = await join(tasks, broadcaster, last_event_id=ids[-1])
        ids += await publish_created(bus, broadcaster, [4])
        await wait_until(lambda: len(client.events()) == 1)
    assert received(client) == expected_created([4], ids[3:])


async def test_a_client_cut_before_any_event_resumes_from_its_connect_id() -> None:
    """Issue 11, #1: a quiet client cut by a proxy and reconnecting misses nothing."""
    async with pipeline() as (bus, broadcaster, tasks):
        quiet, scope = Client(), anyio.CancelScope()
        tasks.start_soon(functools.partial(serve, broadcaster, quiet, scope=scope))
        await wait_until(lambda: quiet.stream == position_marker(broadcaster))
        scope.cancel()
        await quiet.finished.wait()
        connect_id = quiet.parser().last_event_id
        assert connect_id
        ids = await publish_created(bus, broadcaster, range(1, 4))  # while it was away
        client = await join(tasks, broadcaster, last_event_id=connect_id)
        ids += await publish_created(bus, broadcaster, [4])
        await wait_until(lambda: len(client.events()) == 4)
    assert quiet.events() == []
    assert received(client) == expected_created([1, 2, 3, 4], ids)


async def test_resuming_from_the_position_before_any_event_dispatches_nothing() -> None:
    async with pipeline() as (_, broadcaster, tasks):
        start = broadcaster.position_id()
        client = await join(tasks, broadcaster, last_event_id=start)
        await anyio.sleep(0.01)
        assert client.events() == []
        assert client.parser().last_event_id == start
        assert broadcaster.metrics().events_published == 0
        assert broadcaster.metrics().frames_sent == 0


async def test_an_unknown_id_gets_a_reset_with_the_newest_id_then_live_events() -> None:
    async with pipeline() as (bus, broadcaster, tasks):
        ids = await publish_created(bus, broadcaster, range(1, 4))
        client = await join(tasks, broadcaster, last_event_id="earlier-process-17")
        # (a frame published before the reset is written would be covered by it: rule 6)
        await wait_until(lambda: len(client.events()) == 1)
        ids += await publish_created(bus, broadcaster, [4, 5])
        await wait_until(lambda: len(client.events()) == 3)
    reset, *live = client.events()
    assert reset.type == "reset"
    assert json.loads(reset.data) == {
        "lastEventId": "earlier-process-17",
        "reason": "not-in-history",
    }
    assert reset.last_event_id == ids[2]
    assert [(e.type, json.loads(e.data), e.last_event_id) for e in live] == expected_created(
        [4, 5], ids[3:]
    )


async def test_resuming_from_a_resets_id_continues_without_gap() -> None:
    async with pipeline() as (bus, broadcaster, tasks):
        ids = await publish_created(bus, broadcaster, range(1, 4))
        first, scope = Client(), anyio.CancelScope()
        tasks.start_soon(functools.partial(serve, broadcaster, first, "unknown", scope=scope))
        await wait_until(lambda: len(first.events()) == 1)
        scope.cancel()  # gone right after the reset, before any live event
        await first.finished.wait()
        reset_id = first.parser().last_event_id
        assert reset_id == ids[-1]
        ids += await publish_created(bus, broadcaster, [4, 5])
        second = await join(tasks, broadcaster, last_event_id=reset_id)
        await wait_until(lambda: len(second.events()) == 2)
    assert received(second) == expected_created([4, 5], ids[3:])


async def test_an_id_evicted_from_history_gets_a_reset() -> None:
    async with pipeline(history=InMemoryHistory(max_events=3)) as (bus, broadcaster, tasks):
        ids = await publish_created(bus, broadcaster, range(1, 7))
        client = await join(tasks, broadcaster, last_event_id=ids[0])
        await wait_until(lambda: len(client.events()) == 1)
        ids += await publish_created(bus, broadcaster, [7])
        await wait_until(lambda: len(client.events()) == 2)
    reset, live = client.events()
    assert reset.type == "reset"
    assert json.loads(reset.data) == {"lastEventId": ids[0], "reason": "not-in-history"}
    assert reset.last_event_id == ids[5]
    assert (live.type, live.last_event_id) == ("order-created", ids[6])


async def test_a_reset_before_any_event_carries_the_starting_position() -> None:
    async with pipeline() as (_, broadcaster, tasks):
        origin = broadcaster.position_id()
        client = await join(tasks, broadcaster, last_event_id="unknown")
        await wait_until(lambda: len(client.events()) == 1)
    assert client.events()[0].type == "reset"
    assert client.events()[0].last_event_id == origin


async def test_retry_given_at_connect_is_written_first() -> None:
    async with pipeline() as (bus, broadcaster, tasks):
        ids = await publish_created(bus, broadcaster, [1, 2])
        fresh = await join(tasks, broadcaster, retry=1500)
        resumed = await join(tasks, broadcaster, retry=2500, last_event_id=ids[0])
        ids += await publish_created(bus, broadcaster, [3])
        await wait_until(lambda: len(fresh.events()) == 1 and len(resumed.events()) == 2)
    assert fresh.stream.startswith(b"retry: 1500\n\n")
    assert resumed.stream.startswith(b"retry: 2500\n\n")
    assert fresh.events()[0].retry == 1500
    assert received(fresh) == expected_created([3], ids[2:])
    assert received(resumed) == expected_created([2, 3], ids[1:])


class SlowHistory:
    """A history whose lookup takes a while (e.g. Redis), released by ``gate``."""

    def __init__(self, *, look_before_waiting: bool) -> None:
        self.inner = InMemoryHistory()
        self.look_before_waiting = look_before_waiting
        self.reading = anyio.Event()
        self.gate = anyio.Event()

    def append(self, frame: Frame) -> None:
        self.inner.append(frame)

    async def since(
        self, partitions: Collection[str | None], after: int, limit: int
    ) -> Sequence[Frame] | None:
        if self.look_before_waiting:
            found = await self.inner.since(partitions, after, limit)
        self.reading.set()
        await self.gate.wait()
        if not self.look_before_waiting:
            found = await self.inner.since(partitions, after, limit)
        return found


@pytest.mark.parametrize("look_before_waiting", [True, False], ids=["early-look", "late-look"])
async def test_events_published_while_history_is_read_arrive_once_after_the_replay(
    look_before_waiting: bool,
) -> None:
    """Events published during a slow lookup are neither lost nor sent twice, whether or
    not the lookup already saw them."""
    history = SlowHistory(look_before_waiting=look_before_waiting)
    async with pipeline(history=history) as (bus, broadcaster, tasks):
        ids = await publish_created(bus, broadcaster, [1, 2, 3])
        client = Client()
        tasks.start_soon(functools.partial(serve, broadcaster, client, ids[0]))
        await history.reading.wait()
        ids += await publish_created(bus, broadcaster, [4, 5])  # during the lookup
        history.gate.set()
        ids += await publish_created(bus, broadcaster, [6])
        await wait_until(lambda: len(client.events()) >= 5)
        await anyio.sleep(0.01)  # room for a duplicate to show up
    assert received(client) == expected_created([2, 3, 4, 5, 6], ids[1:])


async def test_a_reset_during_a_slow_history_read_covers_the_events_published_meanwhile() -> None:
    """The history no longer covers the client's id: its reset moves it past every event
    published during the read (it reloads its state, which has them), and what follows
    arrives live - nothing missing, nothing twice."""

    class SlowForgetfulHistory:
        def __init__(self) -> None:
            self.reading = anyio.Event()
            self.gate = anyio.Event()

        def append(self, frame: Frame) -> None:
            pass

        async def since(
            self, partitions: Collection[str | None], after: int, limit: int
        ) -> Sequence[Frame] | None:
            self.reading.set()
            await self.gate.wait()
            return None

    history = SlowForgetfulHistory()
    async with pipeline(history=history) as (bus, broadcaster, tasks):
        ids = await publish_created(bus, broadcaster, [1])
        client = Client()
        tasks.start_soon(functools.partial(serve, broadcaster, client, ids[0]))
        await history.reading.wait()
        ids += await publish_created(bus, broadcaster, [2])
        history.gate.set()
        await wait_until(lambda: len(client.events()) == 1)
        ids += await publish_created(bus, broadcaster, [3])
        await wait_until(lambda: len(client.events()) == 2)
    reset, live = client.events()
    assert reset.type == "reset"
    assert json.loads(reset.data) == {"lastEventId": ids[0], "reason": "not-in-history"}
    assert reset.last_event_id == ids[1]
    assert (live.type, live.last_event_id) == ("order-created", ids[2])


# --- shutdown ------------------------------------------------------------------------------


async def test_shutdown_during_a_slow_history_read_sends_the_replay_then_the_goodbye() -> None:
    history = SlowHistory(look_before_waiting=False)
    async with pipeline(history=history, shutdown_timeout=2) as (bus, broadcaster, tasks):
        ids = await publish_created(bus, broadcaster, [1, 2, 3])
        client = Client()
        tasks.start_soon(functools.partial(serve, broadcaster, client, ids[0]))
        await history.reading.wait()
        async with anyio.create_task_group() as closing:
            closing.start_soon(broadcaster.aclose)
            # aclose has said goodbye to the connection still reading history
            await wait_until(lambda: [c.closed for c in broadcaster.registry.snapshot()] == [True])
            history.gate.set()
        await client.finished.wait()
    assert received(client) == expected_created([2, 3], ids[1:])
    assert client.parser().retry is not None


async def test_shutdown_ends_a_connection_stuck_in_its_history_lookup() -> None:
    """A history lookup that never returns (e.g. a wedged Redis) is cancelled by the abort
    at ``shutdown_timeout``: the client's ``connect`` ends instead of hanging forever."""

    class StuckHistory:
        def __init__(self) -> None:
            self.reading = anyio.Event()

        def append(self, frame: Frame) -> None:
            pass

        async def since(
            self, partitions: Collection[str | None], after: int, limit: int
        ) -> Sequence[Frame] | None:
            self.reading.set()
            await anyio.sleep_forever()
            return None  # pragma: no cover

    history = StuckHistory()
    with anyio.fail_after(0.5):
        async with pipeline(history=history, shutdown_timeout=0.05) as (_, broadcaster, tasks):
            client = Client()
            resume_from = broadcaster.position_id()  # ours, so it is looked up
            tasks.start_soon(functools.partial(serve, broadcaster, client, resume_from))
            await history.reading.wait()
            await broadcaster.aclose()
            assert len(broadcaster.registry) == 0
            await client.finished.wait()  # abort cancels the lookup, so connect() ends


async def test_aclose_says_goodbye_with_a_jittered_retry_and_ends_every_client() -> None:
    async with pipeline(reconnect_jitter=(100, 200)) as (bus, broadcaster, tasks):
        clients = [await join(tasks, broadcaster) for _ in range(10)]
        ids = await publish_created(bus, broadcaster, [1, 2, 3])
        await broadcaster.aclose()  # at once: the 3 frames are still queued
        assert len(broadcaster.registry) == 0
        assert broadcaster.metrics().active_connections == 0
        await wait_until(lambda: all(c.finished.is_set() for c in clients))
    for client in clients:
        assert received(client) == expected_created([1, 2, 3], ids)
        assert re.search(rb"\n: server shutting down\nretry: \d+\n\n\Z", client.stream)
        retry = client.parser().retry
        assert retry is not None
        assert 100 <= retry <= 200
        assert client.connection is not None
        assert client.connection.closed


async def test_leaving_the_broadcaster_context_says_goodbye_to_every_client() -> None:
    clients: list[Client] = []
    async with pipeline(reconnect_jitter=(300, 300)) as (bus, broadcaster, tasks):
        clients += [await join(tasks, broadcaster) for _ in range(3)]
        await publish_created(bus, broadcaster, [1])
    assert len(broadcaster.registry) == 0
    for client in clients:
        assert client.finished.is_set()
        assert len(client.events()) == 1
        assert client.parser().retry == 300


async def test_a_client_whose_writer_hangs_is_aborted_after_shutdown_timeout() -> None:
    async with pipeline(shutdown_timeout=0.05, write_timeout=None) as (bus, broadcaster, tasks):
        good = await join(tasks, broadcaster)
        stuck = await join(tasks, broadcaster, Client(stall=True))
        await publish_created(bus, broadcaster, [1])
        await wait_until(lambda: len(good.events()) == 1)
        await broadcaster.aclose()
        assert len(broadcaster.registry) == 0
        await stuck.finished.wait()
        await good.finished.wait()
    assert good.parser().retry is not None
    assert stuck.connection is not None
    assert stuck.connection.closed


async def test_shutdown_with_a_full_queue_still_aborts_after_shutdown_timeout() -> None:
    async with pipeline(shutdown_timeout=0.05, write_timeout=None, max_queue=2) as (
        bus,
        broadcaster,
        tasks,
    ):
        stuck = await join(tasks, broadcaster, Client(stall=True))
        await anyio.sleep(0.01)  # the writer takes the position marker and hangs
        await publish_created(bus, broadcaster, [1, 2])  # the queue is now full
        assert broadcaster.metrics().evictions == 0
        await broadcaster.aclose()
        await stuck.finished.wait()
        assert len(broadcaster.registry) == 0


async def test_shutdown_delivers_a_full_queue_and_the_goodbye_to_a_slow_but_live_client() -> None:
    gate = anyio.Event()
    client = Client()

    async def slow(data: bytes) -> None:
        client.writes.append(data)
        if len(client.writes) == 2:
            await gate.wait()

    async with pipeline(shutdown_timeout=2, write_timeout=None, max_queue=2) as (
        bus,
        broadcaster,
        tasks,
    ):
        await join(tasks, broadcaster, client, write=slow)
        await wait_until(lambda: len(client.writes) == 1)  # the position marker
        ids = await publish_created(bus, broadcaster, [1])
        await wait_until(lambda: len(client.writes) == 2)  # writing frame 1, slowly
        ids += await publish_created(bus, broadcaster, [2, 3])  # queue full, not evicted
        assert broadcaster.metrics().evictions == 0
        async with anyio.create_task_group() as closing:
            closing.start_soon(broadcaster.aclose)
            await anyio.sleep(0.01)
            gate.set()  # the client catches up well within shutdown_timeout
        await client.finished.wait()
    assert received(client) == expected_created([1, 2, 3], ids)
    assert client.parser().retry is not None


async def test_aclose_can_be_called_again_and_from_another_task() -> None:
    async with pipeline() as (_, broadcaster, tasks):
        client = await join(tasks, broadcaster)
        async with anyio.create_task_group() as closers:
            closers.start_soon(broadcaster.aclose)
            closers.start_soon(broadcaster.aclose)
        await broadcaster.aclose()
        await client.finished.wait()
    await broadcaster.aclose()


async def test_connect_publish_and_broadcast_after_shutdown_raise_closed_error() -> None:
    async with pipeline() as (bus, broadcaster, _):
        await broadcaster.aclose()
        with pytest.raises(ClosedError):
            async with broadcaster.connect():
                pass
        with pytest.raises(ClosedError):
            broadcaster.publish(created(1))
        with pytest.raises(ClosedError):
            broadcaster.broadcast(ServerSentEvent(data="x"))
        await bus.publish(created(2))  # the bus no longer reaches the broadcaster
    with pytest.raises(ClosedError):
        async with broadcaster.connect():
            pass


async def test_connect_and_publish_before_start_raise_closed_error() -> None:
    broadcaster = Broadcaster(InMemoryEventBus(), order_events())
    with pytest.raises(ClosedError):
        async with broadcaster.connect():
            pass
    with pytest.raises(ClosedError):
        broadcaster.publish(created(1))


async def test_a_running_broadcaster_cannot_be_started_again() -> None:
    # Once stopped it can (tests/test_restart.py).
    async with pipeline() as (_, broadcaster, _):
        with pytest.raises(ClosedError, match="already running"):
            async with broadcaster:
                pass


async def test_leaving_the_context_at_once_ends_even_with_a_heartbeat() -> None:
    with anyio.fail_after(0.3):
        async with InMemoryEventBus() as bus, Broadcaster(bus, order_events(), heartbeat=0.02):
            pass


async def test_leaving_the_context_ends_the_heartbeat_task_once_it_runs() -> None:
    with anyio.fail_after(GUARD):
        async with InMemoryEventBus() as bus, Broadcaster(bus, order_events(), heartbeat=0.02):
            await anyio.sleep(0.05)


async def test_a_duplicate_connection_id_is_refused_and_the_first_is_unaffected() -> None:
    async with pipeline() as (_, broadcaster, _):
        async with broadcaster.connect(connection_id="tab-1") as first:
            with pytest.raises(DuplicateConnectionError) as caught:
                async with broadcaster.connect(connection_id="tab-1"):
                    pass
            assert broadcaster.registry.snapshot() == (first,)
            assert not first.closed
    assert caught.value.connection_id == "tab-1"
    assert not isinstance(caught.value, ConfigurationError)  # a run-time clash, not a setting


# --- metrics -------------------------------------------------------------------------------


async def test_metrics_count_connections_events_frames_and_broadcasts() -> None:
    hooked: list[tuple[str, float]] = []
    async with pipeline(metrics_hook=lambda n, v: hooked.append((n, v))) as (
        bus,
        broadcaster,
        tasks,
    ):
        empty = broadcaster.metrics()
        clients = [await join(tasks, broadcaster) for _ in range(2)]
        await publish_created(bus, broadcaster, [1, 2, 3])
        await wait_until(lambda: all(len(c.events()) == 3 for c in clients))
        metrics = broadcaster.metrics()
    assert empty.active_connections == 0
    assert empty.events_published == 0
    assert metrics.active_connections == 2
    assert metrics.connections_opened == 2
    assert metrics.events_published == 3
    assert metrics.events_dropped == 0
    assert metrics.frames_sent == 6
    assert metrics.write_errors == 0
    assert metrics.evictions == 0
    assert metrics.broadcast_count == 3
    assert 0 <= metrics.broadcast_seconds_max <= metrics.broadcast_seconds_sum
    assert set(metrics.as_dict()) >= {"active_connections", "frames_sent", "broadcast_count"}
    assert metrics.as_dict()["events_published"] == 3
    names = [name for name, _ in hooked]
    assert names.count("connections_opened") == 2
    assert names.count("events_published") == 3
    assert names.count("broadcast_seconds") == 3
    assert names.count("connections_closed") == 2
    assert sum(v for n, v in hooked if n == "frames_sent") >= 6
    assert all(v >= 0 for n, v in hooked if n == "broadcast_seconds")


async def test_a_metrics_hook_that_raises_never_disturbs_delivery(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken_hook(name: str, value: float) -> None:
        raise RuntimeError("exporter down")

    caplog.set_level(logging.ERROR, logger="ssebus")
    async with pipeline(metrics_hook=broken_hook) as (bus, broadcaster, tasks):
        clients = [await join(tasks, broadcaster) for _ in range(3)]
        ids = await publish_created(bus, broadcaster, range(5))
        await wait_until(lambda: all(len(c.events()) == 5 for c in clients))
        assert broadcaster.metrics().events_published == 5
    for client in clients:
        assert received(client) == expected_created(range(5), ids)
    assert any("metrics hook failed" in r.getMessage() for r in caplog.records)


# --- settings ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("heartbeat", 0),
        ("heartbeat", -1),
        ("heartbeat_style", "shout"),
        ("max_queue", 0),
        ("max_queue", True),
        ("max_queue", 1.5),
        ("max_queue_bytes", 0),
        ("max_replay", 0),
        ("max_replay", 2.0),
        ("replay_page", 0),
        ("replay_concurrency", 0),
        ("replay_concurrency", False),
        ("write_timeout", 0),
        ("reconnect_jitter", (5000, 1000)),
        ("reconnect_jitter", (-1, 10)),
    ],
)
async def test_bad_settings_are_refused_naming_the_setting(setting: str, value: object) -> None:
    options: dict[str, Any] = {setting: value}
    with pytest.raises(ConfigurationError, match=setting) as caught:
        Broadcaster(InMemoryEventBus(), order_events(), **options)
    assert caught.value.setting == setting


# -- disconnect watching -----------------------------------------------------------------


class Receiver:
    """An ASGI ``receive`` whose client disconnects when told to (or never)."""

    def __init__(self) -> None:
        self.gone = anyio.Event()
        self.waiting = 0

    async def __call__(self) -> dict[str, Any]:
        self.waiting += 1
        try:
            await self.gone.wait()
        finally:
            self.waiting -= 1
        return {"type": "http.disconnect"}


async def test_a_watched_client_that_disconnects_is_aborted_while_its_stream_is_idle() -> None:
    receive = Receiver()
    async with pipeline() as (_, broadcaster, _):
        async with broadcaster.connect(watch=receive) as connection:
            await wait_until(lambda: receive.waiting == 1)
            receive.gone.set()
            with anyio.fail_after(GUARD):
                await connection.run(Client().write)  # returns: the client is gone
        assert connection.close_reason == "client disconnected"
        assert len(broadcaster.registry) == 0


async def test_watching_stops_with_the_stream_and_shutdown_leaves_no_task_behind() -> None:
    ended, open_at_shutdown = Receiver(), Receiver()
    async with pipeline() as (_, broadcaster, tasks):
        async with broadcaster.connect(watch=ended):
            await wait_until(lambda: ended.waiting == 1)
        await wait_until(lambda: ended.waiting == 0)  # the stream ended: its watch too

        async def stream() -> None:
            async with broadcaster.connect(watch=open_at_shutdown) as connection:
                await connection.run(Client().write)

        tasks.start_soon(stream)
        await wait_until(lambda: open_at_shutdown.waiting == 1)
    assert open_at_shutdown.waiting == 0
    assert not open_at_shutdown.gone.is_set()
