"""Every stream hands its client a position, and no id crosses tenants.

A client's ``Last-Event-ID`` is its position: it must have one from the moment it connects
(so a client cut before its first event resumes exactly), and nothing it receives - event,
position marker, ping or reset - may carry an id another tenant's client receives.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence

import pytest
from clients import join, leave, running, wait_until
from hypothesis import given
from hypothesis import strategies as st
from tenants import Noted, noted_events, numbers

from ssebus import InMemoryClientRegistry, SseConnection, Subscription
from ssebus._position import PositionCodec

pytestmark = pytest.mark.anyio


async def test_a_client_cut_before_its_first_event_resumes_with_the_event_it_missed() -> None:
    async with running(noted_events()) as (bus, broadcaster, tasks):
        quiet = await join(tasks, broadcaster)
        await wait_until(lambda: bool(quiet.writes))
        await leave(quiet)  # a proxy timeout, before any event
        await bus.publish(Noted(1))
        assert quiet.last_event_id(), "the stream gave the client no position"
        back = await join(tasks, broadcaster, last_event_id=quiet.last_event_id())
        await wait_until(lambda: numbers(back) == [1])
        assert [e.type for e in back.events()] == ["noted"]  # no reset


async def test_the_position_at_connect_dispatches_no_event() -> None:
    async with running(noted_events()) as (_bus, broadcaster, tasks):
        client = await join(tasks, broadcaster, retry=2000)
        await wait_until(lambda: bool(client.writes))
        assert client.events() == []
        assert client.last_event_id()
        assert client.stream.startswith(b"retry: 2000\n\n")


async def test_a_resumed_client_that_missed_nothing_visible_is_moved_to_the_newest_position() -> (
    None
):
    sub = Subscription(tenant="b")
    async with running(noted_events()) as (bus, broadcaster, tasks):
        first = await join(tasks, broadcaster, subscription=sub)
        await wait_until(lambda: bool(first.writes))
        await leave(first)
        for n in range(5):
            await bus.publish(Noted(n, tenant="a"))
        again = await join(
            tasks, broadcaster, last_event_id=first.last_event_id(), subscription=sub
        )
        await wait_until(lambda: again.last_event_id() not in ("", first.last_event_id()))
        assert again.events() == []
        assert again.last_event_id() == broadcaster.position_id("b")


async def test_no_id_a_tenant_receives_is_one_another_tenant_receives() -> None:
    async with running(noted_events(), heartbeat=0.01, heartbeat_style="event") as (
        bus,
        broadcaster,
        tasks,
    ):
        a = await join(tasks, broadcaster, subscription=Subscription(tenant="a"))
        b = await join(tasks, broadcaster, subscription=Subscription(tenant="b"))
        for n in range(20):
            await bus.publish(Noted(n, tenant="a" if n % 3 else "b"))
        await wait_until(lambda: b"ping" in a.stream and b"ping" in b.stream)
        # A reset, too: each tenant resumes from an id it could not have.
        a_reset = await join(
            tasks,
            broadcaster,
            last_event_id="nonsense",
            subscription=a.connection.subscription if a.connection else None,
        )
        await wait_until(lambda: any(e.type == "reset" for e in a_reset.events()))
        seen_by_a = a.ids() | a_reset.ids()
        assert seen_by_a
        assert b.ids()
        assert not seen_by_a & b.ids()


async def test_event_pings_carry_no_id() -> None:
    async with running(noted_events(), heartbeat=0.01, heartbeat_style="event") as (
        bus,
        broadcaster,
        tasks,
    ):
        client = await join(tasks, broadcaster)
        await bus.publish(Noted(1))
        await wait_until(lambda: any(e.type == "ping" for e in client.events()))
        ids_before_pings = client.ids()
        assert all(e.last_event_id in ids_before_pings for e in client.events())
        pings = [block for block in client.stream.split(b"\n\n") if b"event: ping" in block]
        assert pings
        assert all(b"id:" not in block for block in pings)


async def test_an_id_of_another_tenant_gets_a_reset_never_that_tenants_events() -> None:
    async with running(noted_events()) as (bus, broadcaster, tasks):
        a = await join(tasks, broadcaster, subscription=Subscription(tenant="a"))
        await bus.publish(Noted(1, tenant="a"))
        await wait_until(lambda: numbers(a) == [1])
        await bus.publish(Noted(2, tenant="a"))
        await bus.publish(Noted(3, tenant="b"))
        intruder = await join(
            tasks,
            broadcaster,
            last_event_id=a.events()[0].last_event_id,
            subscription=Subscription(tenant="b"),
        )
        await wait_until(lambda: bool(intruder.events()))
        events = intruder.events()
        assert [e.type for e in events] == ["reset"]
        assert json.loads(events[0].data)["reason"] == "not-in-history"
        assert events[0].last_event_id in intruder.ids() - a.ids()


async def test_the_ids_of_an_earlier_process_get_a_reset() -> None:
    async with running(noted_events()) as (bus, broadcaster, tasks):
        client = await join(tasks, broadcaster)
        await bus.publish(Noted(1))
        await wait_until(lambda: numbers(client) == [1])
        old_id = client.last_event_id()
    async with running(noted_events()) as (bus, broadcaster, tasks):
        await bus.publish(Noted(2))
        back = await join(tasks, broadcaster, last_event_id=old_id)
        await wait_until(lambda: bool(back.events()))
        assert [e.type for e in back.events()] == ["reset"]


# -- the token itself ----------------------------------------------------------------------

secrets = st.binary(min_size=16, max_size=64)
views = st.one_of(st.none(), st.text(max_size=20))
ticks = st.integers(min_value=0, max_value=2**64 - 1)


@given(secret=secrets, view=views, tick=ticks)
def test_a_token_decodes_to_its_tick_for_its_own_view(
    secret: bytes, view: str | None, tick: int
) -> None:
    codec = PositionCodec(secret)
    token = codec.token(view, tick)
    assert codec.tick([view], token) == tick
    assert codec.token(view, tick) == token  # the same id on every instance
    assert all(c.isalnum() or c in "-_" for c in token)


@given(secret=secrets, view=views, other=views, tick=ticks)
def test_a_token_means_nothing_to_another_view(
    secret: bytes, view: str | None, other: str | None, tick: int
) -> None:
    if view == other:
        return
    codec = PositionCodec(secret)
    assert codec.tick([other], codec.token(view, tick)) is None


@given(secret=secrets, view=views, tick=ticks, flip=st.integers(min_value=0, max_value=18))
def test_a_tampered_token_decodes_to_nothing(
    secret: bytes, view: str | None, tick: int, flip: int
) -> None:
    codec = PositionCodec(secret)
    token = codec.token(view, tick)
    changed = token[:flip] + ("A" if token[flip] != "A" else "B") + token[flip + 1 :]
    assert codec.tick([view], changed) is None
    assert PositionCodec(bytes(b ^ 1 for b in secret)).tick([view], token) is None


@given(junk=st.text(max_size=40))
def test_any_string_decodes_to_a_tick_or_nothing_never_an_error(junk: str) -> None:
    result = PositionCodec(b"k" * 32).tick([None, "a"], junk)
    assert result is None or isinstance(result, int)


class OwnRegistry:
    """A registry of the user's own: only the ``ISseClientRegistry`` methods."""

    def __init__(self) -> None:
        self._inner = InMemoryClientRegistry()

    def add(self, connection: SseConnection) -> None:
        self._inner.add(connection)

    def remove(self, connection_id: str) -> SseConnection | None:
        return self._inner.remove(connection_id)

    def snapshot(self) -> Sequence[SseConnection]:
        return self._inner.snapshot()

    def select(self, tenant: str | None, topics: Collection[str]) -> Sequence[SseConnection]:
        return self._inner.select(tenant, topics)

    def __len__(self) -> int:
        return len(self._inner)


async def test_with_a_registry_of_ones_own_tenants_still_get_ids_of_their_own() -> None:
    async with running(noted_events(), registry=OwnRegistry()) as (bus, broadcaster, tasks):
        a = await join(tasks, broadcaster, subscription=Subscription(tenant="a"))
        b = await join(tasks, broadcaster, subscription=Subscription(tenant="b"))
        await bus.publish(Noted(1))  # for everyone
        await wait_until(lambda: numbers(a) == [1] and numbers(b) == [1])
        assert a.events()[0].last_event_id != b.events()[0].last_event_id
        assert not a.ids() & b.ids()
