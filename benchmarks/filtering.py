"""Filtering cost: what tenant and topic subscriptions do to the fan-out of one event.

Run ``python benchmarks/filtering.py [--quick] [--unread] [--skip-10k]``.

Everything happens in one process, with no sockets: the cost measured is
``Broadcaster.publish(event)``, i.e. rendering the event once (payload, audience, JSON,
encoding), appending it to history, asking the registry for the connections it is for,
running the route's ``allow`` predicate on each candidate, and queueing the frame on each
recipient. ``time.perf_counter_ns`` brackets each ``publish`` call; the table gives the
median (and best) over many events.

Each topology opens its clients with ``broadcaster.connect(subscription=...)`` in an anyio
task group. By default every connection is drained by ``connection.run(write)`` with a
counting ``write``, and the benchmark waits, untimed, until each event has reached exactly
the clients it should (which checks the index against the topology) and the writers are
idle again. So every ``publish`` finds its recipients waiting in ``receive()``, the steady
state of a server whose clients keep up, and pays for handing the frame to a waiting task.
``--unread`` leaves the connections unread instead (with a ``max_queue`` large enough that
nothing is evicted): ``publish`` then only appends to each queue's buffer, the cheapest
possible offer, but nothing checks what was delivered.

The naive reference does what an implementation without an index would: for each event it
tests ``subscription.matches(frame)`` (and the ``allow`` predicate) on every connection of
``registry.snapshot()``. It is timed on the same connections, alternating with the indexed
``publish`` event by event so that both share the machine's noise.
"""

from __future__ import annotations

import argparse
import gc
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version

import anyio
import anyio.lowlevel

from ssebus import Broadcaster, EventMap, Frame, InMemoryEventBus, Subscription
from ssebus._outbox import OutboxFull

ROLES = frozenset({"staff", "admin"})


@dataclass(frozen=True, slots=True)
class OrderUpdated:
    """The domain event broadcast in every scenario."""

    order_id: str
    tenant_id: str
    status: str = "shipped"


def order_payload(event: OrderUpdated) -> dict[str, str]:
    return {"orderId": event.order_id, "tenantId": event.tenant_id, "status": event.status}


def staff_only(event: OrderUpdated, subscription: Subscription) -> bool:
    """The ``allow`` predicate of scenario d; every client of the benchmark passes it."""
    return subscription.attributes.get("role") in ROLES and event.status != "draft"


@dataclass(frozen=True)
class Topology:
    """``clients`` connections; client ``i`` follows order ``i % topics`` (0: every topic).

    With ``tenants``, order ``j`` belongs to tenant ``j % tenants`` and so do the clients
    that follow it, so an event still reaches ``clients / topics`` of them.
    """

    key: str
    label: str
    clients: int
    topics: int = 0
    tenants: int = 0
    allow: bool = False

    def order(self, j: int) -> str:
        return f"ord-{j:05}"

    def tenant(self, j: int) -> str:
        return f"tenant-{j % self.tenants:03}" if self.tenants else "-"

    def subscription(self, i: int) -> Subscription | None:
        if not self.topics:
            return None
        j = i % self.topics
        return Subscription(
            tenant=self.tenant(j) if self.tenants else None,
            topics=frozenset({f"order:{self.order(j)}"}),
            attributes={"role": "staff"},
        )

    def event(self, k: int) -> OrderUpdated:
        j = k % self.topics if self.topics else k
        return OrderUpdated(self.order(j), self.tenant(j))

    def recipients(self, k: int) -> int:
        """How many clients event ``k`` is for, counted from the topology alone."""
        if not self.topics:
            return self.clients
        j = k % self.topics
        return len(range(j, self.clients, self.topics))

    def events_map(self) -> EventMap:
        events = EventMap()
        events.add(
            OrderUpdated,
            "order-updated",
            order_payload,
            tenant="{tenantId}" if self.tenants else None,
            topics=["order:{orderId}"] if self.topics else (),
            allow=staff_only if self.allow else None,
        )
        return events


class Sink:
    """The ``write`` of every drained connection: counts frames, says when enough came."""

    def __init__(self) -> None:
        self.frames = 0
        self.target = 0
        self.done = anyio.Event()

    def expect(self, frames: int) -> None:
        self.target = self.frames + frames
        self.done = anyio.Event()
        if frames == 0:
            self.done.set()

    async def write(self, data: bytes) -> None:
        # Event frames: each has one data line here. The ``id:`` alone a stream starts
        # with (the client's position) has none and is not counted.
        self.frames += data.count(b"\ndata: ")
        if self.frames >= self.target:
            self.done.set()


def naive_publish(broadcaster: Broadcaster, event: object) -> Frame | None:
    """``publish`` without the index: every connection's subscription is asked."""
    tick = broadcaster.position + 1
    frame = broadcaster.render(event, tick)
    if frame is None:
        return None
    # What ``publish`` does to take the next position (there is no public setter); the
    # indexed ``publish`` of the next event then takes the one after it.
    broadcaster._latest = tick
    broadcaster.history.append(frame)
    allow = frame.allow
    for connection in broadcaster.registry.snapshot():
        subscription = connection.subscription
        if not subscription.matches(frame) or (allow is not None and not allow(subscription)):
            continue
        try:
            connection.offer(frame)
        except OutboxFull:
            raise RuntimeError(f"{connection.id} evicted; the benchmark is misconfigured") from None
    return frame


@dataclass
class Timings:
    """ns per call of each timed step, one sample per event."""

    render: list[int]
    select: list[int]
    index: list[int]
    naive: list[int]


async def measure(topology: Topology, events: int, warmup: int, unread: bool) -> Timings:
    """Open the topology's clients, publish ``warmup + events`` events both ways, time them."""
    sink = Sink()
    stop = anyio.Event()
    timings = Timings([], [], [], [])
    broadcaster = Broadcaster(
        InMemoryEventBus(),
        topology.events_map(),
        heartbeat=None,
        write_timeout=None,
        # Unread, every frame of the run stays queued; drained, at most one is.
        max_queue=2 * (events + warmup) + 16 if unread else 16,
    )

    all_open = anyio.Event()

    async def client(i: int) -> None:
        async with broadcaster.connect(subscription=topology.subscription(i)) as connection:
            if len(broadcaster.registry) == topology.clients:
                all_open.set()
            if unread:
                await stop.wait()
            else:
                await connection.run(sink.write)

    async def settle(k: int) -> None:
        if not unread:
            with anyio.fail_after(30):
                await sink.done.wait()
        for _ in range(3):
            await anyio.lowlevel.checkpoint()
        if not unread and sink.frames != sink.target:
            raise RuntimeError(
                f"{topology.key}: event {k} delivered {sink.frames - sink.target} extra frames"
            )

    def timed(step: Callable[[], object]) -> int:
        started = time.perf_counter_ns()
        step()
        return time.perf_counter_ns() - started

    async with broadcaster, anyio.create_task_group() as tasks:
        for i in range(topology.clients):
            tasks.start_soon(client, i)
        with anyio.fail_after(60):
            await all_open.wait()
        sink.expect(0)
        await settle(-1)

        select = broadcaster.registry.select
        ways: dict[str, Callable[[object], Frame | None]] = {
            "index": broadcaster.publish,
            "naive": lambda event: naive_publish(broadcaster, event),
        }
        gc.collect()
        gc.disable()
        try:
            for k in range(warmup + events):
                event = topology.event(k)
                expected = topology.recipients(k)
                frame = broadcaster.render(event)
                assert frame is not None
                tenant, topics = frame.tenant, frame.topics
                render_ns = timed(lambda: broadcaster.render(event))  # noqa: B023
                select_ns = timed(lambda: select(tenant, topics))  # noqa: B023
                if len(select(tenant, topics)) != expected:
                    raise RuntimeError(f"{topology.key}: select found the wrong connections")
                # Alternate which goes first, so neither always follows the other's wake-ups.
                order = ("index", "naive") if k % 2 == 0 else ("naive", "index")
                samples: dict[str, int] = {}
                for way in order:
                    publish = ways[way]
                    sink.expect(expected)
                    samples[way] = timed(lambda: publish(event))  # noqa: B023
                    await settle(k)
                if k >= warmup:
                    timings.render.append(render_ns)
                    timings.select.append(select_ns)
                    timings.index.append(samples["index"])
                    timings.naive.append(samples["naive"])
        finally:
            gc.enable()
        stop.set()
        await broadcaster.aclose()
    return timings


@dataclass(frozen=True)
class Row:
    scenario: str
    clients: int
    recipients: int
    samples: list[int]
    render: list[int]
    select: list[int] | None  # None: the naive scan does not select
    baseline: str  # the row this one is compared with as "no filtering"
    naive: str | None  # the naive row of the same topology (None: this is one)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)


def main() -> None:
    parser = argparse.ArgumentParser(description="Measure the fan-out cost of subscriptions.")
    parser.add_argument("--quick", action="store_true", help="fewer events per scenario")
    parser.add_argument("--unread", action="store_true", help="leave connections unread")
    parser.add_argument("--skip-10k", action="store_true", help="skip the 10,000-client rows")
    parser.add_argument("--backend", default="asyncio", choices=["asyncio", "trio"])
    args = parser.parse_args()
    events, events_10k, warmup = (200, 60, 20) if args.quick else (1000, 300, 50)

    topologies = [
        Topology("a", "no filtering", 1_000),
        Topology("b", "100 topics", 1_000, topics=100),
        Topology("c", "10 tenants x 100 topics", 1_000, topics=100, tenants=10),
        Topology("d", "100 topics + allow", 1_000, topics=100, allow=True),
    ]
    if not args.skip_10k:
        topologies += [
            Topology("f0", "no filtering", 10_000),
            Topology("f", "1,000 topics", 10_000, topics=1_000),
        ]

    print(f"Python {platform.python_version()} ({platform.python_implementation()})")
    print(f"Platform {platform.platform()}, {args.backend}, anyio {version('anyio')}")
    mode = "unread (frames stay queued)" if args.unread else "drained by a counting write"
    print(f"connections {mode}; {events} events per 1k scenario, {events_10k} per 10k")
    print(f"(after {warmup} warm-up events); ns = median of per-event perf_counter_ns\n")

    rows: dict[str, Row] = {}
    for topology in topologies:
        n = events_10k if topology.clients > 1_000 else events
        started = time.perf_counter()
        timings = anyio.run(measure, topology, n, warmup, args.unread, backend=args.backend)
        print(
            f"  {topology.key}: {topology.label}, {topology.clients} clients: "
            f"{time.perf_counter() - started:.1f} s"
        )
        baseline = "a" if topology.clients == 1_000 else "f0"
        recipients = topology.recipients(0)
        label = f"{topology.key}. {topology.label}"
        rows[topology.key] = Row(
            label + (", index" if topology.topics else ""),
            topology.clients,
            recipients,
            timings.index,
            timings.render,
            timings.select,
            baseline,
            f"{topology.key}-naive",
        )
        naive_key = f"{topology.key}-naive"
        naive_label = "e" if topology.key == "b" else f"{topology.key}'"
        rows[naive_key] = Row(
            f"{naive_label}. {topology.label}, naive scan",
            topology.clients,
            recipients,
            timings.naive,
            timings.render,
            None,
            baseline,
            None,
        )

    order = ["a", "b", "c", "d", "b-naive", "a-naive", "c-naive", "d-naive"]
    order += ["f0", "f", "f-naive", "f0-naive"]
    header = (
        f"{'scenario':<42}{'clients':>8}{'recip.':>7}{'ns/event':>11}{'best':>11}"
        f"{'ns/frame':>9}{'vs base':>9}{'vs naive':>9}{'render':>8}{'select':>8}"
    )
    print()
    print(header)
    print("-" * len(header))
    for key in order:
        row = rows.get(key)
        if row is None:
            continue
        base = rows[row.baseline].median
        vs_naive = rows[row.naive].median / row.median if row.naive else 1.0
        # Per delivered frame: what publish costs beyond rendering the event once.
        render = statistics.median(row.render)
        per_frame = (row.median - render) / row.recipients
        select = f"{statistics.median(row.select):,.0f}" if row.select else "-"
        print(
            f"{row.scenario:<42}{row.clients:>8,}{row.recipients:>7,}{row.median:>11,.0f}"
            f"{min(row.samples):>11,}{per_frame:>9,.0f}{base / row.median:>8.2f}x"
            f"{vs_naive:>8.2f}x{render:>8,.0f}{select:>8}"
        )
    print(
        "\nns/event: median ns per publish; best: fastest one; ns/frame: (ns/event - render)"
        "\n/ recipients; vs base: ns/event of the unfiltered row with as many clients / this"
        "\nrow's (how many times cheaper); vs naive: the naive scan of the same topology / this"
        "\nrow's; render: Broadcaster.render alone; select: registry.select alone (medians)."
    )
    if not args.unread:
        print("delivery check: every event reached exactly the clients its topology says")


if __name__ == "__main__":
    main()
