"""A replay is paged, capped and bounded like live delivery: resuming clients never starve
the others, never pin more than their bound, and a stalled one is evicted like any other."""

from __future__ import annotations

import itertools
import json
from collections.abc import Collection, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import anyio.to_thread
import pytest
from clients import GUARD, Client, join, leave, running, wait_until
from tenants import Noted, noted_events, numbers

from ssebus import Broadcaster, Frame, InMemoryEventBus, InMemoryHistory

pytestmark = pytest.mark.anyio


class CountingHistory(InMemoryHistory):
    """An ``InMemoryHistory`` that records the limit of every page asked of it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits: list[int] = []

    async def since(
        self, partitions: Collection[str | None], after: int, limit: int
    ) -> Sequence[Frame] | None:
        self.limits.append(limit)
        return await super().since(partitions, after, limit)


def pipeline(
    history: InMemoryHistory | None = None, **options: Any
) -> AbstractAsyncContextManager[tuple[InMemoryEventBus, Broadcaster, anyio.abc.TaskGroup]]:
    """``running`` with the noted events, on ``history``; long replays get twice the guard."""
    return running(noted_events(), guard=GUARD * 2, history=history, **options)


async def gone_quiet(tasks: anyio.abc.TaskGroup, broadcaster: Broadcaster) -> str:
    """The position of a client that connected and left before what comes next."""
    client = await join(tasks, broadcaster)
    await wait_until(lambda: bool(client.writes))
    await leave(client)
    return client.last_event_id()


async def test_a_long_replay_is_read_in_pages_and_arrives_whole_and_in_order() -> None:
    history = CountingHistory(max_events=10_000)
    async with pipeline(history, replay_page=50) as (bus, broadcaster, tasks):
        position = await gone_quiet(tasks, broadcaster)
        for n in range(2_000):
            await bus.publish(Noted(n))
        client = await join(tasks, broadcaster, last_event_id=position)
        await wait_until(lambda: len(numbers(client)) == 2_000)
        assert numbers(client) == list(range(2_000))
        assert len(history.limits) >= 2_000 // 50
        assert set(history.limits) == {50}


def received(client: Client) -> int:
    """How many events arrived (cheaper than parsing while a replay is under way)."""
    return sum(data.count(b"event: noted\n") for data in client.writes)


async def test_live_delivery_goes_on_while_twenty_clients_replay() -> None:
    async with pipeline(InMemoryHistory(max_events=10_000)) as (bus, broadcaster, tasks):
        position = await gone_quiet(tasks, broadcaster)
        for n in range(5_000):
            await bus.publish(Noted(n))
        live = await join(tasks, broadcaster)
        resuming = [await join(tasks, broadcaster, last_event_id=position) for _ in range(20)]
        await wait_until(lambda: any(received(c) for c in resuming))
        await bus.publish(Noted(-1))
        await wait_until(lambda: received(live) == 1)
        assert not all(received(c) == 5_001 for c in resuming), (
            "the live client waited for every replay to finish"
        )
        await wait_until(lambda: all(received(c) == 5_001 for c in resuming))
        assert all(numbers(c) == [*range(5_000), -1] for c in resuming)


async def test_a_replay_longer_than_max_replay_is_a_reset() -> None:
    async with pipeline(InMemoryHistory(max_events=10_000), max_replay=500) as (
        bus,
        broadcaster,
        tasks,
    ):
        position = await gone_quiet(tasks, broadcaster)
        for n in range(2_000):
            await bus.publish(Noted(n))
        client = await join(tasks, broadcaster, last_event_id=position)
        await wait_until(lambda: any(e.type == "reset" for e in client.events()))
        reset = next(e for e in client.events() if e.type == "reset")
        assert json.loads(reset.data) == {"lastEventId": position, "reason": "replay-limit"}
        assert reset.last_event_id == broadcaster.position_id()
        await bus.publish(Noted(-1))
        await wait_until(lambda: numbers(client)[-1:] == [-1])
        assert broadcaster.metrics().resets == 1


@pytest.mark.parametrize("missed", [499, 500, 501])
async def test_max_replay_is_the_most_a_client_is_replayed_before_a_reset(missed: int) -> None:
    async with pipeline(InMemoryHistory(max_events=10_000), max_replay=500, replay_page=64) as (
        bus,
        broadcaster,
        tasks,
    ):
        position = await gone_quiet(tasks, broadcaster)
        for n in range(missed):
            await bus.publish(Noted(n))
        client = await join(tasks, broadcaster, last_event_id=position)
        await wait_until(lambda: client.events() != [] and client.connection is not None)
        await wait_until(lambda: not client.connection.catching_up)  # type: ignore[union-attr]
        await bus.publish(Noted(-1))
        await wait_until(lambda: numbers(client)[-1:] == [-1])
        if missed <= 500:
            assert numbers(client) == [*range(missed), -1]
            assert broadcaster.metrics().resets == 0
        else:  # what fitted in the cap, then the reset, then live again
            assert [e.type for e in client.events()][-2:] == ["reset", "noted"]
            assert numbers(client) == [*range(500), -1]


async def test_a_stalled_client_resuming_is_evicted_by_the_write_timeout_without_traffic() -> None:
    async with pipeline(InMemoryHistory(max_events=10_000), max_queue=16, write_timeout=0.2) as (
        bus,
        broadcaster,
        tasks,
    ):
        position = await gone_quiet(tasks, broadcaster)
        for n in range(5_000):
            await bus.publish(Noted(n))
        stalled = await join(tasks, broadcaster, client=Client(stall=True), last_event_id=position)
        with anyio.fail_after(2.0):
            await stalled.finished.wait()
        assert stalled.connection is not None
        assert "timed out" in (stalled.connection.close_reason or "")
        assert broadcaster.metrics().write_errors == 1


async def test_what_a_resuming_client_holds_stays_within_its_bound() -> None:
    async with pipeline(InMemoryHistory(max_events=10_000), max_queue=16, write_timeout=None) as (
        bus,
        broadcaster,
        tasks,
    ):
        position = await gone_quiet(tasks, broadcaster)
        for n in range(1_000):
            await bus.publish(Noted(n))
        stalled = await join(tasks, broadcaster, client=Client(stall=True), last_event_id=position)
        connection = stalled.connection
        assert connection is not None
        for n in range(1_000, 1_200):  # live traffic while its replay is stuck
            await bus.publish(Noted(n))
            assert len(connection.outbox) <= 16
        assert connection.catching_up
        assert not connection.closed


async def test_concurrent_replays_share_one_slice_of_work_between_two_loop_turns() -> None:
    # Replays work at a lower priority than everything else the loop runs: however many
    # clients resume at once, a task that yields every turn sees at most one slice of
    # replay work between two of its turns (counted in slices, never timed).
    async with pipeline(InMemoryHistory(max_events=10_000)) as (bus, broadcaster, tasks):
        pacer = broadcaster._replay.pacer
        pacer.budget = 0.0  # every frame is a slice of its own
        position = await gone_quiet(tasks, broadcaster)
        for n in range(300):
            await bus.publish(Noted(n))
        seen: list[int] = []
        ticking = True

        async def ticker() -> None:
            while ticking:
                seen.append(pacer.slices)
                await anyio.lowlevel.checkpoint()

        tasks.start_soon(ticker)
        before = pacer.slices
        resuming = [await join(tasks, broadcaster, last_event_id=position) for _ in range(8)]
        await bus.publish(Noted(-1))  # live, while they catch up: held, then given once
        await wait_until(lambda: all(received(c) == 301 for c in resuming))
        ticking = False
        assert all(numbers(c) == [*range(300), -1] for c in resuming)
        assert pacer.slices - before >= 8 * 300
        assert max(b - a for a, b in itertools.pairwise(seen)) == 1
        assert pacer.holder is None


async def test_a_client_leaving_mid_replay_gives_its_turn_to_the_others() -> None:
    async with pipeline(InMemoryHistory(max_events=10_000)) as (bus, broadcaster, tasks):
        pacer = broadcaster._replay.pacer
        pacer.budget = 0.0
        position = await gone_quiet(tasks, broadcaster)
        for n in range(300):
            await bus.publish(Noted(n))
        resuming = [await join(tasks, broadcaster, last_event_id=position) for _ in range(6)]
        await wait_until(lambda: pacer.slices > 50)
        for client in resuming[::2]:  # holding the slice, waiting for it, or not yet asked
            await leave(client)
        staying = resuming[1::2]
        await wait_until(lambda: all(received(c) == 300 for c in staying))
        assert all(numbers(c) == list(range(300)) for c in staying)
        await wait_until(lambda: pacer.holder is None)


async def test_each_thread_paces_the_replays_of_its_own_event_loop() -> None:
    # Loop turns are per loop: a server's thread workers (each with a loop of its own)
    # must not wait on, or wake, another loop's replays.
    async with pipeline() as (_, broadcaster, _tasks):
        here = broadcaster._replay.pacer
        there = await anyio.to_thread.run_sync(lambda: broadcaster._replay.pacer)
        assert broadcaster._replay.pacer is here
        assert there is not here
