"""``Broadcaster(write_delay=)``: a busy stream writes at most once per delay (seconds, or
``"auto"``: a few turns of the event loop), so frames published meanwhile share one write;
an idle stream still writes at once."""

from __future__ import annotations

import time

import anyio
import anyio.lowlevel
import httpx
import pytest
from apps import RETRY_MS
from clients import join, leave, running, wait_until
from httpx_sse import aconnect_sse
from servers import SERVERS, httpx_sse_prelude, serve_app

from ssebus import Broadcaster, ConfigurationError, EventMap, InMemoryEventBus, ServerSentEvent
from ssebus._broadcaster import AUTO_WRITE_TURNS

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


async def publish_each_turn(broadcaster: Broadcaster, count: int) -> None:
    """One event per turn of the event loop."""
    for n in range(count):
        broadcaster.broadcast(ServerSentEvent(data=str(n)))
        await anyio.lowlevel.checkpoint()


async def test_auto_frames_published_one_per_turn_share_writes() -> None:
    async with running(EventMap(), write_delay="auto") as (_, broadcaster, tasks):
        client = await join(tasks, broadcaster)
        await wait_until(lambda: client.frames() >= 1)
        before = len(client.writes)
        await publish_each_turn(broadcaster, 40)
        await wait_until(lambda: len(client.events()) == 40)
        writes = len(client.writes) - before
    assert writes <= 40 / (AUTO_WRITE_TURNS - 1), f"{writes} writes for 40 frames"
    assert [event.data for event in client.events()] == [str(n) for n in range(40)]


async def test_auto_holds_a_frame_of_a_busy_stream_only_a_few_turns() -> None:
    async with running(EventMap(), write_delay="auto") as (_, broadcaster, tasks):
        client = await join(tasks, broadcaster)
        await wait_until(lambda: client.frames() >= 1)
        lag = []
        for n in range(30):
            broadcaster.broadcast(ServerSentEvent(data=str(n)))
            turns = 0
            while len(client.events()) <= n:
                await anyio.lowlevel.checkpoint()
                turns += 1
            lag.append(turns)
    assert max(lag) <= AUTO_WRITE_TURNS + 2, lag


async def test_auto_an_idle_stream_writes_its_next_frame_in_the_next_turn() -> None:
    async with running(EventMap(), write_delay="auto") as (_, broadcaster, tasks):
        client = await join(tasks, broadcaster)
        await wait_until(lambda: client.frames() >= 1)
        await anyio.sleep(0.05)  # idle: nothing written for many turns
        broadcaster.broadcast(ServerSentEvent(data="now"))
        turns = 0
        while not client.events():
            await anyio.lowlevel.checkpoint()
            turns += 1
    assert turns <= 2


async def test_auto_streams_leaving_while_they_wait_their_turns_disturb_no_other() -> None:
    async with running(EventMap(), write_delay="auto") as (_, broadcaster, tasks):
        clients = [await join(tasks, broadcaster) for _ in range(10)]
        await wait_until(lambda: all(client.frames() >= 1 for client in clients))
        broadcaster.broadcast(ServerSentEvent(data="0"))
        await anyio.lowlevel.checkpoint()  # each writes it
        broadcaster.broadcast(ServerSentEvent(data="1"))
        await anyio.lowlevel.checkpoint()  # each now waits out its turns
        staying, leaving = clients[::2], clients[1::2]
        for client in leaving:
            await leave(client)
        for n in range(2, 10):
            broadcaster.broadcast(ServerSentEvent(data=str(n)))
            await anyio.lowlevel.checkpoint()
        await wait_until(lambda: all(len(client.events()) == 10 for client in staying))
    for client in staying:
        assert [event.data for event in client.events()] == [str(n) for n in range(10)]


@pytest.mark.parametrize("value", [-0.001, 1.5, "5ms", "Auto", True])
async def test_a_write_delay_out_of_range_is_refused_naming_it(value: object) -> None:
    with pytest.raises(ConfigurationError, match="write_delay"):
        Broadcaster(InMemoryEventBus(), EventMap(), write_delay=value)  # type: ignore[arg-type]


@pytest.mark.parametrize("server_name", SERVERS)
async def test_auto_over_a_real_server_delivers_every_event_in_order(server_name: str) -> None:
    env = {"SSEBUS_TEST_WRITE_DELAY": "auto", "SSEBUS_TEST_HEARTBEAT": "off"}
    with serve_app(server_name, "starlette_app", env=env) as server:
        async with httpx.AsyncClient(timeout=10) as http:
            async with (
                aconnect_sse(http, "GET", f"{server.url}/events") as first,
                aconnect_sse(http, "GET", f"{server.url}/events") as second,
            ):
                streams = [first.aiter_sse(), second.aiter_sse()]
                with anyio.fail_after(10):
                    for events in streams:
                        await httpx_sse_prelude(events, RETRY_MS)
                    response = await http.post(f"{server.url}/burst", json={"count": 300})
                    response.raise_for_status()
                    received = [
                        [(await events.__anext__()).data for _ in range(300)] for events in streams
                    ]
    assert received == [[str(n) for n in range(300)]] * 2
