"""History is kept per tenant: one tenant's burst never shortens another's resume window,
while a global budget still bounds memory."""

from __future__ import annotations

import json

import pytest
from clients import join, leave, running, wait_until
from tenants import Noted, noted_events

from ssebus import Frame, InMemoryHistory, Subscription

pytestmark = pytest.mark.anyio


async def test_a_tenants_burst_never_pushes_out_another_tenants_missed_events() -> None:
    b_only = Subscription(tenant="b")
    async with running(noted_events()) as (bus, broadcaster, tasks):
        client = await join(tasks, broadcaster, subscription=b_only)
        await wait_until(lambda: bool(client.writes))
        await leave(client)
        await bus.publish(Noted(1, tenant="b"))
        await bus.publish(Noted(2, tenant="b"))
        for n in range(5_000):  # five times the default history, all tenant a
            await bus.publish(Noted(100 + n, tenant="a"))
        back = await join(
            tasks, broadcaster, last_event_id=client.last_event_id(), subscription=b_only
        )
        await wait_until(lambda: len(back.events()) >= 2)
        assert [(e.type, json.loads(e.data)["n"]) for e in back.events()] == [
            ("noted", 1),
            ("noted", 2),
        ]


async def test_the_tenantless_events_are_a_partition_of_their_own() -> None:
    history = InMemoryHistory(max_events=3)
    for tick in range(1, 11):
        history.append(Frame(f"id{tick}", "e", b"data: x\n\n", tenant="a", tick=tick))
    history.append(Frame("g", "e", b"data: g\n\n", tenant=None, tick=11))
    assert [f.tick for f in await history.since([None], 0, 10) or []] == [11]
    assert await history.since(["a", None], 0, 10) is None  # a's window starts at 8
    assert [f.tick for f in await history.since(["a", None], 7, 10) or []] == [8, 9, 10, 11]


async def test_the_global_budget_takes_from_the_largest_partition_first() -> None:
    history = InMemoryHistory(max_events=1_000, max_total=100)
    history.append(Frame("q", "e", b"data: q\n\n", tenant="quiet", tick=1))
    for tick in range(2, 500):
        history.append(Frame(f"n{tick}", "e", b"data: n\n\n", tenant="noisy", tick=tick))
    assert len(history) == 100
    assert [f.tick for f in await history.since(["quiet"], 0, 10) or []] == [1]
    assert await history.since(["noisy"], 1, 10) is None
