"""A gap the bus detects reaches every client it may have affected as a ``reset``, and the
metrics count the events lost; delivery goes on after it."""

from __future__ import annotations

import json
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from buses import LossyBus
from clients import GUARD, Client, join, leave, wait_until
from tenants import Noted, noted_events

from ssebus import Broadcaster, BusGap, InMemoryHistory, Subscription

pytestmark = pytest.mark.anyio


def noted(client: Client) -> list[int]:
    return [json.loads(e.data)["n"] for e in client.events() if e.type == "noted"]


async def test_a_gap_resets_every_client_and_counts_the_events_lost(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[tuple[str, float]] = []
    bus = LossyBus()
    with anyio.fail_after(GUARD):
        async with (
            anyio.create_task_group() as tasks,
            Broadcaster(
                bus, noted_events(), heartbeat=None, metrics_hook=lambda n, v: seen.append((n, v))
            ) as broadcaster,
        ):
            everyone = await join(tasks, broadcaster)
            tenant = await join(tasks, broadcaster, subscription=Subscription(tenant="a"))
            await bus.publish(Noted(1))
            await bus.lose(104)
            await bus.publish(Noted(2))
            for client in (everyone, tenant):
                await wait_until(lambda c=client: noted(c) == [1, 2])  # type: ignore[misc]
                types = [e.type for e in client.events()]
                assert types == ["noted", "reset", "noted"]
                reset = client.events()[1]
                assert json.loads(reset.data)["reason"] == "events-lost"
            metrics = broadcaster.metrics()
            assert (metrics.gaps, metrics.events_lost, metrics.resets) == (1, 104, 2)
            assert ("events_lost", 104) in seen
    assert not [r for r in caplog.records if r.exc_info]


async def test_a_client_that_resumes_from_before_a_gap_is_reset_not_replayed_past_it() -> None:
    bus = LossyBus()
    with anyio.fail_after(GUARD):
        async with (
            anyio.create_task_group() as tasks,
            Broadcaster(bus, noted_events(), heartbeat=None, history=InMemoryHistory()) as b,
        ):
            client = await join(tasks, b)
            await bus.publish(Noted(1))
            await wait_until(lambda: noted(client) == [1])
            await leave(client)
            await bus.publish(Noted(2))
            await bus.lose(3)
            await bus.publish(Noted(3))
            back = await join(tasks, b, last_event_id=client.last_event_id())
            await wait_until(lambda: bool(back.events()))
            assert [e.type for e in back.events()] == ["reset"]


async def test_a_gap_during_a_catch_up_ends_it_with_a_reset() -> None:
    bus = LossyBus()
    gate = anyio.Event()

    class SlowHistory(InMemoryHistory):
        async def since(self, *args: Any, **kwargs: Any) -> Any:
            await gate.wait()
            return await super().since(*args, **kwargs)

    with anyio.fail_after(GUARD):
        async with (
            anyio.create_task_group() as tasks,
            Broadcaster(bus, noted_events(), heartbeat=None, history=SlowHistory()) as b,
        ):
            first = await join(tasks, b)
            await bus.publish(Noted(1))
            await wait_until(lambda: noted(first) == [1])
            await leave(first)
            await bus.publish(Noted(2))
            gate = anyio.Event()
            back = await join(tasks, b, last_event_id=first.last_event_id())
            await bus.lose(5)
            gate.set()
            await wait_until(lambda: bool(back.events()))
            await bus.publish(Noted(3))
            await wait_until(lambda: noted(back)[-1:] == [3])
            assert [e.type for e in back.events()] == ["reset", "noted"]
            assert json.loads(back.events()[0].data)["reason"] == "events-lost"


async def test_a_failing_gap_handler_is_logged_in_one_line_and_the_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = LossyBus()
    told: list[BusGap] = []

    async def broken(gap: BusGap) -> None:
        raise RuntimeError("boom")

    async def listening(gap: BusGap) -> None:
        told.append(gap)

    bus.on_gap(broken)
    bus.on_gap(listening)
    await bus.lose(1)  # never raises to the bus
    assert told == [BusGap(1, "resubscribed")]
    failures = [r for r in caplog.records if "boom" in r.getMessage()]
    assert len(failures) == 1
    assert failures[0].exc_info is None


async def test_a_gap_while_the_last_page_of_a_replay_is_built_still_resets_the_client() -> None:
    # Replay work yields between two frames of a page (ssebus._pace): a gap reported then,
    # in the page that ends the replay, must not let the client go live past it silently.
    bus = LossyBus()
    with anyio.fail_after(GUARD):
        async with (
            anyio.create_task_group() as tasks,
            Broadcaster(
                bus, noted_events(), heartbeat=None, history=InMemoryHistory(), replay_page=50
            ) as b,
        ):
            pacer = b._replay.pacer
            pacer.budget = 0.0  # a slice per frame: a yield between every two of them
            client = await join(tasks, b)
            await wait_until(lambda: bool(client.writes))
            await leave(client)
            for n in range(80):
                await bus.publish(Noted(n))
            before = pacer.slices
            back = await join(tasks, b, last_event_id=client.last_event_id())
            while pacer.slices - before < 60:  # in the last page: frames 50 to 79
                await anyio.lowlevel.checkpoint()
            assert back.connection is not None
            assert back.connection.catching_up
            await bus.lose(5)
            await wait_until(lambda: any(e.type == "reset" for e in back.events()))
            assert not back.connection.catching_up
            await bus.publish(Noted(99))
            await wait_until(lambda: noted(back)[-1:] == [99])
            assert [e.type for e in back.events()][-2:] == ["reset", "noted"]
            assert noted(back) == [*range(len(noted(back)) - 1), 99]  # in order, no repeat
