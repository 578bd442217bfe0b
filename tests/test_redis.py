"""Broadcasters on ``RedisEventBus`` instances against a real Redis (``REDIS_URL``, default
redis://127.0.0.1:6379/0): same events, same order and same opaque ids on every instance;
a client resumes on any instance; gaps and resets reach the clients.

Skipped when Redis is unreachable, unless ``SSEBUS_REQUIRE_REDIS=1`` (then they fail).
The restart tests start private ``redis-server`` processes on free ports (the helpers are
shared with ``test_redis_bus.py``).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import coredis
import pytest
from anyio.abc import Process
from anyio.streams.text import TextReceiveStream
from clients import Client, join, leave
from redis_support import (
    REDIS_URL,
    RedisServer,
    delete_bus,
    eventually,
    free_port,
    fresh_bus_names,
    publish_when_back,
    raw_client,
    reachable,
    redis_server_fixture,  # noqa: F401 - the redis_server fixture
)
from tenants import Noted, noted_events

from ssebus import (
    Broadcaster,
    BusUnavailableError,
    ConfigurationError,
    EventMap,
    InvalidArgumentError,
    Subscription,
    UnregisteredEventError,
    delivery_position,
)
from ssebus._position import PositionCodec
from ssebus.redis import Mode, RedisEventBus

HERE = Path(__file__).parent
MODES: list[Mode] = ["pubsub", "streams"]
#: Every bus name here starts with it, so leftovers of earlier runs can be found.
PREFIX = "ssebus-test-redis-"
#: Seconds a bus's keys must all have been untouched before a later run deletes them.
LEFTOVER_IDLE = 3600

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("need_redis")]


# -- domain events -----------------------------------------------------------------------


@dataclass(frozen=True)
class OrderPlaced:
    order_id: str
    total: int


@dataclass(frozen=True)
class OrderShipped:
    order_id: str


class Money:
    """Not a dataclass: needs a codec."""

    def __init__(self, cents: int) -> None:
        self.cents = cents

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Money) and other.cents == self.cents

    def __hash__(self) -> int:
        return hash(self.cents)


@dataclass(frozen=True)
class NotRegistered:
    value: int


events = EventMap()


@events.on(OrderPlaced, "order-placed")
def order_placed(event: OrderPlaced) -> dict[str, Any]:
    return {"orderId": event.order_id, "total": event.total}


@events.on(OrderShipped, "order-shipped")
def order_shipped(event: OrderShipped) -> dict[str, Any]:
    return {"orderId": event.order_id}


# -- helpers -----------------------------------------------------------------------------


_swept = False


async def sweep_leftovers(redis: coredis.Redis[str]) -> None:
    """Delete the buses earlier runs left behind: a name of ours whose keys all went
    untouched for ``LEFTOVER_IDLE`` seconds (a running test touches some every second)."""
    idle: dict[str, int] = {}
    async for key in redis.scan_iter(match=f"{{{PREFIX}*}}:*"):
        tag = key[: key.find("}") + 1]
        seconds = await redis.object_idletime(key)
        idle[tag] = min(idle.get(tag, seconds), seconds)
    for tag, seconds in idle.items():
        if seconds > LEFTOVER_IDLE:
            await delete_bus(redis, tag[1:-1])


@pytest.fixture
async def names() -> AsyncIterator[Callable[[], str]]:
    """Fresh bus names on ``REDIS_URL``; every key of theirs is deleted afterwards."""
    global _swept
    if not _swept and reachable(REDIS_URL):
        _swept = True
        async with raw_client() as redis:
            await sweep_leftovers(redis)
    async with fresh_bus_names(PREFIX) as new:
        yield new


def make_bus(mode: Mode, name: str, url: str = REDIS_URL, **options: Any) -> RedisEventBus:
    options.setdefault("reconnect_backoff", (0.05, 0.5))
    bus = RedisEventBus(url, mode=mode, channel=name, stream=name, **options)
    bus.register(OrderPlaced)
    bus.register(OrderShipped)
    bus.register(
        Money, name="money", encode=lambda m: {"cents": m.cents}, decode=lambda f: Money(f["cents"])
    )
    bus.register(Noted)
    return bus


def collect(bus: RedisEventBus, event_type: type[Any] = object) -> list[tuple[Any, int | None]]:
    """Every event of ``event_type`` the bus delivers here, with its position."""
    got: list[tuple[Any, int | None]] = []

    async def handler(event: Any) -> None:
        got.append((event, delivery_position()))

    bus.subscribe(event_type, handler)
    return got


def ids_of(bus: RedisEventBus, ticks: range, view: str | None = None) -> list[str]:
    """The SSE ids every instance of ``bus`` gives a client of ``view`` for ``ticks``."""
    codec = PositionCodec(bus.position_secret())
    return [codec.token(view, tick) for tick in ticks]


async def feed_ticks(name: str) -> list[int]:
    """The ticks of the entries in the bus's feed stream."""
    async with raw_client() as redis:
        entries = await redis.xrange(f"{{{name}}}:feed")
    return [int(str(entry.identifier).split("-")[0]) for entry in entries]


def payloads(client: Client) -> list[tuple[str, Any]]:
    """(type, data) of every event the client received."""
    return [(event.type, json.loads(event.data)) for event in client.events()]


# -- delivery between instances ----------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_event_published_on_one_instance_reaches_another(
    mode: Mode, names: Callable[[], str]
) -> None:
    name = names()
    with anyio.fail_after(15):
        async with make_bus(mode, name) as a, make_bus(mode, name) as b:
            got = collect(b)
            await a.publish(OrderPlaced("o-1", 250))
            await a.publish(Money(999))
            await a.publish(OrderShipped("o-1"))
            await eventually(lambda: len(got) == 3)
            assert b.latest_position() == 3
    assert [event for event, _ in got] == [OrderPlaced("o-1", 250), Money(999), OrderShipped("o-1")]
    assert [position for _, position in got] == [1, 2, 3]


@pytest.mark.parametrize("mode", MODES)
async def test_subscriber_only_gets_its_type_and_unsubscribe_works(
    mode: Mode, names: Callable[[], str]
) -> None:
    name = names()
    with anyio.fail_after(15):
        async with make_bus(mode, name) as a, make_bus(mode, name) as b:
            shipped = collect(b, OrderShipped)
            everything: list[object] = []

            async def handler(event: object) -> None:
                everything.append(event)

            unsubscribe = b.subscribe(object, handler)
            await a.publish(OrderPlaced("o-1", 1))
            await a.publish(OrderShipped("o-1"))
            await eventually(lambda: len(everything) == 2)
            unsubscribe()
            await a.publish(OrderShipped("o-2"))
            await eventually(lambda: len(shipped) == 2)
    assert [event for event, _ in shipped] == [OrderShipped("o-1"), OrderShipped("o-2")]
    assert everything == [OrderPlaced("o-1", 1), OrderShipped("o-1")]


@pytest.mark.parametrize("mode", MODES)
async def test_broadcasters_on_two_instances_send_identical_frames(
    mode: Mode, names: Callable[[], str]
) -> None:
    name = names()
    with anyio.fail_after(15):
        async with (
            make_bus(mode, name) as bus_a,
            make_bus(mode, name) as bus_b,
            Broadcaster(bus_a, events, heartbeat=None) as broadcaster_a,
            Broadcaster(bus_b, events, heartbeat=None) as broadcaster_b,
            anyio.create_task_group() as tasks,
        ):
            client_a = await join(tasks, broadcaster_a)
            client_b = await join(tasks, broadcaster_b)
            for n in range(5):
                await bus_a.publish(OrderPlaced(f"o-{n}", n))
            await bus_b.publish(OrderShipped("o-0"))
            await eventually(lambda: len(client_a.events()) == 6 and len(client_b.events()) == 6)
            tasks.cancel_scope.cancel()
    assert client_a.stream == client_b.stream
    received = client_a.events()
    if mode == "streams":
        assert await feed_ticks(name) == list(range(1, 7))
    assert [e.last_event_id for e in received] == ids_of(bus_a, range(1, 7))
    assert [e.type for e in received] == ["order-placed"] * 5 + ["order-shipped"]
    assert json.loads(received[2].data) == {"orderId": "o-2", "total": 2}


async def test_streams_client_resumes_on_another_instance_with_exactly_the_missed_events(
    names: Callable[[], str],
) -> None:
    name = names()
    with anyio.fail_after(15):
        async with (
            make_bus("streams", name) as bus_a,
            Broadcaster(bus_a, events, heartbeat=None) as broadcaster_a,
            anyio.create_task_group() as tasks,
        ):
            client_a = await join(tasks, broadcaster_a)
            for n in range(5):
                await bus_a.publish(OrderPlaced(f"o-{n}", n))
            await eventually(lambda: len(client_a.events()) == 5)
            seen = client_a.events()
            # The client saw two events on A, then reconnects to a new instance B, whose
            # own history does not go back that far: B replays from Redis.
            last_seen = seen[1].last_event_id
            async with (
                make_bus("streams", name) as bus_b,
                Broadcaster(bus_b, events, heartbeat=None) as broadcaster_b,
            ):
                assert PositionCodec(bus_b.position_secret()).tick([None], last_seen) == 2
                assert await broadcaster_b.history.since([None], 2, 100) is None
                client_b = await join(tasks, broadcaster_b, last_event_id=last_seen)
                await bus_a.publish(OrderShipped("o-0"))
                await eventually(lambda: len(client_b.events()) == 4)
                newest = broadcaster_b.position_id()
                await anyio.sleep(0.2)  # nothing else arrives
                tasks.cancel_scope.cancel()
    resumed = client_b.events()
    assert [e.last_event_id for e in resumed] == [*(e.last_event_id for e in seen[2:]), newest]
    assert newest == ids_of(bus_a, range(6, 7))[0]
    assert [e.data for e in resumed[:3]] == [e.data for e in seen[2:]]
    assert resumed[-1].type == "order-shipped"
    assert broadcaster_b.metrics().resets == 0


async def test_streams_resume_on_an_instance_whose_reader_lags_sends_nothing_twice(
    names: Callable[[], str],
) -> None:
    """B's reader is held at tick 2 while ticks 3-5 are already in Redis. A client
    resuming on B after tick 4 is replayed tick 5 from Redis; when B's reader catches
    up, ticks 3-5 arrive live and must not reach that client again."""
    name = names()
    gate = anyio.Event()
    with anyio.fail_after(15):
        async with (
            make_bus("streams", name) as bus_a,
            make_bus("streams", name) as bus_b,
            Broadcaster(bus_b, events, heartbeat=None) as broadcaster_b,
            anyio.create_task_group() as tasks,
        ):

            async def hold_at_second_order(event: OrderPlaced) -> None:
                if event.order_id == "o-2":
                    await gate.wait()

            bus_b.subscribe(OrderPlaced, hold_at_second_order)
            for n in range(1, 6):
                await bus_a.publish(OrderPlaced(f"o-{n}", n))
            await eventually(lambda: broadcaster_b.metrics().events_published == 2)
            ids = ids_of(bus_a, range(1, 6))
            client = await join(tasks, broadcaster_b, last_event_id=ids[3])
            await eventually(lambda: len(client.events()) == 1)  # replayed while B lags
            assert bus_b.latest_position() == 2
            gate.set()
            await eventually(lambda: bus_b.latest_position() == 5)
            await bus_a.publish(OrderShipped("o-1"))
            await eventually(lambda: len(client.events()) >= 2)
            await anyio.sleep(0.2)  # nothing else arrives
            tasks.cancel_scope.cancel()
    received = client.events()
    assert [e.type for e in received] == ["order-placed", "order-shipped"]
    assert received[0].last_event_id == ids[4]
    assert json.loads(received[0].data) == {"orderId": "o-5", "total": 5}


async def test_streams_replay_edge_cases(names: Callable[[], str]) -> None:
    name = names()
    with anyio.fail_after(15):
        async with make_bus("streams", name) as bus:
            assert bus.latest_position() == 0
            assert await bus.replay([None], 0, 100) == []
            assert await bus.replay([None], -1, 100) is None
            assert await bus.replay([None], 5, 100) is None
            got = collect(bus)
            for n in range(3):
                await bus.publish(OrderPlaced(f"o-{n}", n))
            await eventually(lambda: len(got) == 3)
            assert bus.latest_position() == 3
            assert await bus.replay([None], 3, 100) == []
            assert await bus.replay([None], 1, 100) == [
                (2, OrderPlaced("o-1", 1)),
                (3, OrderPlaced("o-2", 2)),
            ]
            assert await bus.replay([None], 0, 100) == [(p, e) for e, p in got]
            assert await bus.replay([None], 3 + 60_000, 100) is None  # from the future


async def test_streams_id_older_than_the_trimmed_stream_gets_a_reset(
    names: Callable[[], str],
) -> None:
    name = names()
    with anyio.fail_after(20):
        async with make_bus("streams", name, maxlen=10) as bus:
            got = collect(bus)
            for n in range(250):  # MAXLEN ~ trims whole nodes (100 entries each)
                await bus.publish(OrderPlaced(f"o-{n}", n))
            await eventually(lambda: len(got) == 250)
            async with raw_client() as redis:
                assert await redis.xlen(f"{{{name}}}:global") < 250
            assert await bus.replay([None], 1, 100) is None
            assert await bus.replay([None], 0, 100) is None
            async with (
                Broadcaster(bus, events, heartbeat=None) as broadcaster,
                anyio.create_task_group() as tasks,
            ):
                first_id = ids_of(bus, range(1, 2))[0]
                client = await join(tasks, broadcaster, last_event_id=first_id)
                await eventually(lambda: len(client.events()) == 1)
                newest = broadcaster.position_id()
                await anyio.sleep(0.2)  # nothing else arrives
                tasks.cancel_scope.cancel()
    (reset,) = client.events()
    assert reset.type == "reset"
    assert json.loads(reset.data) == {"lastEventId": first_id, "reason": "not-in-history"}
    assert reset.last_event_id == newest == ids_of(bus, range(250, 251))[0]


# -- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_unknown_and_malformed_messages_are_skipped(
    mode: Mode, names: Callable[[], str], caplog: pytest.LogCaptureFixture
) -> None:
    name = names()
    caplog.set_level(logging.WARNING, logger="ssebus.redis")
    with anyio.fail_after(15):
        async with make_bus(mode, name) as bus, raw_client() as redis:
            got = collect(bus)
            if mode == "pubsub":
                for body in ["not json", "[1, 2]", json.dumps({"type": "OrderPlaced"})]:
                    await redis.publish(name, body)
                numbered: list[dict[str, Any]] = [  # well numbered, badly typed
                    {"type": "os.system", "data": {"command": "rm -rf /"}},
                    {"type": "OrderPlaced", "data": {"unexpected": 1}},
                    {"type": "OrderPlaced", "data": "text"},
                    {"data": {}},
                ]
                for fields in numbered:
                    seq = await redis.incr(f"{{{name}}}:seq")
                    await redis.publish(name, json.dumps({**fields, "seq": seq}))
            else:
                for entry in [  # at the next ticks, in the feed and the retention stream
                    {"type": "OrderPlaced", "data": "not json"},
                    {"type": "os.system", "data": json.dumps({"command": "rm -rf /"})},
                    {"type": "OrderPlaced", "data": json.dumps({"unexpected": 1})},
                    {"type": "OrderPlaced", "data": "[1]"},
                    {"other": "field"},
                ]:
                    tick = await redis.incr(f"{{{name}}}:tick")
                    for stream in ("feed", "global"):
                        await redis.xadd(f"{{{name}}}:{stream}", entry, identifier=f"{tick}-0")
            await bus.publish(OrderPlaced("o-1", 5))
            await eventually(lambda: len(got) == 1)
            if mode == "streams":
                assert await bus.replay([None], 0, 100) == [(6, OrderPlaced("o-1", 5))]
    assert got == [(OrderPlaced("o-1", 5), 5 if mode == "pubsub" else 6)]
    skipped = [r for r in caplog.records if r.name == "ssebus.redis" and "skipped" in r.message]
    assert len(skipped) >= (7 if mode == "pubsub" else 5)
    assert name in skipped[0].message
    if mode == "streams":
        assert "tick 1" in skipped[0].message
    assert not any("lost" in r.message for r in caplog.records)  # no gap: all were numbered


async def test_publishing_an_unregistered_type_raises_unregistered_event_error(
    names: Callable[[], str],
) -> None:
    with anyio.fail_after(10):
        async with make_bus("streams", names()) as bus:
            with pytest.raises(UnregisteredEventError, match="NotRegistered") as caught:
                await bus.publish(NotRegistered(1))
            with pytest.raises(InvalidArgumentError, match="idempotency_key"):
                await bus.publish(OrderPlaced("ord-1", 1), idempotency_key="")
    assert caught.value.event_type is NotRegistered


def test_register_rejects_bad_codecs() -> None:
    bus = RedisEventBus()
    with pytest.raises(ConfigurationError, match="not a dataclass"):
        bus.register(Money)
    with pytest.raises(ConfigurationError, match="both or neither"):
        bus.register(Money, encode=lambda m: {"cents": m.cents})
    bus.register(OrderPlaced, name="order")
    with pytest.raises(ConfigurationError, match="already used"):
        bus.register(OrderShipped, name="order")
    with pytest.raises(ConfigurationError, match="mode"):
        RedisEventBus(mode="kafka")  # type: ignore[arg-type]


def test_importing_without_coredis_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "coredis", None)
    monkeypatch.delitem(sys.modules, "ssebus.redis")
    with pytest.raises(ImportError, match=r"pip install 'ssebus\[redis\]'"):
        import ssebus.redis  # noqa: F401


# -- faults ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_publish_with_redis_unreachable_raises_bus_unavailable(mode: Mode) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    with anyio.fail_after(10):
        async with make_bus(
            mode, PREFIX + "nowhere", url, startup_timeout=0.2, publish_timeout=2
        ) as bus:
            with pytest.raises(BusUnavailableError, match="cannot publish OrderPlaced"):
                await bus.publish(OrderPlaced("o-1", 1))
            assert await bus.replay([None], 1, 100) is None  # the client gets a reset


async def test_streams_listener_survives_a_redis_restart_without_loss_or_duplicates(
    redis_server: Callable[[bool], Awaitable[RedisServer]],
) -> None:
    server = await redis_server(True)
    name = PREFIX + "survives"
    with anyio.fail_after(30):
        async with (
            make_bus("streams", name, server.url, publish_timeout=1) as publisher,
            make_bus("streams", name, server.url) as listener,
        ):
            got = collect(listener)
            for n in range(3):
                await publisher.publish(OrderPlaced(f"o-{n}", n))
            await eventually(lambda: len(got) == 3)
            await server.stop()
            with pytest.raises(BusUnavailableError):
                await publisher.publish(OrderPlaced("lost", 0))
            await anyio.sleep(0.3)  # the listener notices and starts backing off
            await server.start()
            for n in range(3, 6):
                await publish_when_back(publisher, OrderPlaced(f"o-{n}", n))
            await eventually(lambda: len(got) == 6, within=10)
            await anyio.sleep(0.2)  # nothing else arrives
    assert [event for event, _ in got] == [OrderPlaced(f"o-{n}", n) for n in range(6)]
    assert [position for _, position in got] == [1, 2, 3, 4, 5, 6]
    assert listener.reconnects >= 1
    assert listener.gaps == 0  # the log survived (AOF): same epoch, no reset


async def test_pubsub_listener_resubscribes_after_a_redis_restart_and_counts_the_gap(
    redis_server: Callable[[bool], Awaitable[RedisServer]],
) -> None:
    server = await redis_server(False)
    name = PREFIX + "resubscribes"
    with anyio.fail_after(30):
        async with (
            make_bus("pubsub", name, server.url, publish_timeout=1) as publisher,
            make_bus("pubsub", name, server.url) as listener,
        ):
            got = collect(listener)
            await publisher.publish(OrderPlaced("before", 0))
            await eventually(lambda: len(got) == 1)
            assert listener.gaps == 0
            await server.stop()
            await anyio.sleep(0.3)
            await server.start()
            await eventually(lambda: listener.gaps == 1, within=10)
            await publish_when_back(publisher, OrderPlaced("after", 1))
            await eventually(lambda: len(got) == 2, within=10)
    assert [event for event, _ in got] == [OrderPlaced("before", 0), OrderPlaced("after", 1)]
    assert listener.gaps == 1


# -- what clients are told (findings 2 and 4, end to end) --------------------------------


@pytest.mark.parametrize("persistent", [True, False], ids=["aof", "no-persistence"])
async def test_events_lost_while_the_pubsub_listener_was_away_reset_every_client(
    persistent: bool, redis_server: Callable[[bool], Awaitable[RedisServer]]
) -> None:
    """Redis restarts while the listener backs off; another instance publishes N events
    meanwhile. Every client of the listener's broadcaster, whatever its tenant, is told
    (``reset``, events-lost), the N are counted, and later events flow again."""
    server = await redis_server(persistent)
    name = PREFIX + "lost"
    missed = 6
    audiences = [None, "acme", "globex"]
    with anyio.fail_after(30):
        async with (
            make_bus("pubsub", name, server.url, publish_timeout=1) as publisher,
            make_bus("pubsub", name, server.url, reconnect_backoff=(2, 2)) as listener,
            Broadcaster(listener, noted_events(), heartbeat=None) as broadcaster,
            anyio.create_task_group() as tasks,
        ):
            clients = [
                await join(tasks, broadcaster, subscription=Subscription(tenant=tenant))
                for tenant in audiences
            ]
            await publisher.publish(Noted(0))
            await eventually(lambda: all(len(c.events()) == 1 for c in clients))
            await server.stop()
            await server.start()
            for n in range(1, missed + 1):
                await publish_when_back(publisher, Noted(n, audiences[n % 3]))
            assert broadcaster.metrics().gaps == 0  # the listener is still backing off
            await eventually(lambda: broadcaster.metrics().gaps == 1, within=10)
            await publisher.publish(Noted(99))
            await eventually(lambda: all(len(c.events()) == 3 for c in clients))
            await anyio.sleep(0.2)  # nothing else arrives
            tasks.cancel_scope.cancel()
    metrics = broadcaster.metrics()
    assert metrics.events_lost == missed
    assert metrics.resets == len(clients)
    for client in clients:
        first, reset, after = client.events()
        assert json.loads(first.data)["n"] == 0
        assert reset.type == "reset"
        assert json.loads(reset.data) == {"lastEventId": "", "reason": "events-lost"}
        assert after.type == "noted"
        assert json.loads(after.data)["n"] == 99


async def test_an_id_from_before_a_log_reset_gets_a_reset_not_a_resume_in_the_new_log(
    redis_server: Callable[[bool], Awaitable[RedisServer]],
) -> None:
    """Redis restarts empty (no persistence) and the new log's ticks pass the client's old
    tick: resuming there would skip the new log's first events without a word."""
    server = await redis_server(False)
    name = PREFIX + "rekey"
    with anyio.fail_after(30):
        async with (
            make_bus("streams", name, server.url, publish_timeout=1) as publisher,
            make_bus("streams", name, server.url, reconnect_backoff=(0.2, 0.2)) as listener,
            Broadcaster(listener, noted_events(), heartbeat=None) as broadcaster,
            anyio.create_task_group() as tasks,
        ):
            client = await join(tasks, broadcaster)
            await publisher.publish(Noted(0))
            await publisher.publish(Noted(1))
            await eventually(lambda: len(client.events()) == 2)
            await leave(client)
            old_id = client.last_event_id()
            await server.stop()
            await server.start()
            for n in range(10, 15):  # the new log's ticks 1-5 pass the old tick 2
                await publish_when_back(publisher, Noted(n))
            await eventually(lambda: broadcaster.metrics().gaps == 1, within=10)
            await eventually(lambda: broadcaster.position == 5)
            back = await join(tasks, broadcaster, last_event_id=old_id)
            await eventually(lambda: bool(back.events()))
            tasks.cancel_scope.cancel()
    assert [e.type for e in back.events()] == ["reset"]


async def test_a_tenants_burst_never_costs_another_tenants_client_its_resume(
    names: Callable[[], str],
) -> None:
    """Tenant A publishes five times ``maxlen``; a tenant-B client that missed 2 events
    resumes on a second instance (whose own history has none of them) and gets exactly
    those 2 from Redis, no reset."""
    name = names()
    maxlen = 100
    b_only = Subscription(tenant="B")
    with anyio.fail_after(30):
        async with (
            make_bus("streams", name, maxlen=maxlen) as bus_1,
            Broadcaster(bus_1, noted_events(), heartbeat=None) as broadcaster_1,
            anyio.create_task_group() as tasks,
        ):
            before = await join(tasks, broadcaster_1, subscription=b_only)
            await bus_1.publish(Noted(0, "B"))
            await eventually(lambda: len(before.events()) == 1)
            await leave(before)
            await bus_1.publish(Noted(1, "B"))
            for n in range(maxlen * 5):
                if n == maxlen * 2:
                    await bus_1.publish(Noted(2, "B"))
                await bus_1.publish(Noted(1000 + n, "A"))
            async with raw_client() as redis:
                assert await redis.xlen(f"{{{name}}}:tenant:A") < maxlen * 5  # A trimmed A
            async with (
                make_bus("streams", name, maxlen=maxlen) as bus_2,
                Broadcaster(bus_2, noted_events(), heartbeat=None) as broadcaster_2,
            ):
                after = await join(
                    tasks, broadcaster_2, last_event_id=before.last_event_id(), subscription=b_only
                )
                await eventually(lambda: len(after.events()) == 2)
                await bus_1.publish(Noted(3, "B"))
                await eventually(lambda: len(after.events()) == 3)
                await anyio.sleep(0.2)  # nothing else arrives
                tasks.cancel_scope.cancel()
    assert [data["n"] for _, data in payloads(after)] == [1, 2, 3]
    assert {kind for kind, _ in payloads(after)} == {"noted"}
    assert broadcaster_2.metrics().resets == 0


# -- two processes -----------------------------------------------------------------------


class Instance:
    """``tests/redis_instance.py`` in a subprocess; its stdout, line by line."""

    def __init__(self, process: Process) -> None:
        self.process = process
        assert process.stdout is not None
        self._text = TextReceiveStream(process.stdout)
        self._buffer = ""

    async def readline(self) -> str:
        while "\n" not in self._buffer:
            self._buffer += await self._text.receive()
        line, self._buffer = self._buffer.split("\n", 1)
        return line

    async def events(self, count: int) -> list[dict[str, Any]]:
        """The next ``count`` SSE events its client received."""
        return [json.loads(await self.readline()) for _ in range(count)]


@asynccontextmanager
async def instance(
    name: str, mode: Mode, last_event_id: str | None = None
) -> AsyncIterator[Instance]:
    command = [sys.executable, str(HERE / "redis_instance.py"), REDIS_URL, name, mode]
    if last_event_id is not None:
        command.append(last_event_id)
    process = await anyio.open_process(command)
    try:
        running = Instance(process)
        with anyio.fail_after(15):
            assert await running.readline() == "READY"
        yield running
    finally:
        with anyio.CancelScope(shield=True):
            if process.returncode is None:
                process.terminate()
            with anyio.move_on_after(5):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()
            await process.aclose()


@pytest.mark.parametrize("mode", MODES)
async def test_two_processes_receive_every_event_in_the_same_order_with_the_same_ids(
    mode: Mode, names: Callable[[], str]
) -> None:
    name = names()
    with anyio.fail_after(40):
        async with (
            instance(name, mode) as first,
            instance(name, mode) as second,
            make_bus(mode, name) as bus,
        ):
            for n in range(10):
                await bus.publish(OrderPlaced(f"o-{n}", n))
            received = [await p.events(10) for p in (first, second)]
    assert received[0] == received[1]
    assert [json.loads(line["data"])["orderId"] for line in received[0]] == [
        f"o-{n}" for n in range(10)
    ]
    assert [line["id"] for line in received[0]] == ids_of(bus, range(1, 11))
    if mode == "streams":
        assert await feed_ticks(name) == list(range(1, 11))


async def test_a_client_resumes_in_another_process_with_exactly_what_it_missed(
    names: Callable[[], str],
) -> None:
    name = names()
    with anyio.fail_after(40):
        async with instance(name, "streams") as first, make_bus("streams", name) as bus:
            for n in range(10):
                await bus.publish(OrderPlaced(f"o-{n}", n))
            seen = await first.events(10)
            async with instance(name, "streams", seen[3]["id"]) as second:
                resumed = await second.events(6)
                await bus.publish(OrderPlaced("o-10", 10))
                live = [await p.events(1) for p in (first, second)]
    assert resumed == seen[4:]
    assert live[0] == live[1]
    assert json.loads(live[0][0]["data"])["orderId"] == "o-10"
