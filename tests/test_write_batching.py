"""``Broadcaster(write_delay=)``: a busy stream writes at most once per delay, so frames
published meanwhile share one write; an idle stream still writes at once."""

from __future__ import annotations

import time

import anyio
import pytest
from clients import join, running, wait_until

from ssebus import Broadcaster, ConfigurationError, EventMap, InMemoryEventBus, ServerSentEvent

pytestmark = pytest.mark.anyio

DELAY = 0.2


async def publish_one_per_turn(broadcaster: Broadcaster, count: int) -> None:
    """One event, then a pause that lets the writer run (well under ``DELAY`` in all)."""
    for n in range(count):
        broadcaster.broadcast(ServerSentEvent(data=str(n)))
        await anyio.sleep(0.001)


async def test_frames_published_one_per_turn_share_few_writes_with_a_delay() -> None:
    async with running(EventMap(), write_delay=DELAY) as (_, broadcaster, tasks):
        client = await join(tasks, broadcaster)
        await wait_until(lambda: client.frames() >= 1)  # the position marker
        before = len(client.writes)
        await publish_one_per_turn(broadcaster, 20)
        await wait_until(lambda: len(client.events()) == 20)
        writes = len(client.writes) - before
    assert writes <= 3, f"{writes} writes for 20 frames"
    assert [event.data for event in client.events()] == [str(n) for n in range(20)]


async def test_without_a_delay_each_turn_writes_what_it_finds() -> None:
    async with running(EventMap(), write_delay=0) as (_, broadcaster, tasks):
        client = await join(tasks, broadcaster)
        await wait_until(lambda: client.frames() >= 1)
        before = len(client.writes)
        await publish_one_per_turn(broadcaster, 20)
        await wait_until(lambda: len(client.events()) == 20)
        assert len(client.writes) - before == 20


async def test_an_idle_stream_writes_its_next_frame_at_once() -> None:
    async with running(EventMap(), write_delay=1.0) as (_, broadcaster, tasks):
        client = await join(tasks, broadcaster)
        await wait_until(lambda: client.frames() >= 1)
        await anyio.sleep(1.0)  # idle for longer than the delay
        sent = time.monotonic()
        broadcaster.broadcast(ServerSentEvent(data="now"))
        await wait_until(lambda: len(client.events()) == 1)
        assert time.monotonic() - sent < 0.5  # not held for the 1 s delay


@pytest.mark.parametrize("value", [-0.001, 1.5, "5ms", True])
async def test_a_write_delay_out_of_range_is_refused_naming_it(value: object) -> None:
    with pytest.raises(ConfigurationError, match="write_delay"):
        Broadcaster(InMemoryEventBus(), EventMap(), write_delay=value)  # type: ignore[arg-type]
