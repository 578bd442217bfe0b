"""Properties of the whole in-process pipeline, checked on random schedules.

The central promise: **every client receives every event, in publish order, exactly
once** - counting, for a client that drops and comes back with the last id it saw, what
its connections received together. Two generators check it:

* a ``@given`` schedule (clients join, leave and resume at random points between
  publishes), run as an async test on both backends by anyio's pytest plugin;
* a ``RuleBasedStateMachine`` that drives a real broadcaster running in an anyio
  blocking portal (an event loop in a helper thread, asyncio or trio), one rule per
  step: join, publish, leave, resume, drain. After every step the registry holds exactly
  the live clients and each client's stream so far is an in-order, duplicate-free prefix.

A second, synchronous state machine checks the registry and the connection outboxes
without any event loop: the registry is a faithful, insertion-ordered set of connections
whose snapshots never change under a broadcast; a live connection's ``offer`` queues
exactly ``max_queue`` frames and then raises ``OutboxFull`` (the client lags), one that is
still catching up (held) empties its full outbox instead (history holds those frames), a
frame at or before a connection's position is dropped, and a closed one ignores frames.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from concurrent.futures import Future
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Literal

import anyio.lowlevel
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from clients import Client, running, serve, wait_until
from domain import OrderCreatedDomainEvent, order_events
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)

from ssebus import (
    Broadcaster,
    DuplicateConnectionError,
    Frame,
    InMemoryClientRegistry,
    InMemoryEventBus,
    SseConnection,
)
from ssebus._metrics import Metrics
from ssebus._outbox import OutboxFull
from ssebus._resume import Handover

pytestmark = pytest.mark.anyio

GUARD = 2.0  # seconds; only a guard against hangs (short: a failing example shrinks)


# --- one connection and one client across connections --------------------------------------


def seen(stream: Client) -> list[tuple[str, str]]:
    """(id, orderId) of every event one connection dispatched so far, as a browser sees
    them."""
    return [(e.last_event_id, json.loads(e.data)["orderId"]) for e in stream.events()]


@dataclass(eq=False)
class Viewer:
    """One client (a browser tab) over possibly several connections.

    ``anchor`` is the id of the broadcaster's position when the viewer first joined (as a
    page that loads the current state and then subscribes would know it): it resumes from
    there if it left before being given any id.
    """

    joined_at: int
    anchor: str
    streams: list[Client] = field(default_factory=list)
    live: Client | None = None

    def seen(self) -> list[tuple[str, str]]:
        return [event for stream in self.streams for event in seen(stream)]

    def resume_id(self) -> str:
        for stream in reversed(self.streams):
            if event_id := stream.last_event_id():
                return event_id
        return self.anchor


def published(ids: Sequence[str], start: int = 0) -> list[tuple[str, str]]:
    """(id, orderId) of the events published from index ``start`` on."""
    return [(event_id, f"ord-{n}") for n, event_id in enumerate(ids) if n >= start]


def assert_in_order_prefix(seen: list[tuple[str, str]], expected: list[tuple[str, str]]) -> None:
    assert seen == expected[: len(seen)], "a gap, a duplicate or a reordering"


# --- the @given schedule -------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """When (before which publish) a viewer joins, leaves and comes back."""

    join: int
    leave: int | None
    rejoin: int | None
    drain_before_leave: bool
    resume_on_join: bool


@st.composite
def schedules(draw: st.DrawFn) -> tuple[int, list[Plan], list[int]]:
    """How many events, each viewer's plan, and how many turns of the event loop pass
    after each publish (so that batched writes meet frames at every point)."""
    events = draw(st.integers(0, 20))
    plans = []
    for _ in range(draw(st.integers(1, 6))):
        join = draw(st.integers(0, events))
        leave = draw(st.none() | st.integers(join, events))
        rejoin = None if leave is None else draw(st.none() | st.integers(leave, events))
        plans.append(Plan(join, leave, rejoin, draw(st.booleans()), draw(st.booleans())))
    pauses = draw(st.lists(st.integers(0, 6), min_size=events, max_size=events))
    return events, plans, pauses


@settings(
    max_examples=40,
    deadline=None,
    # anyio_backend is a plain string: nothing to reset between examples.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(schedule=schedules())
@pytest.mark.parametrize("write_delay", [0.0, "auto"])
async def test_every_client_receives_every_event_in_order_exactly_once(
    schedule: tuple[int, list[Plan], list[int]], write_delay: float | Literal["auto"]
) -> None:
    events_count, plans, pauses = schedule
    ids: list[str] = []
    viewers: dict[int, Viewer] = {}  # by index in plans

    async def connect(viewer: Viewer, last_event_id: str | None) -> None:
        stream = Client()
        viewer.streams.append(stream)
        viewer.live = stream
        await tasks.start(functools.partial(serve, broadcaster, stream, last_event_id))

    async def leave(viewer: Viewer, drain: bool) -> None:
        stream = viewer.live
        assert stream is not None
        if drain:
            await wait_until(lambda: len(viewer.seen()) == len(ids) - viewer.joined_at)
        assert stream.scope is not None
        stream.scope.cancel()
        await wait_until(lambda: stream.finished.is_set())
        viewer.live = None

    async with running(order_events(), guard=GUARD, write_delay=write_delay) as (
        bus,
        broadcaster,
        tasks,
    ):
        for step in range(events_count + 1):
            for index, plan in enumerate(plans):
                if plan.join == step:
                    anchor = broadcaster.position_id()
                    viewers[index] = Viewer(len(ids), anchor)
                    await connect(viewers[index], anchor if plan.resume_on_join else None)
            for index, viewer in viewers.items():
                plan = plans[index]
                if plan.leave == step and viewer.live is not None:
                    await leave(viewer, plan.drain_before_leave)
                if plan.rejoin == step and viewer.live is None:
                    await connect(viewer, viewer.resume_id())
            if step < events_count:
                await bus.publish(OrderCreatedDomainEvent(f"ord-{step}"))
                ids.append(broadcaster.position_id())  # the id the event carries
                for _ in range(pauses[step]):
                    await anyio.lowlevel.checkpoint()
        live = [v for v in viewers.values() if v.live is not None]
        await wait_until(lambda: all(len(v.seen()) == len(ids) - v.joined_at for v in live))

    assert len(set(ids)) == len(ids)
    assert len(viewers) == len(plans)
    for index, plan in enumerate(plans):
        viewer = viewers[index]
        expected = published(ids, viewer.joined_at)
        if plan.leave is None or plan.rejoin is not None:
            assert viewer.seen() == expected
        else:
            assert_in_order_prefix(viewer.seen(), expected)
            if plan.drain_before_leave:
                assert len(viewer.seen()) == plan.leave - plan.join


# --- the state machine ---------------------------------------------------------------------


class PipelineMachine(RuleBasedStateMachine):
    """A running broadcaster in a blocking portal; rules are what clients and publishers do."""

    viewers = Bundle("viewers")

    def __init__(self, backend: str) -> None:
        super().__init__()
        self.stack = ExitStack()
        self.portal: BlockingPortal = self.stack.enter_context(start_blocking_portal(backend))
        self.bus = InMemoryEventBus()
        # Built in the event loop's thread: it creates anyio primitives.
        broadcaster = self.portal.call(
            functools.partial(Broadcaster, self.bus, order_events(), heartbeat=None)
        )
        self.broadcaster = self.stack.enter_context(
            self.portal.wrap_async_context_manager(broadcaster)
        )
        self.ids: list[str] = []
        self.all_viewers: list[Viewer] = []
        self.futures: list[Future[None]] = []

    def _connect(self, viewer: Viewer, last_event_id: str | None) -> None:
        stream = Client()
        future, _ = self.portal.start_task(serve, self.broadcaster, stream, last_event_id)
        self.futures.append(future)
        viewer.streams.append(stream)
        viewer.live = stream

    def _drain(self) -> None:
        live = [v for v in self.all_viewers if v.live is not None]
        expected = len(self.ids)
        self.portal.call(
            wait_until, lambda: all(len(v.seen()) == expected - v.joined_at for v in live), GUARD
        )

    @rule(target=viewers, resume=st.booleans())
    def join(self, resume: bool) -> Viewer:
        anchor = self.broadcaster.position_id()
        viewer = Viewer(len(self.ids), anchor)
        self.all_viewers.append(viewer)
        self._connect(viewer, anchor if resume else None)
        return viewer

    @rule(count=st.integers(1, 4))
    def publish(self, count: int) -> None:
        for _ in range(count):
            event = OrderCreatedDomainEvent(f"ord-{len(self.ids)}")
            self.portal.call(self.bus.publish, event)
            self.ids.append(self.broadcaster.position_id())

    @rule(viewer=viewers, drain=st.booleans())
    def leave(self, viewer: Viewer, drain: bool) -> None:
        stream = viewer.live
        if stream is None:
            return
        if drain:
            self._drain()
        assert stream.scope is not None
        self.portal.call(stream.scope.cancel)
        self.portal.call(wait_until, lambda: stream.finished.is_set(), GUARD)
        viewer.live = None

    @rule(viewer=viewers)
    def resume(self, viewer: Viewer) -> None:
        if viewer.live is None:
            self._connect(viewer, viewer.resume_id())

    @rule()
    def drain(self) -> None:
        self._drain()
        for viewer in self.all_viewers:
            if viewer.live is not None:
                assert viewer.seen() == published(self.ids, viewer.joined_at)

    @invariant()
    def the_registry_holds_exactly_the_live_connections(self) -> None:
        live = sum(v.live is not None for v in self.all_viewers)
        assert len(self.broadcaster.registry) == live
        assert self.broadcaster.metrics().active_connections == live
        assert self.broadcaster.metrics().connections_opened == sum(
            len(v.streams) for v in self.all_viewers
        )

    @invariant()
    def every_viewer_saw_an_in_order_prefix_without_duplicates(self) -> None:
        for viewer in self.all_viewers:
            assert_in_order_prefix(viewer.seen(), published(self.ids, viewer.joined_at))

    @invariant()
    def the_newest_id_is_the_last_published(self) -> None:
        if self.ids:
            assert self.broadcaster.position_id() == self.ids[-1]
        assert self.broadcaster.metrics().events_published == len(self.ids)

    def teardown(self) -> None:
        try:
            self._drain()
            for viewer in self.all_viewers:
                if viewer.live is not None:
                    assert viewer.seen() == published(self.ids, viewer.joined_at)
        finally:
            self.stack.close()  # shutdown ends every connection, then the loop stops
        assert all(future.done() for future in self.futures)
        assert len(self.broadcaster.registry) == 0


def test_the_pipeline_state_machine_keeps_every_promise(anyio_backend: str) -> None:
    class OnBackend(PipelineMachine):
        def __init__(self) -> None:
            super().__init__(anyio_backend)

    run_state_machine_as_test(
        OnBackend, settings=settings(max_examples=15, stateful_step_count=20, deadline=None)
    )


# --- the registry and the connection queues, synchronously ---------------------------------


@dataclass(eq=False)
class Model:
    """What a connection should be: catching up (held) or live, how many frames its
    outbox holds, and whether it is closed."""

    connection: SseConnection
    held: bool
    queued: int = 0
    closed: bool = False
    start: int = 0  # the tick it went live at (rule 5: nothing at or before it is queued)


class RegistryMachine(RuleBasedStateMachine):
    """``InMemoryClientRegistry`` and ``SseConnection.offer`` against a plain model."""

    MAX_QUEUE = 3

    def __init__(self) -> None:
        super().__init__()
        self.registry = InMemoryClientRegistry()
        self.model: dict[str, Model] = {}  # insertion-ordered, like the registry
        self.ticks = 0
        self.old_snapshot: Sequence[SseConnection] = ()
        self.old_snapshot_copy: list[SseConnection] = []

    def _keep_snapshot(self) -> None:
        self.old_snapshot = self.registry.snapshot()
        self.old_snapshot_copy = list(self.old_snapshot)

    @rule(connection_id=st.sampled_from(["a", "b", "c", "d", "e", "f"]), held=st.booleans())
    def add(self, connection_id: str, held: bool) -> None:
        self._keep_snapshot()
        connection = SseConnection(
            connection_id, max_queue=self.MAX_QUEUE, write_timeout=None, metrics=Metrics()
        )
        # Held: resuming from position 0, its replay not yet run. Else live at position 0.
        connection.start(b"", self.ticks, Handover(self.ticks, "an id") if held else None)
        if connection_id in self.model:
            with pytest.raises(DuplicateConnectionError, match="already registered"):
                self.registry.add(connection)
            assert self.registry.get(connection_id) is self.model[connection_id].connection
        else:
            self.registry.add(connection)
            self.model[connection_id] = Model(connection, held, start=self.ticks)

    @rule(connection_id=st.sampled_from(["a", "b", "c", "d", "e", "f"]))
    def remove(self, connection_id: str) -> None:
        self._keep_snapshot()
        removed = self.registry.remove(connection_id)
        expected = self.model.pop(connection_id, None)
        assert removed is (expected.connection if expected else None)

    @rule(data=st.data())
    def close(self, data: st.DataObject) -> None:
        if not self.model:
            return
        model = data.draw(st.sampled_from(list(self.model.values())))
        model.connection.close("client went away")
        if model.held and not model.closed:
            model.queued = 0  # what a closing connection held is dropped
        model.closed = True
        assert model.connection.closed

    @rule()
    def offer_to_everyone(self) -> None:
        self.ticks += 1
        frame = Frame(f"f-{self.ticks}", "order-created", b"data: x\n\n", tick=self.ticks)
        for connection in self.registry.snapshot():
            model = self.model[connection.id]
            if model.closed:
                connection.offer(frame)  # a closed connection silently ignores frames
            elif model.held:
                connection.offer(frame)  # never raises: the replay will carry on past
                model.queued = model.queued + 1 if model.queued < self.MAX_QUEUE else 0
            elif model.queued < self.MAX_QUEUE:
                connection.offer(frame)
                model.queued += 1
                assert len(connection.outbox) == model.queued
            else:
                with pytest.raises(OutboxFull):  # a full outbox reports the client lagging
                    connection.offer(frame)

    @rule()
    def offer_a_frame_every_connection_already_has(self) -> None:
        """A frame at or before the tick a connection went live (or resumed) at: a replay
        gave it already, so it is dropped and never raises."""
        if not self.ticks:
            return
        frame = Frame("f-old", "order-created", b"data: old\n\n", tick=self.ticks)
        for connection in self.registry.snapshot():
            model = self.model[connection.id]
            if model.start == self.ticks:
                connection.offer(frame)

    @invariant()
    def each_outbox_holds_what_the_model_says(self) -> None:
        for model in self.model.values():
            assert len(model.connection.outbox) == model.queued

    @invariant()
    def the_registry_holds_the_model_in_insertion_order(self) -> None:
        assert len(self.registry) == len(self.model)
        assert [c.id for c in self.registry.snapshot()] == list(self.model)
        for connection_id, model in self.model.items():
            assert connection_id in self.registry
            assert self.registry.get(connection_id) is model.connection

    @invariant()
    def a_snapshot_never_changes_once_taken(self) -> None:
        assert list(self.old_snapshot) == self.old_snapshot_copy

    @invariant()
    def an_unchanged_registry_hands_out_the_same_snapshot(self) -> None:
        assert self.registry.snapshot() is self.registry.snapshot()


def test_the_registry_and_connection_queues_keep_their_invariants() -> None:
    run_state_machine_as_test(
        RegistryMachine, settings=settings(max_examples=40, stateful_step_count=25, deadline=None)
    )
