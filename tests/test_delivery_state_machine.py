"""The delivery promise as a state machine: whatever the order of publishes, tenants,
topics, disconnects, reconnects (with or without an id), bus gaps and Redis outages, every
client gets every event of its audience in order, exactly once, or a ``reset`` - never a
silent gap, never an id of another tenant.

Broadcasters run on an event loop in a background thread (anyio's blocking portal) and
hypothesis drives them one rule at a time; after a ``settle`` every connected client has
been written everything, and the promises are checked after every rule. One machine,
:class:`Delivery`, holds the clients, the rules they share and the promises; it runs on
the in-memory bus (:class:`InMemoryDelivery`, with bus gaps) and on Redis streams across
two instances (:class:`RedisDelivery`, with readers that lag and a Redis that stops).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.abc
import anyio.from_thread
import anyio.lowlevel
import pytest
from buses import LossyBus
from clients import Client, serve
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from redis_support import RedisServer, need_redis_server, publish_when_back
from tenants import Noted, noted_events

from ssebus import Broadcaster, BusUnavailableError, InMemoryHistory, Subscription
from ssebus.redis import RedisEventBus
from ssebus.testing import EventStreamParser

TENANTS = ["a", "b", None]
TOPICS = ["t1", "t2"]
SUBSCRIPTIONS = [
    Subscription(tenant=tenant, topics=topics)
    for tenant in TENANTS
    for topics in (None, frozenset({"t1"}))
]
#: Instances a machine may run; a rule's ``via`` picks one (modulo how many it has).
VIA = st.integers(0, 1)
#: Which of the followers a rule can apply to it picks (modulo how many there are).
PICK = st.integers(0, len(SUBSCRIPTIONS) - 1)
#: Whom an event is for: (tenant, topic).
AUDIENCES = st.tuples(st.sampled_from(TENANTS), st.sampled_from(TOPICS))
BURST = st.lists(AUDIENCES, max_size=6)
#: Every stream starts with a ``retry:`` (a write before a catch-up begins).
RETRY = 1000
#: Mostly a client cut once it has been written what it was given.
AT_ONCE = st.sampled_from([False, False, True])

#: The tick an id stands for, for a client of these views (None: not one of theirs).
Decode = Callable[[Iterable[str | None], str], int | None]


@dataclass(frozen=True)
class ComingBack:
    """How a follower comes back: ``missed`` are published (through another instance)
    while it is away; it connects to instance ``via`` with its last id (or without: a new
    epoch; also when it was cut before its first write, so it has no id); readers that
    lag are ``release``-d and ``during`` are published while it catches up."""

    via: int
    with_id: bool
    missed: list[tuple[str | None, str]]
    during: list[tuple[str | None, str]]
    release: bool


COMING_BACK = st.builds(
    ComingBack,
    via=VIA,
    with_id=st.sampled_from([True, True, False]),  # mostly a resume
    missed=BURST,
    during=BURST,
    release=st.booleans(),
)


@dataclass(eq=False)
class Follower:
    """One client across its sessions; an *epoch* begins whenever it connects without an id.

    Event ``n`` of the log is at tick ``n + 1`` on every bus here, so what a client was
    given can be checked against the log through the ticks its ids decode to.
    """

    subscription: Subscription
    epochs: list[list[Client]] = field(default_factory=list)
    session: Client | None = None
    broadcaster: Broadcaster | None = None
    scope: anyio.CancelScope | None = None

    def sees(self, event: Noted) -> bool:
        tenant = self.subscription.tenant
        if event.tenant is not None and event.tenant != tenant:
            return False
        topics = self.subscription.topics
        return topics is None or event.topic in topics

    def start(self, epoch: int, decode: Decode) -> int | None:
        """The tick the epoch began at: its first id (an ``id:`` alone), if written yet."""
        for line in self.epochs[epoch][0].stream.split(b"\n"):
            if line.startswith(b"id: "):
                tick = decode([self.subscription.tenant], line[4:].decode())
                assert tick is not None, f"a first id that is not this client's: {line!r}"
                return tick
        return None

    def stream(self, epoch: int, decode: Decode) -> list[tuple[str, int | None, int | None]]:
        """(type, tick of its id, ``n`` of a noted event) of each event the epoch got."""
        received = []
        for client in self.epochs[epoch]:
            for event in client.events():
                tick = decode([self.subscription.tenant], event.last_event_id)
                number = json.loads(event.data)["n"] if event.type == "noted" else None
                received.append((event.type, tick, number))
        return received

    def last_event_id(self) -> str:
        """The id it would send on reconnect: the last one of its epoch."""
        parser = EventStreamParser()
        for client in self.epochs[-1]:
            parser.feed(client.stream)
        return parser.last_event_id


class Delivery(RuleBasedStateMachine):
    """Followers connect to any instance, are cut, reconnect; events are published through
    any instance. Subclasses start the instances and add their faults."""

    backend = "asyncio"

    def __init__(self) -> None:
        super().__init__()
        self.stack = ExitStack()
        self.portal = self.stack.enter_context(
            anyio.from_thread.start_blocking_portal(self.backend)
        )
        self.broadcasters: list[Broadcaster] = []
        self.log: list[Noted] = []
        self.followers = [Follower(s) for s in SUBSCRIPTIONS]
        self.settled = False

    def teardown(self) -> None:
        for follower in self.followers:
            if follower.scope is not None:
                self.portal.call(self._cut, follower)
        self.stack.close()

    def decode(self, views: Iterable[str | None], token: str) -> int | None:
        """The tick ``token`` stands for (every instance shares one key)."""
        return self.broadcasters[0]._decode(views, token)

    # -- what each bus does ----------------------------------------------------------------

    async def _publish(self, event: Noted, via: int) -> None:
        raise NotImplementedError

    def can_settle(self) -> bool:
        return True

    async def _stall(self, instance: int) -> None:
        """Make the reader of ``instance`` lag (where there are readers)."""

    async def _release(self) -> None:
        """Let the readers that lag go on."""

    async def _caught_up(self) -> None:
        """Wait until every instance has broadcast every event of the log."""

    # -- what happens ----------------------------------------------------------------------

    @rule(audiences=BURST.filter(bool), via=VIA)
    def publish(self, audiences: list[tuple[str | None, str]], via: int) -> None:
        for tenant, topic in audiences:
            event = Noted(len(self.log), tenant=tenant, topic=topic)
            self.log.append(event)
            self.portal.call(self._publish, event, via)

    def away(self) -> list[Follower]:
        return [f for f in self.followers if f.scope is None]

    def connected(self) -> list[Follower]:
        return [f for f in self.followers if f.scope is not None]

    @initialize(vias=st.lists(VIA, min_size=len(SUBSCRIPTIONS), max_size=len(SUBSCRIPTIONS)))
    def everyone_connects(self, vias: list[int]) -> None:
        for follower, via in zip(self.followers, vias, strict=True):
            self._connect(follower, None, via)

    @precondition(lambda self: bool(self.away()))
    @rule(pick=PICK, back=COMING_BACK)
    def connect(self, pick: int, back: ComingBack) -> None:
        """A follower away comes back."""
        away = self.away()
        self._come_back(away[pick % len(away)], back)

    @precondition(lambda self: bool(self.connected()))
    @rule(pick=PICK, at_once=AT_ONCE)
    def cut(self, pick: int, at_once: bool) -> None:
        """A client goes, at once or once it has been written what it was given."""
        connected = self.connected()
        self._go(connected[pick % len(connected)], at_once)

    @precondition(lambda self: bool(self.connected()))
    @rule(pick=PICK, at_once=AT_ONCE, back=COMING_BACK, ahead=BURST)
    def reconnect(
        self, pick: int, at_once: bool, back: ComingBack, ahead: list[tuple[str | None, str]]
    ) -> None:
        """A client is cut (a proxy's timeout) and comes back; if events came ``ahead``
        of the instance it comes back to (whose reader lagged), it may resume past them."""
        connected = self.connected()
        follower = connected[pick % len(connected)]
        if ahead:
            self.portal.call(self._stall, back.via)
            assert follower.broadcaster is not None
            self.publish(ahead, self.broadcasters.index(follower.broadcaster))
        self._go(follower, at_once)
        self._come_back(follower, back)

    def _go(self, follower: Follower, at_once: bool) -> None:
        if not at_once:
            self.portal.call(self._idle, [follower])
        self.portal.call(self._cut, follower)

    def _come_back(self, follower: Follower, back: ComingBack) -> None:
        self.publish(back.missed, back.via + 1)
        last_event_id = (follower.last_event_id() or None) if back.with_id else None
        self._connect(follower, last_event_id, back.via)
        if back.release:
            self.portal.call(self._release)
        self.publish(back.during, back.via)

    def _connect(self, follower: Follower, last_event_id: str | None, via: int) -> None:
        client = Client(pace=0.002)
        if last_event_id is None:
            follower.epochs.append([])
        follower.epochs[-1].append(client)
        follower.session = client
        follower.broadcaster = self.broadcasters[via % len(self.broadcasters)]
        follower.scope = self.portal.call(self._open, follower, client, last_event_id)

    # -- the promises ----------------------------------------------------------------------

    @precondition(lambda self: self.can_settle())
    @rule()
    def settle(self) -> None:
        """Let every instance broadcast everything and every connected client catch up
        (otherwise the rules interleave freely with deliveries and replays in progress)."""
        self.portal.call(self._settle)
        self.settled = True

    @invariant()
    def every_event_in_order_exactly_once_or_a_reset(self) -> None:
        settled, self.settled = self.settled, False
        for follower in self.followers:
            audience = [e.n for e in self.log if follower.sees(e)]
            last = len(follower.epochs) - 1
            for epoch in range(len(follower.epochs)):
                live = settled and follower.scope is not None and epoch == last
                position = follower.start(epoch, self.decode)
                if position is None:
                    assert not live, f"a connected client has no id: {follower.subscription}"
                    continue
                received = follower.stream(epoch, self.decode)
                for kind, tick, number in received:
                    assert tick is not None, f"an id that is not this client's: {received}"
                    if kind == "reset":  # it reloads; what lies before the reset is covered
                        position = max(position, tick)
                        continue
                    assert kind == "noted"
                    assert number is not None
                    assert tick == number + 1, f"event {number} with the id of tick {tick}"
                    assert number in audience, f"an event not for it: {number}"
                    following = [n for n in audience if n + 1 > position]
                    assert following, f"a repeat at tick {position}: {number}"
                    assert number >= following[0], f"a repeat at tick {position}: {number}"
                    assert number == following[0], f"a gap at tick {position}: {number}"
                    position = tick
                if live:
                    behind = [n for n in audience if n + 1 > position]
                    assert not behind, (
                        f"a connected client is behind: {follower.subscription} got "
                        f"{received}, missing {behind}"
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
        broadcaster = follower.broadcaster
        assert broadcaster is not None

        async def session() -> None:
            with scope:
                await serve(broadcaster, client, last_event_id, follower.subscription, RETRY)

        assert broadcaster._background is not None
        broadcaster._tasks.start_soon(session)
        while client.connection is None:
            await anyio.lowlevel.checkpoint()
        return scope

    async def _cut(self, follower: Follower) -> None:
        client = follower.session
        assert client is not None
        assert client.connection is not None
        client.connection.abort("client disconnected")
        await client.finished.wait()
        follower.scope = follower.session = follower.broadcaster = None

    async def _settle(self) -> None:
        await self._caught_up()
        await self._idle(self.followers)

    async def _idle(self, followers: list[Follower]) -> None:
        """Wait until the connections of ``followers`` have written all they were given."""
        with anyio.fail_after(5):
            while True:
                busy = [
                    f
                    for f in followers
                    if f.session is not None
                    and f.session.connection is not None
                    and (
                        f.session.connection.catching_up
                        or f.session.connection._prelude
                        or len(f.session.connection.outbox)
                        or f.session.connection._writing_since is not None
                    )
                ]
                if not busy:
                    break
                await anyio.lowlevel.checkpoint()
            for _ in range(5):
                await anyio.lowlevel.checkpoint()


class InMemoryDelivery(Delivery):
    """One broadcaster on a bus that delivers at once and can lose events (a gap)."""

    def __init__(self) -> None:
        super().__init__()
        self.bus = LossyBus()
        broadcaster = Broadcaster(
            self.bus,
            noted_events(),
            heartbeat=None,
            history=InMemoryHistory(max_events=6, max_total=12),
            replay_page=2,
            max_replay=40,
        )
        self.stack.enter_context(self.portal.wrap_async_context_manager(broadcaster))
        self.broadcasters.append(broadcaster)

    async def _publish(self, event: Noted, via: int) -> None:
        await self.bus.publish(event)

    @precondition(lambda self: bool(self.log))
    @rule(lost=st.integers(0, 5))
    def gap(self, lost: int) -> None:
        self.portal.call(self.bus.lose, lost)


class LaggingBus(RedisEventBus):
    """A Redis bus whose reader can be stalled (as a slow handler would stall it): it
    delivers nothing while ``gate`` is set, then goes on in order."""

    gate: anyio.Event | None = None

    async def deliver(self, event: object, position: int | None = None) -> None:
        if self.gate is not None:
            await self.gate.wait()
        await super().deliver(event, position)


#: Each tenant's retention stream (and the tenant-less one) and the feed every instance
#: reads are this short, in nodes of 2 entries, so trims, resets and reader gaps happen.
MAXLEN = 4
FEED_MAXLEN = 6


class RedisDelivery(Delivery):
    """A private redis-server (append-only file: a restart loses nothing), two
    ``RedisEventBus(mode="streams")`` instances, a broadcaster on each; a resume may land
    on the other instance, whose reader may lag (``stall``), and Redis may stop and start
    again."""

    def __init__(self) -> None:
        super().__init__()
        directory = Path(tempfile.mkdtemp(prefix="ssebus-sm-"))
        self.stack.callback(shutil.rmtree, directory, ignore_errors=True)
        self.server = RedisServer(
            directory, persistent=True, config={"stream-node-max-entries": "2"}
        )
        self.portal.call(self.server.start)
        self.stack.callback(self.portal.call, self.server.stop)
        #: Published while Redis was down: retried with their keys once it is back.
        self.pending: list[tuple[Noted, int, str | None]] = []
        self.buses: list[LaggingBus] = []
        for _ in range(2):
            bus = self._new_bus()
            self.stack.enter_context(self.portal.wrap_async_context_manager(bus))
            broadcaster = Broadcaster(
                bus,
                noted_events(),
                heartbeat=None,
                history=InMemoryHistory(max_events=1, max_total=2),
                replay_page=2,
                max_replay=40,
            )
            self.stack.enter_context(self.portal.wrap_async_context_manager(broadcaster))
            self.buses.append(bus)
            self.broadcasters.append(broadcaster)
        self.stack.callback(self.portal.call, self._release)

    def _new_bus(self) -> LaggingBus:
        bus = LaggingBus(
            self.server.url,
            mode="streams",
            stream="delivery",
            maxlen=MAXLEN,
            feed_maxlen=FEED_MAXLEN,
            reconnect_backoff=(0.02, 0.1),
            publish_timeout=0.5,
        )
        bus.register(Noted)
        return bus

    def can_settle(self) -> bool:
        return self.server.running

    async def _publish(self, event: Noted, via: int) -> None:
        via %= len(self.buses)
        bus = self.buses[via]
        if self.server.running:
            await publish_when_back(bus, event, within=10)
            return
        try:
            await bus.publish(event)
        except BusUnavailableError as exc:
            self.pending.append((event, via, exc.idempotency_key))
        else:
            raise AssertionError("published to a Redis that is not running")

    async def _caught_up(self) -> None:
        await self._release()
        with anyio.fail_after(10):
            while any(b.position < len(self.log) for b in self.broadcasters):  # noqa: ASYNC110
                await anyio.sleep(0.005)

    def stalled(self) -> list[LaggingBus]:
        return [bus for bus in self.buses if bus.gate is not None]

    async def _release(self) -> None:
        for bus in self.stalled():
            assert bus.gate is not None
            bus.gate.set()
            bus.gate = None

    async def _stall(self, instance: int) -> None:
        bus = self.buses[instance % len(self.buses)]
        if bus.gate is None:
            bus.gate = anyio.Event()

    async def _restart(self) -> None:
        await self.server.start()
        pending, self.pending = self.pending, []
        for event, via, key in pending:
            await publish_when_back(self.buses[via], event, key, within=10)

    @precondition(lambda self: len(self.stalled()) < len(self.buses))
    @rule(instance=st.integers(0, 1))
    def stall(self, instance: int) -> None:
        """The instance's reader stops (a slow handler), so it lags behind Redis and the
        other instance, until it is released (or a settle)."""
        self.portal.call(self._stall, instance)

    @precondition(lambda self: bool(self.stalled()))
    @rule()
    def release(self) -> None:
        """The stalled readers go on: what they missed meets clients resuming there."""
        self.portal.call(self._release)

    @precondition(lambda self: self.server.running)
    @rule()
    def stop_redis(self) -> None:
        self.portal.call(self.server.stop)

    @precondition(lambda self: not self.server.running)
    @rule()
    def start_redis(self) -> None:
        self.portal.call(self._restart)


def _run(machine: type[Delivery], backend: str, examples: int, steps: int) -> None:
    class Machine(machine):  # type: ignore[valid-type, misc]
        pass

    Machine.backend = backend
    Machine.TestCase.settings = settings(
        max_examples=examples,
        stateful_step_count=steps,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    Machine.TestCase().runTest()


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_the_delivery_promise_holds_on_the_in_memory_bus(backend: str) -> None:
    _run(InMemoryDelivery, backend, examples=60, steps=40)


@pytest.mark.usefixtures("need_redis")
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_the_delivery_promise_holds_on_redis_streams_across_two_instances(backend: str) -> None:
    need_redis_server()
    _run(RedisDelivery, backend, examples=20, steps=25)
