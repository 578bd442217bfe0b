"""The delivery promise as a state machine: whatever the order of publishes, tenants,
topics, disconnects, reconnects (with or without an id) and bus gaps, every client gets
every event of its audience in order, exactly once, or a ``reset`` - never a silent gap,
never an id of another tenant.

The broadcaster runs on an event loop in a background thread (anyio's blocking portal)
and hypothesis drives it one rule at a time; after each rule the loop settles (every
connected client has been written everything) and the promises are checked.
"""

from __future__ import annotations

import json
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field

import anyio
import anyio.abc
import anyio.from_thread
import anyio.lowlevel
import pytest
from clients import Client, serve
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from tenants import Noted, noted_events
from test_bus_gaps import LossyBus

from ssebus import Broadcaster, InMemoryHistory, Subscription

TENANTS = ["a", "b", None]
TOPICS = ["t1", "t2"]
SUBSCRIPTIONS = [
    Subscription(tenant=tenant, topics=topics)
    for tenant in TENANTS
    for topics in (None, frozenset({"t1"}))
]


@dataclass(eq=False)
class Follower:
    """One client across its sessions; an *epoch* begins whenever it connects without an id."""

    subscription: Subscription
    epochs: list[list[Client]] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)  # where each epoch began in the log
    session: Client | None = None
    scope: anyio.CancelScope | None = None

    def sees(self, event: Noted) -> bool:
        tenant = self.subscription.tenant
        if event.tenant is not None and event.tenant != tenant:
            return False
        topics = self.subscription.topics
        return topics is None or event.topic in topics

    def stream(self, epoch: int) -> list[tuple[str, int | None]]:
        received = []
        for client in self.epochs[epoch]:
            for event in client.events():
                number = json.loads(event.data)["n"] if event.type == "noted" else None
                received.append((event.type, number))
        return received

    def last_event_id(self) -> str:
        from ssebus.testing import EventStreamParser

        parser = EventStreamParser()
        for client in self.epochs[-1]:
            parser.feed(client.stream)
        return parser.last_event_id


def _portal(backend: str) -> AbstractContextManager[anyio.from_thread.BlockingPortal]:
    return anyio.from_thread.start_blocking_portal(backend)


class Delivery(RuleBasedStateMachine):
    backend = "asyncio"

    def __init__(self) -> None:
        super().__init__()
        self.stack = ExitStack()
        self.portal = self.stack.enter_context(_portal(self.backend))
        self.bus = LossyBus()
        self.broadcaster = Broadcaster(
            self.bus,
            noted_events(),
            heartbeat=None,
            history=InMemoryHistory(max_events=6, max_total=12),
            replay_page=2,
            max_replay=40,
        )
        self.stack.enter_context(self.portal.wrap_async_context_manager(self.broadcaster))
        self.log: list[Noted] = []
        self.followers = [Follower(s) for s in SUBSCRIPTIONS]
        self.settled = False

    def teardown(self) -> None:
        for follower in self.followers:
            if follower.scope is not None:
                self.portal.call(self._cut, follower)
        self.stack.close()

    # -- what happens ----------------------------------------------------------------------

    @rule(tenant=st.sampled_from(TENANTS), topic=st.sampled_from(TOPICS))
    def publish(self, tenant: str | None, topic: str) -> None:
        event = Noted(len(self.log), tenant=tenant, topic=topic)
        self.log.append(event)
        self.portal.call(self.bus.publish, event)

    @rule(who=st.integers(0, len(SUBSCRIPTIONS) - 1), with_id=st.booleans())
    def connect(self, who: int, with_id: bool) -> None:
        follower = self.followers[who]
        if follower.scope is not None:
            return
        client = Client(pace=0.002)
        # A client cut before its first write has no id: it can only start afresh.
        last_event_id = (follower.last_event_id() or None) if with_id and follower.epochs else None
        if last_event_id is not None:
            follower.epochs[-1].append(client)
        else:
            follower.epochs.append([client])
            follower.starts.append(len(self.log))
        follower.session = client
        follower.scope = self.portal.call(self._open, follower, client, last_event_id)

    @rule(who=st.integers(0, len(SUBSCRIPTIONS) - 1))
    def cut(self, who: int) -> None:
        follower = self.followers[who]
        if follower.scope is not None:
            self.portal.call(self._cut, follower)

    @precondition(lambda self: bool(self.log))
    @rule(lost=st.integers(0, 5))
    def gap(self, lost: int) -> None:
        self.portal.call(self.bus.lose, lost)

    # -- the promises ----------------------------------------------------------------------

    @rule()
    def settle(self) -> None:
        """Let every connected client catch up (otherwise the rules interleave freely with
        replays in progress)."""
        self.portal.call(self._settle)
        self.settled = True

    @invariant()
    def every_event_in_order_exactly_once_or_a_reset(self) -> None:
        settled, self.settled = self.settled, False
        for follower in self.followers:
            audience = [e.n for e in self.log if follower.sees(e)]
            for epoch, start in enumerate(follower.starts):
                expected = [n for n in audience if n >= start]
                previous: int | None = None
                reset = False
                for kind, number in follower.stream(epoch):
                    if kind == "reset":
                        reset = True
                        continue
                    assert kind == "noted"
                    assert number is not None
                    if previous is None and not reset:
                        assert expected, "an event nobody published"
                        assert number == expected[0], "missed the first events"
                    elif previous is not None and not reset:
                        following = expected[expected.index(previous) + 1]
                        assert number == following, f"gap or repeat after {previous}: {number}"
                    else:
                        assert previous is None or number > previous, "repeat after a reset"
                    previous, reset = number, False
                live = settled and follower.scope is not None and epoch == len(follower.starts) - 1
                if live and expected and not reset:
                    assert previous == expected[-1], (
                        f"a connected client is behind: {follower.subscription} got "
                        f"{follower.stream(epoch)}, expected {expected}"
                    )

    @invariant()
    def no_id_crosses_tenants(self) -> None:
        ids: dict[str | None, set[str]] = {}
        for follower in self.followers:
            seen = ids.setdefault(follower.subscription.tenant, set())
            for epoch in follower.epochs:
                for client in epoch:
                    seen |= client.ids()
        assert not ids.get("a", set()) & ids.get("b", set())

    # -- on the loop -----------------------------------------------------------------------

    async def _open(
        self, follower: Follower, client: Client, last_event_id: str | None
    ) -> anyio.CancelScope:
        scope = anyio.CancelScope()
        started = anyio.Event()

        async def session() -> None:
            with scope:
                await serve(self.broadcaster, client, last_event_id, follower.subscription)

        assert self.broadcaster._background is not None
        self.broadcaster._tasks.start_soon(session)
        while client.connection is None:
            await anyio.lowlevel.checkpoint()
        started.set()
        return scope

    async def _cut(self, follower: Follower) -> None:
        client = follower.session
        assert client is not None
        assert client.connection is not None
        client.connection.abort("client disconnected")
        await client.finished.wait()
        follower.scope = follower.session = None

    async def _settle(self) -> None:
        with anyio.fail_after(5):
            while True:
                busy = [
                    f
                    for f in self.followers
                    if f.session is not None
                    and f.session.connection is not None
                    and (
                        f.session.connection.catching_up
                        or len(f.session.connection.outbox)
                        or f.session.connection._writing_since is not None
                    )
                ]
                if not busy:
                    break
                await anyio.lowlevel.checkpoint()
            for _ in range(5):
                await anyio.lowlevel.checkpoint()


def _run(backend: str) -> None:
    class Machine(Delivery):
        pass

    Machine.backend = backend
    Machine.TestCase.settings = settings(
        max_examples=60,
        stateful_step_count=40,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    Machine.TestCase().runTest()


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_the_delivery_promise_holds_on_the_in_memory_bus(backend: str) -> None:
    _run(backend)
