"""The hand-over from replay to live: a resuming client gets what it missed and then the
live frames, with no gap and no duplicate, and its last id never points past what it got
nor back before it (the rules are in ``ssebus._resume``).

The tests on a lagging reader use ``LogBus``, an in-memory ``ReplayableEventBus`` whose
reader can be held behind its log (as a Redis Streams reader of a slow instance is), so
they need no Redis: a client that got events from a faster instance resumes here, where
the replay comes from the log and the same events then arrive live, late.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import anyio
import pytest
from clients import GUARD, Client, join, running, wait_until

from ssebus import (
    Broadcaster,
    EventBusBase,
    EventMap,
    ServerSentEvent,
)
from ssebus._position import PositionCodec
from ssebus.testing import parse_events

pytestmark = pytest.mark.anyio

SECRET = b"a test secret of 32 bytes, fixed"


@dataclass(frozen=True)
class Placed:
    order_id: str


def placed_events() -> EventMap:
    events = EventMap()
    events.add(Placed, "placed", lambda e: {"orderId": e.order_id})
    return events


class LogBus(EventBusBase):
    """A ``ReplayableEventBus`` over an in-memory log; the n-th entry has position n.

    ``append`` writes to the log only; ``catch_up(n)`` lets this instance's reader deliver
    entries up to the n-th, so the reader can be held behind the log. With
    ``failing_replay`` its ``replay`` raises (Redis unreachable, say).
    """

    def __init__(self, *, failing_replay: bool = False) -> None:
        super().__init__()
        self.log: list[object] = []
        self.read = 0
        self.failing_replay = failing_replay
        self._partition: Callable[[object], str | None] = lambda event: None

    async def publish(self, event: object, *, idempotency_key: str | None = None) -> None:
        self.append(event)

    def append(self, event: object) -> int:
        self.log.append(event)
        return len(self.log)

    def partition_by(self, key: Callable[[object], str | None]) -> None:
        self._partition = key

    def latest_position(self) -> int:
        return self.read

    def position_secret(self) -> bytes:
        return SECRET

    async def replay(
        self, partitions: Collection[str | None], after: int, limit: int
    ) -> Sequence[tuple[int, object]] | None:
        if self.failing_replay:
            raise ConnectionError("the log is unreachable")
        entries = [
            (tick, event)
            for tick, event in enumerate(self.log, start=1)
            if tick > after and self._partition(event) in partitions
        ]
        return entries[:limit]

    async def catch_up(self, upto: int) -> None:
        while self.read < upto:
            self.read += 1
            await self.deliver(self.log[self.read - 1], self.read)


def token(tick: int) -> str:
    """The id of position ``tick`` for a client without a tenant, on every instance."""
    return PositionCodec(SECRET).token(None, tick)


def placed(client: Client) -> list[str]:
    """The order ids of the ``placed`` events ``client`` received, in order."""
    return [json.loads(e.data)["orderId"] for e in client.events() if e.type == "placed"]


def lagging_log(**options: bool) -> LogBus:
    """Entries o-1 .. o-5 in the log; the instance's reader will be held at o-2."""
    bus = LogBus(**options)
    for n in range(1, 6):
        bus.append(Placed(f"o-{n}"))
    return bus


# --- resume on an instance whose reader lags ---------------------------------------------


async def test_an_event_ping_never_moves_a_resumed_clients_id_backwards() -> None:
    bus = lagging_log()
    client = Client()
    with anyio.fail_after(GUARD):
        async with Broadcaster(bus, placed_events(), heartbeat=0.02, heartbeat_style="event") as b:
            await bus.catch_up(2)  # this instance has broadcast o-1 and o-2 only
            async with b.connect(last_event_id=token(4)) as connection:  # client has o-1..o-4
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(connection.run, client.write)
                    await wait_until(lambda: client.stream.count(b"event: ping") >= 2)
                    connection.close("done")
    assert placed(client) == ["o-5"]  # replayed from the log
    # Resuming from here must not bring o-3 .. o-5 again.
    assert client.last_event_id() == token(5)


async def test_a_broadcast_during_the_lag_does_not_let_old_entries_through() -> None:
    bus = lagging_log()
    client = Client()
    with anyio.fail_after(GUARD):
        async with Broadcaster(bus, placed_events(), heartbeat=None) as b:
            await bus.catch_up(2)
            async with b.connect(last_event_id=token(4)) as connection:
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(connection.run, client.write)
                    await wait_until(lambda: placed(client) == ["o-5"])
                    b.broadcast(ServerSentEvent(data="maintenance at noon", event="notice"))
                    await wait_until(lambda: b"maintenance at noon" in client.stream)
                    bus.append(Placed("o-6"))
                    await bus.catch_up(6)  # o-3, o-4, o-5 arrive late, then o-6 is new
                    await wait_until(lambda: "o-6" in placed(client))
                    connection.close("done")
    assert placed(client) == ["o-5", "o-6"]
    assert client.stream.count(b"maintenance at noon") == 1


async def test_a_broadcast_during_the_lag_never_moves_a_resumed_clients_id_backwards() -> None:
    bus = lagging_log()
    client = Client()
    with anyio.fail_after(GUARD):
        async with Broadcaster(bus, placed_events(), heartbeat=None) as b:
            await bus.catch_up(2)  # this instance is at o-2, the client already has o-5
            async with b.connect(last_event_id=token(4)) as connection:
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(connection.run, client.write)
                    await wait_until(lambda: placed(client) == ["o-5"])
                    b.broadcast(ServerSentEvent(data="maintenance at noon", event="notice"))
                    await wait_until(lambda: b"maintenance at noon" in client.stream)
                    connection.close("done")
    # Resuming from the notice's id must not bring o-3 .. o-5 again.
    assert client.last_event_id() == token(5)


async def test_a_failing_replay_resets_only_the_resuming_client(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="ssebus")
    bus = lagging_log(failing_replay=True)
    resumed, other = Client(), Client()
    with anyio.fail_after(GUARD):
        async with Broadcaster(bus, placed_events(), heartbeat=None) as b:
            await bus.catch_up(2)
            async with (
                b.connect(last_event_id=token(4)) as first,
                b.connect() as second,
            ):
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(first.run, resumed.write)
                    tasks.start_soon(second.run, other.write)
                    await wait_until(lambda: b"event: reset" in resumed.stream)
                    b.broadcast(ServerSentEvent(data="hello", event="notice"))
                    await bus.catch_up(5)
                    await wait_until(lambda: placed(other) == ["o-3", "o-4", "o-5"])
                    await wait_until(lambda: b"event: notice" in resumed.stream)
                    first.close("done")
                    second.close("done")
            metrics = b.metrics()
    [reset] = [e for e in parse_events(resumed.stream) if e.type == "reset"]
    assert json.loads(reset.data) == {"lastEventId": token(4), "reason": "not-in-history"}
    assert b"event: notice" in other.stream
    assert b"event: reset" not in other.stream
    assert metrics.resets == 1
    assert any("replay" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


# --- shutdown while a client catches up --------------------------------------------------


@dataclass(frozen=True)
class Shipped:
    order_id: str


async def test_a_client_still_catching_up_at_shutdown_keeps_the_id_of_what_it_got() -> None:
    """Closed while held, a client drops what it held (rule 7); its last id must then be
    that of the last event it got, so that it resumes with the events it did not get."""
    events = EventMap()
    events.add(Shipped, "placed", lambda e: {"orderId": e.order_id})
    client = Client()
    async with running(events) as (_, broadcaster, tasks):
        seen = broadcaster.publish(Shipped("o-1"))
        got = broadcaster.publish(Shipped("o-2"))
        assert seen is not None
        assert seen.id is not None
        assert got is not None
        await join(tasks, broadcaster, client, last_event_id=seen.id)
        late = broadcaster.publish(Shipped("o-3"))  # held: the replay is still running
        assert late is not None
        ids = {"o-1": seen.id, "o-2": got.id, "o-3": late.id}
        # The broadcaster shuts down now, with the replay of o-2 under way.
    got_ids = placed(client)
    assert got_ids in (["o-2"], ["o-2", "o-3"])
    assert client.last_event_id() == ids[got_ids[-1]]
