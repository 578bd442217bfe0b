"""Review findings on the subscriptions / lagging-reader / fast-writer change.

Each test states a behaviour the library promises that a review found broken (now
fixed). The lagging-reader tests use ``LogBus``, an
in-memory ``ReplayableEventBus`` whose reader can be held behind its log (as a Redis
Streams reader of a slow instance is), so they need no Redis.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import pytest

from ssebus import (
    Broadcaster,
    EventMap,
    InMemoryClientRegistry,
    ServerSentEvent,
    SseConnection,
    Subscription,
)
from ssebus._bus import SubscriberTable, dispatch
from ssebus._metrics import Metrics
from ssebus._protocols import Handler, Unsubscribe
from ssebus.testing import EventStreamParser, parse_events

pytestmark = pytest.mark.anyio

GUARD = 5.0  # seconds; only a guard against hangs


@dataclass(frozen=True)
class Placed:
    order_id: str


def placed_events() -> EventMap:
    events = EventMap()
    events.add(Placed, "placed", lambda e: {"orderId": e.order_id})
    return events


class LogBus:
    """A ``ReplayableEventBus`` over an in-memory log, ids ``<n>-0`` like Redis stream ids.

    ``append`` writes to the log only; ``catch_up(n)`` lets this instance's reader deliver
    entries up to the n-th, so the reader can be held behind the log.
    """

    def __init__(self, *, strict_position: bool = False) -> None:
        self.log: list[tuple[str, object]] = []
        self.read = 0
        self.strict_position = strict_position
        self._subscribers = SubscriberTable()

    def subscribe(self, event_type: type[Any], handler: Handler[Any]) -> Unsubscribe:
        return self._subscribers.subscribe(event_type, handler)

    async def publish(self, event: object) -> None:
        self.append(event)

    def append(self, event: object) -> str:
        entry_id = f"{1000 + len(self.log)}-0"
        self.log.append((entry_id, event))
        return entry_id

    def ids(self) -> list[str]:
        return [entry_id for entry_id, _ in self.log]

    def latest_id(self) -> str:
        return self.log[self.read - 1][0] if self.read else "0-0"

    async def replay(self, after_id: str) -> Sequence[tuple[str, object]] | None:
        if after_id == "0-0":
            return list(self.log)
        if after_id not in self.ids():
            return None
        return self.log[self.ids().index(after_id) + 1 :]

    def position(self, event_id: str) -> tuple[int, ...] | None:
        ms, _, seq = event_id.partition("-")
        if self.strict_position:  # a stricter custom bus: raises on a foreign id
            return int(ms), int(seq)
        if not (ms.isdigit() and seq.isdigit()):
            return None
        return int(ms), int(seq)

    async def catch_up(self, upto: int) -> None:
        while self.read < upto:
            entry_id, event = self.log[self.read]
            self.read += 1
            handlers = self._subscribers.handlers_for(type(event))
            await dispatch(handlers, event, None, event_id=entry_id)


class Client:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    async def write(self, data: bytes) -> None:
        self.writes.append(data)

    @property
    def stream(self) -> bytes:
        return b"".join(self.writes)

    def placed(self) -> list[str]:
        return [
            json.loads(e.data)["orderId"] for e in parse_events(self.stream) if e.type == "placed"
        ]

    def last_event_id(self) -> str:
        parser = EventStreamParser()
        parser.feed(self.stream)
        return parser.last_event_id


async def wait_until(condition: Callable[[], bool]) -> None:
    with anyio.fail_after(GUARD):
        while not condition():  # noqa: ASYNC110
            await anyio.sleep(0.001)


def lagging_log() -> LogBus:
    """Entries o-1 .. o-5 in the log; the instance's reader will be held at o-2."""
    bus = LogBus()
    for n in range(1, 6):
        bus.append(Placed(f"o-{n}"))
    return bus


# --- resume on an instance whose reader lags ---------------------------------------------


async def test_an_event_ping_never_moves_a_resumed_clients_id_backwards() -> None:
    bus = lagging_log()
    ids = bus.ids()
    client = Client()
    with anyio.fail_after(GUARD):
        async with Broadcaster(bus, placed_events(), heartbeat=0.02, heartbeat_style="event") as b:
            await bus.catch_up(2)  # this instance has broadcast o-1 and o-2 only
            async with b.connect(last_event_id=ids[3]) as connection:  # client has o-1..o-4
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(connection.run, client.write)
                    await wait_until(lambda: b"ping" in client.stream)  # a ping went out
                    connection.close("done")
    assert client.placed() == ["o-5"]  # replayed from the log
    # Resuming from here must not bring o-3 .. o-5 again.
    assert client.last_event_id() == ids[4]


async def test_a_broadcast_during_the_lag_does_not_let_old_entries_through() -> None:
    bus = lagging_log()
    ids = bus.ids()
    client = Client()
    with anyio.fail_after(GUARD):
        async with Broadcaster(bus, placed_events(), heartbeat=None) as b:
            await bus.catch_up(2)
            async with b.connect(last_event_id=ids[3]) as connection:
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(connection.run, client.write)
                    await wait_until(lambda: client.placed() == ["o-5"])
                    b.broadcast(ServerSentEvent(data="maintenance at noon", event="notice"))
                    bus.append(Placed("o-6"))
                    await bus.catch_up(6)  # o-3, o-4, o-5 arrive late, then o-6 is new
                    await wait_until(lambda: "o-6" in client.placed())
                    connection.close("done")
    assert client.placed() == ["o-5", "o-6"]


async def test_a_failing_position_never_disturbs_the_fan_out() -> None:
    bus = LogBus(strict_position=True)
    for n in range(1, 6):
        bus.append(Placed(f"o-{n}"))
    ids = bus.ids()
    resumed, other = Client(), Client()
    with anyio.fail_after(GUARD):
        async with Broadcaster(bus, placed_events(), heartbeat=None) as b:
            await bus.catch_up(5)
            async with (
                b.connect(last_event_id=ids[3]) as first,
                b.connect() as second,
            ):
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(first.run, resumed.write)
                    tasks.start_soon(second.run, other.write)
                    await wait_until(lambda: resumed.placed() == ["o-5"])
                    try:
                        b.broadcast(ServerSentEvent(data="hello", event="notice"))
                        await wait_until(lambda: b"event: notice" in other.stream)
                    finally:
                        first.close("done")
                        second.close("done")


# --- the registry index ------------------------------------------------------------------


def test_a_connections_subscription_is_fixed_so_the_registry_index_stays_true() -> None:
    registry = InMemoryClientRegistry()
    connection = SseConnection(
        "c-1",
        max_queue=4,
        write_timeout=None,
        metrics=Metrics(),
        subscription=Subscription("acme", topics=["order:1"]),
    )
    registry.add(connection)
    with pytest.raises(AttributeError):
        connection.subscription = Subscription("acme")  # type: ignore[misc]
    registry.remove("c-1")
    assert registry.select("acme", {"order:1"}) == ()
    assert registry.select(None, set()) == ()
