"""RedisEventBus against a real Redis (``REDIS_URL``, default redis://127.0.0.1:6379/0).

Skipped when Redis is unreachable, unless ``SSEBUS_REQUIRE_REDIS=1`` (then they fail).
The restart tests start private ``redis-server`` processes on free ports.
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import coredis
import pytest
from anyio.abc import Process, TaskStatus
from anyio.streams.text import TextReceiveStream
from redis_support import REDIS_URL, reachable

from ssebus import (
    Broadcaster,
    BusUnavailableError,
    ConfigurationError,
    EventMap,
    ReplayableEventBus,
    delivery_id,
)
from ssebus.redis import Mode, RedisEventBus
from ssebus.testing import ParsedEvent, parse_events

HERE = Path(__file__).parent
MODES: list[Mode] = ["pubsub", "streams"]

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


_names: list[str] = []


def unique() -> str:
    """A fresh channel and stream name; the stream is deleted after this module's tests."""
    name = f"ssebus-test-{uuid.uuid4().hex}"
    _names.append(name)
    return name


@pytest.fixture(autouse=True, scope="module")
def _delete_streams() -> Iterator[None]:
    yield
    if _names and reachable(REDIS_URL):

        async def delete() -> None:
            async with raw_client() as redis:
                await redis.delete(_names)

        anyio.run(delete)
        _names.clear()


def make_bus(mode: Mode, name: str, url: str = REDIS_URL, **options: Any) -> RedisEventBus:
    options.setdefault("reconnect_backoff", (0.05, 0.5))
    bus = RedisEventBus(url, mode=mode, channel=name, stream=name, **options)
    bus.register(OrderPlaced)
    bus.register(OrderShipped)
    bus.register(
        Money, name="money", encode=lambda m: {"cents": m.cents}, decode=lambda f: Money(f["cents"])
    )
    return bus


def collect(bus: RedisEventBus, event_type: type[Any] = object) -> list[tuple[Any, str | None]]:
    got: list[tuple[Any, str | None]] = []

    async def handler(event: Any) -> None:
        got.append((event, delivery_id()))

    bus.subscribe(event_type, handler)
    return got


async def eventually(condition: Callable[[], bool], within: float = 5.0) -> None:
    with anyio.fail_after(within):
        while not condition():  # noqa: ASYNC110 - polling test state
            await anyio.sleep(0.01)


@asynccontextmanager
async def raw_client(url: str = REDIS_URL) -> AsyncIterator[coredis.Redis[str]]:
    async with coredis.Redis.from_url(url, decode_responses=True) as client:
        yield client


class Client:
    """A stream's bytes, as an SSE client would receive them."""

    def __init__(self) -> None:
        self.data = bytearray()

    async def write(self, chunk: bytes) -> None:
        self.data += chunk

    def events(self) -> list[ParsedEvent]:
        return parse_events(bytes(self.data))


async def stream_into(
    broadcaster: Broadcaster,
    client: Client,
    last_event_id: str | None = None,
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    async with broadcaster.connect(last_event_id=last_event_id) as connection:
        task_status.started()
        await connection.run(client.write)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# -- delivery between instances ----------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_event_published_on_one_instance_reaches_another(mode: Mode) -> None:
    name = unique()
    with anyio.fail_after(15):
        async with make_bus(mode, name) as a, make_bus(mode, name) as b:
            got = collect(b)
            await a.publish(OrderPlaced("o-1", 250))
            await a.publish(Money(999))
            await a.publish(OrderShipped("o-1"))
            await eventually(lambda: len(got) == 3)
    assert [event for event, _ in got] == [OrderPlaced("o-1", 250), Money(999), OrderShipped("o-1")]
    ids = [entry_id for _, entry_id in got]
    if mode == "streams":
        assert all(entry_id is not None for entry_id in ids)
        assert ids == sorted(ids, key=lambda i: tuple(map(int, str(i).split("-"))))
        assert isinstance(b, ReplayableEventBus)
        assert b.latest_id() == ids[-1]
    else:
        assert ids == [None, None, None]


@pytest.mark.parametrize("mode", MODES)
async def test_subscriber_only_gets_its_type_and_unsubscribe_works(mode: Mode) -> None:
    name = unique()
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


async def test_streams_broadcasters_on_two_instances_send_identical_frames() -> None:
    name = unique()
    client_a, client_b = Client(), Client()
    with anyio.fail_after(15):
        async with (
            make_bus("streams", name) as bus_a,
            make_bus("streams", name) as bus_b,
            Broadcaster(bus_a, events, heartbeat=None) as broadcaster_a,
            Broadcaster(bus_b, events, heartbeat=None) as broadcaster_b,
            anyio.create_task_group() as tasks,
        ):
            await tasks.start(stream_into, broadcaster_a, client_a)
            await tasks.start(stream_into, broadcaster_b, client_b)
            for n in range(5):
                await bus_a.publish(OrderPlaced(f"o-{n}", n))
            await bus_b.publish(OrderShipped("o-0"))
            await eventually(lambda: len(client_a.events()) == 6 and len(client_b.events()) == 6)
            tasks.cancel_scope.cancel()
    async with raw_client() as redis:
        entries = await redis.xrange(name)
        await redis.delete([name])
    assert client_a.data == client_b.data
    received = client_a.events()
    assert [e.last_event_id for e in received] == [str(entry.identifier) for entry in entries]
    assert [e.type for e in received] == ["order-placed"] * 5 + ["order-shipped"]
    assert json.loads(received[2].data) == {"orderId": "o-2", "total": 2}


async def test_streams_client_resumes_on_another_instance_with_exactly_the_missed_events() -> None:
    name = unique()
    client_a = Client()
    with anyio.fail_after(15):
        async with (
            make_bus("streams", name) as bus_a,
            Broadcaster(bus_a, events, heartbeat=None) as broadcaster_a,
            anyio.create_task_group() as tasks,
        ):
            await tasks.start(stream_into, broadcaster_a, client_a)
            for n in range(5):
                await bus_a.publish(OrderPlaced(f"o-{n}", n))
            await eventually(lambda: len(client_a.events()) == 5)
            seen = client_a.events()
            # The client saw two events on A, then reconnects to a new instance B, whose
            # own history does not go back that far: B replays from the Redis stream.
            last_seen = seen[1].last_event_id
            async with (
                make_bus("streams", name) as bus_b,
                Broadcaster(bus_b, events, heartbeat=None) as broadcaster_b,
            ):
                assert await broadcaster_b.history.since(last_seen) is None
                client_b = Client()
                async with broadcaster_b.connect(last_event_id=last_seen) as connection:
                    await bus_a.publish(OrderShipped("o-0"))
                    with anyio.move_on_after(1.0):
                        await connection.run(client_b.write)
            tasks.cancel_scope.cancel()
    resumed = client_b.events()
    assert [e.last_event_id for e in resumed] == [
        *(e.last_event_id for e in seen[2:]),
        bus_a.latest_id(),
    ]
    assert [e.data for e in resumed[:3]] == [e.data for e in seen[2:]]
    assert resumed[-1].type == "order-shipped"
    async with raw_client() as redis:
        await redis.delete([name])


async def test_streams_resume_on_an_instance_whose_reader_lags_sends_nothing_twice() -> None:
    """B's reader is held at entry 2 while entries 3-5 are already in Redis. A client
    resuming on B after entry 4 is replayed entry 5 from Redis; when B's reader catches
    up, entries 3-5 arrive live and must not reach that client again."""
    name = unique()
    gate = anyio.Event()
    client = Client()
    with anyio.fail_after(15):
        async with (
            make_bus("streams", name) as bus_a,
            make_bus("streams", name) as bus_b,
            Broadcaster(bus_b, events, heartbeat=None) as broadcaster_b,
        ):

            async def hold_at_second_order(event: OrderPlaced) -> None:
                if event.order_id == "o-2":
                    await gate.wait()

            bus_b.subscribe(OrderPlaced, hold_at_second_order)
            for n in range(1, 6):
                await bus_a.publish(OrderPlaced(f"o-{n}", n))
            await eventually(lambda: broadcaster_b.metrics().events_published == 2)
            async with raw_client() as redis:
                ids = [str(entry.identifier) for entry in await redis.xrange(name, "-", "+")]
            async with broadcaster_b.connect(last_event_id=ids[3]) as connection:
                gate.set()
                await eventually(lambda: bus_b.latest_id() == ids[4])
                await bus_a.publish(OrderShipped("o-1"))
                with anyio.move_on_after(0.5):
                    await connection.run(client.write)
    received = client.events()
    assert [e.type for e in received] == ["order-placed", "order-shipped"]
    assert received[0].last_event_id == ids[4]
    assert json.loads(received[0].data) == {"orderId": "o-5", "total": 5}
    async with raw_client() as redis:
        await redis.delete([name])


async def test_streams_replay_edge_cases() -> None:
    name = unique()
    with anyio.fail_after(15):
        async with make_bus("streams", name) as bus:
            assert bus.latest_id() == "0-0"
            assert await bus.replay("0-0") == []
            assert await bus.replay("not-an-id") is None
            assert await bus.replay("5") is None
            got = collect(bus)
            for n in range(3):
                await bus.publish(OrderPlaced(f"o-{n}", n))
            await eventually(lambda: len(got) == 3)
            ids = [str(entry_id) for _, entry_id in got]
            assert bus.latest_id() == ids[-1]
            assert await bus.replay(ids[-1]) == []
            assert await bus.replay(ids[0]) == [
                (ids[1], OrderPlaced("o-1", 1)),
                (ids[2], OrderPlaced("o-2", 2)),
            ]
            assert await bus.replay("0-0") == [(i, e) for e, i in got]
            newest_ms = int(str(ids[-1]).split("-")[0])
            assert await bus.replay(f"{newest_ms + 60_000}-0") is None  # from the future
        async with raw_client() as redis:
            await redis.delete([name])


async def test_streams_id_older_than_the_trimmed_stream_gets_a_reset() -> None:
    name = unique()
    with anyio.fail_after(20):
        async with make_bus("streams", name, maxlen=10) as bus:
            got = collect(bus)
            for n in range(250):  # MAXLEN ~ trims whole nodes (100 entries each)
                await bus.publish(OrderPlaced(f"o-{n}", n))
            await eventually(lambda: len(got) == 250)
            async with raw_client() as redis:
                assert await redis.xlen(name) < 250
            first_id = str(got[0][1])
            assert await bus.replay(first_id) is None
            assert await bus.replay("0-0") is None
            async with Broadcaster(bus, events, heartbeat=None) as broadcaster:
                client = Client()
                async with broadcaster.connect(last_event_id=first_id) as connection:
                    with anyio.move_on_after(0.5):
                        await connection.run(client.write)
        async with raw_client() as redis:
            await redis.delete([name])
    (reset,) = client.events()
    assert reset.type == "reset"
    assert json.loads(reset.data) == {"lastEventId": first_id, "reason": "not-in-history"}
    assert reset.last_event_id == got[-1][1]


# -- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_unknown_and_malformed_messages_are_skipped(
    mode: Mode, caplog: pytest.LogCaptureFixture
) -> None:
    name = unique()
    caplog.set_level(logging.WARNING, logger="ssebus.redis")
    with anyio.fail_after(15):
        async with make_bus(mode, name) as bus, raw_client() as redis:
            got = collect(bus)
            if mode == "pubsub":
                for body in [
                    "not json",
                    "[1, 2]",
                    json.dumps({"type": "os.system", "data": {"command": "rm -rf /"}}),
                    json.dumps({"type": "OrderPlaced", "data": {"unexpected": 1}}),
                    json.dumps({"type": "OrderPlaced", "data": "text"}),
                    json.dumps({"data": {}}),
                ]:
                    await redis.publish(name, body)
            else:
                for fields in [
                    {"type": "OrderPlaced", "data": "not json"},
                    {"type": "os.system", "data": json.dumps({"command": "rm -rf /"})},
                    {"type": "OrderPlaced", "data": json.dumps({"unexpected": 1})},
                    {"type": "OrderPlaced", "data": "[1]"},
                    {"other": "field"},
                ]:
                    await redis.xadd(name, fields)
            await bus.publish(OrderPlaced("o-1", 5))
            await eventually(lambda: len(got) == 1)
            if mode == "streams":
                entries = await redis.xrange(name)
                assert len(await bus.replay("0-0") or []) == 1
                await redis.delete([name])
    assert got[0][0] == OrderPlaced("o-1", 5)
    skipped = [r for r in caplog.records if r.name == "ssebus.redis" and "skipped" in r.message]
    assert len(skipped) >= (6 if mode == "pubsub" else 5)
    if mode == "streams":
        assert str(entries[0].identifier) in skipped[0].message
        assert name in skipped[0].message
    else:
        assert name in skipped[0].message


async def test_publishing_an_unregistered_type_raises_configuration_error() -> None:
    with anyio.fail_after(10):
        async with make_bus("streams", unique()) as bus:
            with pytest.raises(ConfigurationError, match="NotRegistered"):
                await bus.publish(NotRegistered(1))


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
        async with make_bus(mode, unique(), url, startup_timeout=0.2, publish_timeout=2) as bus:
            with pytest.raises(BusUnavailableError, match="cannot publish OrderPlaced"):
                await bus.publish(OrderPlaced("o-1", 1))
            if mode == "streams":
                assert await bus.replay("1-0") is None  # the client gets a reset


class RedisServer:
    """A private redis-server on a free port, that can be stopped and started again."""

    def __init__(self, directory: Path, *, persistent: bool) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.directory = directory
        self.persistent = persistent
        self.process: Process | None = None

    async def start(self) -> None:
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--dir", str(self.directory)]
        command += ["--appendonly", "yes" if self.persistent else "no"]
        self.process = await anyio.open_process(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        with anyio.fail_after(10):
            while not reachable(self.url):  # noqa: ASYNC110 - polling a port
                await anyio.sleep(0.05)

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()  # SIGTERM: with AOF on, the stream survives the restart
            with anyio.fail_after(10):
                await self.process.wait()
        self.process = None


@pytest.fixture
async def redis_server(tmp_path: Path) -> AsyncIterator[Callable[[bool], Awaitable[RedisServer]]]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not on PATH")
    servers: list[RedisServer] = []

    async def start(persistent: bool) -> RedisServer:
        server = RedisServer(tmp_path, persistent=persistent)
        servers.append(server)
        await server.start()
        return server

    yield start
    with anyio.CancelScope(shield=True):
        for server in servers:
            await server.stop()


async def publish_when_back(bus: RedisEventBus, event: object) -> None:
    with anyio.fail_after(10):
        while True:
            try:
                await bus.publish(event)
            except BusUnavailableError:
                await anyio.sleep(0.05)
            else:
                return


async def test_streams_listener_survives_a_redis_restart_without_loss_or_duplicates(
    redis_server: Callable[[bool], Awaitable[RedisServer]],
) -> None:
    server = await redis_server(True)
    name = unique()
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
    ids = [tuple(map(int, str(entry_id).split("-"))) for _, entry_id in got]
    assert ids == sorted(set(ids))
    assert listener.reconnects >= 1


async def test_pubsub_listener_resubscribes_after_a_redis_restart_and_counts_the_gap(
    redis_server: Callable[[bool], Awaitable[RedisServer]],
) -> None:
    server = await redis_server(False)
    name = unique()
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


@asynccontextmanager
async def instance(name: str, mode: Mode) -> AsyncIterator[Instance]:
    script = str(HERE / "redis_instance.py")
    process = await anyio.open_process([sys.executable, script, REDIS_URL, name, mode])
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
async def test_two_processes_receive_every_event_in_the_same_order(mode: Mode) -> None:
    name = unique()
    with anyio.fail_after(40):
        async with (
            instance(name, mode) as first,
            instance(name, mode) as second,
            make_bus(mode, name) as bus,
        ):
            for n in range(10):
                await bus.publish(OrderPlaced(f"o-{n}", n))
            received = [
                [json.loads(await p.readline()) for _ in range(10)] for p in (first, second)
            ]
        if mode == "streams":
            async with raw_client() as redis:
                entries = await redis.xrange(name)
                await redis.delete([name])
    if mode == "streams":
        assert received[0] == received[1]
    else:  # each process numbers its own frames
        assert [(r["type"], r["data"]) for r in received[0]] == [
            (r["type"], r["data"]) for r in received[1]
        ]
    assert [json.loads(line["data"])["orderId"] for line in received[0]] == [
        f"o-{n}" for n in range(10)
    ]
    if mode == "streams":
        assert [line["id"] for line in received[0]] == [str(e.identifier) for e in entries]
