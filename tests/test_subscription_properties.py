"""Properties of subscriptions, checked on random connections and random events.

The promise: **every connection receives exactly the events its subscription admits, in
publish order, exactly once** - live, and when it resumes from any id it may bring (the
matching events after that id, then the matching live ones, with no gap or duplicate).

"Admits" is written out here as a plain model, independently of ``Subscription.matches``:
an event with a tenant is for that tenant only, one without is for every tenant; a
connection without a topic filter takes every topic, one with a topic set takes the events
carrying at least one of them; a ``Restricted`` event also needs the connection's ``role``
attribute to equal the event's role (its ``allow`` predicate raises ``KeyError`` for a
connection without a role, which must count as "no").

Ids carry positions: the id a client gets with an event is the token of the event's
position for the client's tenant (no id is shared by two tenants, even for an event
without a tenant), the same on every instance. A resuming
client brings the id it was last given: of an event, or of the position it was handed on
connecting (``Broadcaster.position_id``), here the position just after some event.

Run on ``InMemoryEventBus`` with many examples, and on ``RedisEventBus`` in streams mode
with a few (each costs Redis round trips): there, the live connections are on one instance
and the resuming ones on a second instance started later, so their replay comes from the
Redis streams while that instance's own reader may still be catching up.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import dataclass, field

import anyio
import anyio.abc
import pytest
from clients import GUARD, Client, broadcasting, join, wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis_support import REDIS_URL, delete_bus, raw_client

from ssebus import (
    Broadcaster,
    EventMap,
    Frame,
    IEventBus,
    InMemoryClientRegistry,
    InMemoryEventBus,
    SseConnection,
    Subscription,
    delivery_position,
)
from ssebus._metrics import Metrics
from ssebus._position import PositionCodec
from ssebus.redis import RedisEventBus

pytestmark = pytest.mark.anyio

TENANTS = [None, "acme", "globex"]
TOPICS = ["t1", "t2", "t3"]
ROLES = ["admin", "staff"]


# --- the domain and the model --------------------------------------------------------------


@dataclass(frozen=True)
class Posted:
    """An event for ``tenant`` (None: every tenant) on ``topics``."""

    n: int
    tenant: str | None
    topics: Sequence[str]


@dataclass(frozen=True)
class Restricted:
    """Like ``Posted``, and only for connections whose ``role`` attribute is ``role``."""

    n: int
    tenant: str | None
    topics: Sequence[str]
    role: str


Event = Posted | Restricted


def role_matches(event: Restricted, subscription: Subscription) -> bool:
    return bool(subscription.attributes["role"] == event.role)  # KeyError without a role


def property_events() -> EventMap:
    events = EventMap()
    events.add(
        Posted, "posted", lambda e: {"n": e.n}, tenant=lambda e: e.tenant, topics=lambda e: e.topics
    )
    events.add(
        Restricted,
        "restricted",
        lambda e: {"n": e.n},
        tenant=lambda e: e.tenant,
        topics=lambda e: e.topics,
        allow=role_matches,
    )
    return events


def reaches(subscription: Subscription, event: Event) -> bool:
    """Tenant and topics: whether ``event`` is for a connection with ``subscription``."""
    if event.tenant is not None and event.tenant != subscription.tenant:
        return False
    return subscription.topics is None or not set(subscription.topics).isdisjoint(event.topics)


def admits(subscription: Subscription, event: Event) -> bool:
    """The model of who receives what."""
    if not reaches(subscription, event):
        return False
    return not isinstance(event, Restricted) or subscription.attributes.get("role") == event.role


subscriptions = st.builds(
    Subscription,
    tenant=st.sampled_from(TENANTS),
    topics=st.none() | st.frozensets(st.sampled_from(TOPICS)),
    attributes=st.sampled_from([{}, {"role": "admin"}, {"role": "staff"}]),
)
#: (tenant, topics, role): a ``Restricted`` event when it has a role, else a ``Posted`` one.
event_specs = st.tuples(
    st.sampled_from(TENANTS),
    st.lists(st.sampled_from(TOPICS), max_size=3, unique=True),
    st.none() | st.sampled_from(ROLES),
)


def build(specs: Sequence[tuple[str | None, list[str], str | None]]) -> list[Event]:
    """The events of ``specs``; event ``n`` is the n-th published."""
    return [
        Posted(n, tenant, topics) if role is None else Restricted(n, tenant, topics, role)
        for n, (tenant, topics, role) in enumerate(specs)
    ]


# --- connections ---------------------------------------------------------------------------


#: The id of one position for each tenant's clients.
Ids = dict[str | None, str]


@dataclass(eq=False)
class Stream:
    """One connection: its subscription, where it resumed from, and what it wrote."""

    subscription: Subscription
    #: Index of the last event it already had (-1: none, resumes from the start), or None
    #: when it connected without a last event id.
    resume_after: int | None = None
    #: How many events were published when it connected.
    joined_at: int = 0
    client: Client = field(default_factory=Client)

    async def connect(
        self, tasks: anyio.abc.TaskGroup, broadcaster: Broadcaster, last_event_id: str | None
    ) -> None:
        """Connect; return once registered and its replay queued."""
        await join(
            tasks,
            broadcaster,
            self.client,
            last_event_id=last_event_id,
            subscription=self.subscription,
        )

    def received(self) -> list[tuple[str, int]]:
        """(id, n) of every event dispatched, as a browser sees them."""
        return [(e.last_event_id, json.loads(e.data)["n"]) for e in self.client.events()]

    def expected(self, events: Sequence[Event], ids: Sequence[Ids]) -> list[tuple[str, int]]:
        first = self.joined_at if self.resume_after is None else self.resume_after + 1
        view = self.subscription.tenant
        return [(ids[e.n][view], e.n) for e in events[first:] if admits(self.subscription, e)]

    def complete(self, events: Sequence[Event], ids: Sequence[Ids]) -> bool:
        """Whether it has received as many events as it should by now."""
        return len(self.received()) >= len(self.expected(events, ids))


def predicate_failures(streams: Sequence[Stream], events: Sequence[Event]) -> int:
    """How often ``role_matches`` raises when every stream is live for every event."""
    return sum(
        isinstance(e, Restricted)
        and reaches(s.subscription, e)
        and "role" not in s.subscription.attributes
        for s in streams
        for e in events
    )


# --- in memory -----------------------------------------------------------------------------


def running(bus: IEventBus) -> AbstractAsyncContextManager[tuple[Broadcaster, anyio.abc.TaskGroup]]:
    """A broadcaster of the property events on ``bus``: after the block each stream is
    complete."""
    return broadcasting(bus, property_events())


@settings(
    max_examples=100,
    deadline=None,
    # anyio_backend is a plain string: nothing to reset between examples.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    subs=st.lists(subscriptions, min_size=1, max_size=8),
    specs=st.lists(event_specs, max_size=25),
)
async def test_every_connection_receives_exactly_the_events_its_subscription_admits(
    subs: list[Subscription], specs: list[tuple[str | None, list[str], str | None]]
) -> None:
    events = build(specs)
    streams = [Stream(subscription) for subscription in subs]
    ids: list[Ids] = []
    with anyio.fail_after(GUARD):
        async with InMemoryEventBus() as bus, running(bus) as (broadcaster, tasks):
            for stream in streams:
                await stream.connect(tasks, broadcaster, None)
            for event in events:
                await bus.publish(event)
                ids.append({t: broadcaster.position_id(t) for t in TENANTS})  # its ids
            metrics = broadcaster.metrics()
    every_id = [event_id for each in ids for event_id in each.values()]
    assert len(set(every_id)) == len(every_id)  # no two events, no two tenants share one
    for stream in streams:
        assert stream.received() == stream.expected(events, ids)
    assert metrics.predicate_errors == predicate_failures(streams, events)


@st.composite
def schedules(draw: st.DrawFn) -> tuple[list[Event], list[tuple[int, Stream]]]:
    """Events, and connections that join before publish number ``at``, some resuming from the
    position after a random event already published (or from the one before any event)."""
    events = build(draw(st.lists(event_specs, max_size=20)))
    joins = []
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(events)))
        resume_after = draw(st.none() | st.integers(-1, at - 1))
        joins.append((at, Stream(draw(subscriptions), resume_after, joined_at=at)))
    return events, sorted(joins, key=lambda pair: pair[0])


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(schedule=schedules())
async def test_a_connection_resuming_from_any_id_gets_exactly_the_admitted_events_after_it(
    schedule: tuple[list[Event], list[tuple[int, Stream]]],
) -> None:
    events, joins = schedule
    ids: list[Ids] = []
    #: positions[n + 1][tenant]: the id that puts a client of tenant just after event n.
    positions: list[Ids] = []
    with anyio.fail_after(GUARD):
        async with InMemoryEventBus() as bus, running(bus) as (broadcaster, tasks):
            positions.append({t: broadcaster.position_id(t) for t in TENANTS})
            pending = list(joins)
            for step in range(len(events) + 1):
                while pending and pending[0][0] == step:
                    _, stream = pending.pop(0)
                    after = stream.resume_after
                    last_event_id = (
                        None if after is None else positions[after + 1][stream.subscription.tenant]
                    )
                    await stream.connect(tasks, broadcaster, last_event_id)
                if step < len(events):
                    await bus.publish(events[step])
                    positions.append({t: broadcaster.position_id(t) for t in TENANTS})
                    ids.append(positions[-1])
            # A client still replaying at shutdown would drop what it held (and resume
            # later): let every replay end first.
            await wait_until(lambda: all(s.complete(events, ids) for _, s in joins))
    for _, stream in joins:
        assert stream.received() == stream.expected(events, ids)


# --- the registry's index ------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    subs=st.lists(subscriptions, max_size=10),
    removed=st.sets(st.integers(0, 9)),
    tenant=st.sampled_from([*TENANTS, "initech"]),
    topics=st.frozensets(st.sampled_from([*TOPICS, "t4"])),
)
def test_select_returns_exactly_the_matching_connections_each_once(
    subs: list[Subscription], removed: set[int], tenant: str | None, topics: frozenset[str]
) -> None:
    registry = InMemoryClientRegistry()
    connections = [
        SseConnection(f"c{i}", max_queue=1, write_timeout=None, metrics=Metrics(), subscription=s)
        for i, s in enumerate(subs)
    ]
    for connection in connections:
        registry.add(connection)
    for index in removed & set(range(len(connections))):
        registry.remove(f"c{index}")
    live = [c for i, c in enumerate(connections) if i not in removed]
    frame = Frame("1", "e", b"", tenant, topics)
    selected = [c.id for c in registry.select(tenant, topics)]
    assert len(selected) == len(set(selected))
    assert set(selected) == {
        c.id for c in live if reaches(c.subscription, Posted(0, tenant, list(topics)))
    }
    assert set(selected) == {c.id for c in live if c.subscription.matches(frame)}
    for connection in live:
        registry.remove(connection.id)
    assert registry.select(tenant, topics) == ()
    assert registry._by_topic == {}  # white box: removal leaves no empty index behind
    assert registry._by_tenant == {}


# --- on a Redis stream, across two instances ------------------------------------------------


def redis_bus(stream: str) -> RedisEventBus:
    bus = RedisEventBus(REDIS_URL, mode="streams", stream=stream, reconnect_backoff=(0.05, 0.5))
    bus.register(Posted)
    bus.register(Restricted)
    return bus


@st.composite
def redis_schedules(
    draw: st.DrawFn,
) -> tuple[list[Event], int, list[Stream], list[Stream]]:
    """Events, how many are published before the second instance starts, the live
    connections of the first instance and the resuming connections of the second."""
    events = build(draw(st.lists(event_specs, min_size=1, max_size=12)))
    before = draw(st.integers(1, len(events)))
    live = [Stream(s, None) for s in draw(st.lists(subscriptions, min_size=1, max_size=4))]
    resuming = [
        Stream(s, draw(st.integers(-1, before - 1)))
        for s in draw(st.lists(subscriptions, min_size=1, max_size=4))
    ]
    return events, before, live, resuming


@settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(schedule=redis_schedules())
async def test_on_a_redis_stream_live_and_resuming_connections_get_exactly_their_events(
    need_redis: None, schedule: tuple[list[Event], int, list[Stream], list[Stream]]
) -> None:
    events, before, live, resuming = schedule
    name = f"ssebus-test-{uuid.uuid4().hex}"
    ticks: list[int] = []  # the bus position of each event, in publish order
    ids: list[Ids] = []  # the id each event carries, for each tenant's clients

    async def record(event: object) -> None:
        tick = delivery_position()
        assert tick is not None
        assert isinstance(event, Posted | Restricted)
        ticks.append(tick)
        ids.append({t: codec.token(t, tick) for t in TENANTS})

    try:
        with anyio.fail_after(GUARD * 2):
            async with AsyncExitStack() as stack:
                bus_a = await stack.enter_async_context(redis_bus(name))
                codec = PositionCodec(bus_a.position_secret())
                bus_a.subscribe(object, record)
                origin = bus_a.latest_position()  # a fresh bus: 0
                broadcaster_a, tasks_a = await stack.enter_async_context(running(bus_a))
                for stream in live:
                    await stream.connect(tasks_a, broadcaster_a, None)
                for event in events[:before]:
                    await bus_a.publish(event)
                await wait_until(lambda: len(ids) == before)
                # A second instance, started now: its own history begins at the newest entry.
                bus_b = await stack.enter_async_context(redis_bus(name))
                broadcaster_b, tasks_b = await stack.enter_async_context(running(bus_b))
                published = before
                for stream in resuming:
                    after = stream.resume_after
                    assert after is not None
                    tick = ticks[after] if after >= 0 else origin
                    # The id of the position after event ``after``, in the client's view.
                    last_event_id = codec.token(stream.subscription.tenant, tick)
                    await stream.connect(tasks_b, broadcaster_b, last_event_id)
                    if published < len(events):  # publish while the others join
                        await bus_b.publish(events[published])
                        published += 1
                for number, event in enumerate(events[published:]):
                    await (bus_a if number % 2 else bus_b).publish(event)
                await wait_until(lambda: len(ticks) == len(events))
                await wait_until(
                    lambda: broadcaster_a.position == broadcaster_b.position == ticks[-1]
                )
                await wait_until(lambda: all(s.complete(events, ids) for s in live + resuming))
    finally:
        async with raw_client() as redis:
            await delete_bus(redis, name)
    for stream in live + resuming:
        assert stream.received() == stream.expected(events, ids)
