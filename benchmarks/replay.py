"""Replay cost and resume memory: what resuming far back costs the event loop and the heap.

Run ``python benchmarks/replay.py [--quick] [--redis URL]`` (needs ``ssebus[redis]``,
uvicorn, uvloop and httptools, and a Redis at URL, default ``redis://127.0.0.1:6379/0``);
``--help`` lists the knobs. The default run takes one to two minutes, ``--quick`` about 35 s.

Everything measured runs in this process, on one uvloop event loop, for two buses in turn:
``InMemoryEventBus`` (with an ``InMemoryHistory`` large enough to hold the whole log) and
``RedisEventBus(mode="streams")`` on a stream named for the run, filled by a second bus
instance and read by a broadcaster that keeps no history of its own
(``InMemoryHistory(0)``), so every replayed page is a Redis round trip, JSON decode and
render: the case of a client resuming on an instance that did not see the events. Each
bus is filled with ``--events`` events (about 100 bytes of JSON each) and a client's
``Last-Event-ID`` is ``broadcaster.position_id()`` taken before the fill: the oldest
position. (a) and (b) each get a log of their own (two streams in Redis), and every
``{<stream>}:*`` key of the run is deleted at the end.

(a) Replay cost. SSE clients are ASGI requests to ``SseEndpoint`` made in process (their
``send`` counts the frames; no sockets), so the loop does only the server's work. A
*ticker* task sleeps 1 ms in a loop and records how late it wakes: the longest lateness is
the longest loop stall. The *other request* is a real HTTP ``GET /ping`` to a trivial
ASGI route served by uvicorn (httptools) in this process's loop, sent over loopback every
2 ms by a separate prober process (so its timing is not the loop's). Its latency is taken
twice: *ping*, from the prober's send to its reading the last byte; and *in server*, from
that send until the server had written the answer (uvicorn writes within the app's
``send``; on Linux the monotonic clock is shared by every process), which leaves out the
prober's own wake-up. The prober runs at the lowest real-time priority (``SCHED_FIFO`` 1,
where permitted, e.g. as root; ``--plain-prober`` not to): on a 2-core machine the server
keeps one core busy while clients resume and Redis the other, and a prober at normal
priority then waits for a core before it reads its answer, which a remote client would
not. The report names the scheduling it got. Both latencies are recorded during rounds of
1 resume from the oldest position, then of ``--concurrent`` simultaneous ones, each round
run until every client has every event, until the rounds add up to ``--window`` seconds.
The rounds run in blocks of at least ``--block`` seconds, each followed by an idle gap as
long as the block: the idle row pools the gaps, so the baseline comes from the same minutes
of the machine's other load as the resumes. The longest garbage collection in each window
is reported too (``gc.callbacks``). ``--dump FILE`` writes (a)'s raw figures as JSON (with
every probe's send time and each round's span), to pool several runs or see where the slow
ones fell.

(c) With ``--turns``, on (a)'s log after (a): a task that yields at every turn of the loop
records the loop thread's CPU time between two of its steps (``time.thread_time``, which
does not count time the process was not running), during 1 and ``--concurrent`` resumes:
how much work a request that became ready waits behind, in a way other jobs on the machine
do not blur.

(b) Resume memory. ``--stalled`` clients resume from the oldest position on a broadcaster
with ``max_queue=16`` and ``write_timeout=2`` while live events are published at 200/s;
each client's ``send`` accepts its first ``N`` body bytes and then never returns (N = 0,
the first write hangs, and 64 KiB, about what a socket buffer takes). Resident memory
(``psutil`` if installed, else ``/proc/self/statm``) is sampled every 10 ms from before the
clients connect until the write watchdog has evicted them all; a second, identical pass
runs under ``tracemalloc`` for the peak of Python allocations. The bound they are held
against is ``clients x (max_queue + replay_page) x frame size``: a full outbox and one
page being written, per client. ``--stalled 0`` skips (b).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import gc
import json
import logging
import math
import os
import platform
import secrets
import socket
import sys
import time
import tracemalloc
from array import array
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from typing import Any

import anyio
import coredis
import uvicorn
import uvloop

from ssebus import Broadcaster, EventMap, InMemoryEventBus, InMemoryHistory, SseEndpoint
from ssebus._types import Message, Receive, Scope, Send
from ssebus.redis import RedisEventBus

BUSES = {"memory": "in-memory", "streams": "redis streams"}
PAGE = 100  # replay_page (the default)
CONCURRENCY = 2  # replay_concurrency (the default)
MAX_QUEUE = 16
WRITE_TIMEOUT = 2.0
LIVE_RATE = 200.0  # live events/s during (b)
TICK = 0.001  # the ticker's sleep
SETTLE = 0.05  # after a block of resumes, before its idle gap is measured
PROBE_INTERVAL = 0.002
SOCKET_BUFFER = 64 << 10


@dataclass(frozen=True, slots=True)
class OrderUpdated:
    """The benchmark's domain event: about 100 bytes of JSON."""

    seq: int
    sku: str
    status: str
    note: str


def order(seq: int) -> OrderUpdated:
    return OrderUpdated(seq, f"SKU-{seq % 997:05d}", "shipped", f"parcel {seq} left the depot")


def order_payload(event: OrderUpdated) -> dict[str, Any]:
    return {"seq": event.seq, "sku": event.sku, "status": event.status, "note": event.note}


EVENTS = EventMap({OrderUpdated: ("order", order_payload)})


# -- the prober process: the "other request", over a real socket ---------------------------


def realtime() -> str:
    """Move this process to ``SCHED_FIFO``, the lowest real-time priority: it then runs as
    soon as it wakes, so a busy core (the server, Redis) does not delay its reading of an
    answer. Says which scheduling it got."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
    except (AttributeError, OSError) as exc:  # not Linux, or not permitted
        return f"normal ({type(exc).__name__}: SCHED_FIFO refused)"
    return "SCHED_FIFO"


def probe(port: int, interval: float, rt: bool) -> None:
    """Send ``GET /ping?<n>`` every ``interval`` seconds on one keep-alive connection and
    print ``scheduling <which>``, then ``<n> <monotonic start> <seconds to the last byte>``
    for each, until killed (``rt``: at real-time priority, where permitted)."""
    print(f"scheduling {realtime() if rt else 'normal'}", flush=True)
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    due = time.monotonic()
    with contextlib.suppress(BrokenPipeError, KeyboardInterrupt):
        for n in range(10**12):
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            request = f"GET /ping?{n} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
            start = time.monotonic()
            sock.sendall(request)
            answer = b""
            while not answer.endswith(b"pong"):
                chunk = sock.recv(4096)
                if not chunk:
                    return
                answer += chunk
            end = time.monotonic()
            print(f"{n} {start:.6f} {end - start:.7f}", flush=True)
            due = max(due + interval, end)


# -- the measuring process ------------------------------------------------------------------

Spans = Sequence[tuple[float, float]]  # (start, end) on the monotonic clock


def within(at: float, spans: Spans) -> bool:
    """Whether ``at`` falls in one of ``spans`` (sorted by start)."""
    i = bisect.bisect_right(spans, (at, math.inf)) - 1
    return i >= 0 and at <= spans[i][1]


class Collections:
    """Every collection of the garbage collector while installed: (ended at, seconds)."""

    def __init__(self) -> None:
        self.done: list[tuple[float, float]] = []
        self._began = 0.0

    def __enter__(self) -> Collections:
        gc.callbacks.append(self._note)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._note)

    def _note(self, phase: str, info: dict[str, int]) -> None:
        now = time.perf_counter()
        if phase == "start":
            self._began = now
        else:
            self.done.append((time.monotonic(), now - self._began))

    def during(self, spans: Spans) -> list[float]:
        return sorted(seconds for at, seconds in self.done if within(at, spans))


class Ticker:
    """Sleeps ``TICK`` in a loop; records when it woke and how late, for every wake-up (in
    arrays: a tuple per wake-up would be an object for the collector, and the collections
    its growth set off would land in the windows measured)."""

    def __init__(self) -> None:
        self.woke = array("d")
        self.late = array("d")

    async def run(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(TICK)
            now = time.monotonic()
            self.woke.append(now)
            self.late.append(now - before - TICK)

    def lateness(self, spans: Spans) -> list[float]:
        return sorted(
            late for at, late in zip(self.woke, self.late, strict=True) if within(at, spans)
        )


class Prober:
    """The prober process and what it reported: (started at, seconds) per request; and when
    the app had handed each its whole answer (``answered``, by the probe's number; on Linux
    ``CLOCK_MONOTONIC`` is one clock for every process)."""

    def __init__(self, process: asyncio.subprocess.Process, answered: dict[int, float]) -> None:
        self.process = process
        self.sent = array("d")  # per request, as the ticker's figures
        self.took = array("d")
        self.answered = answered
        #: seconds from the probe's send until the server had written the answer, by send
        #: time: the latency without the prober's own wake-up (the client's side)
        self.served: dict[float, float] = {}
        self.scheduling = "?"

    async def read(self) -> None:
        assert self.process.stdout is not None
        first = (await self.process.stdout.readline()).decode()  # "scheduling <which>"
        self.scheduling = first.partition(" ")[2].strip() or "?"
        async for line in self.process.stdout:
            n, start, seconds = line.split()
            self.sent.append(float(start))
            self.took.append(float(seconds))
            at = self.answered.pop(int(n), None)
            if at is not None:
                self.served[float(start)] = at - float(start)

    def latencies(self, spans: Spans) -> list[float]:
        return sorted(seconds for _, seconds, _ in self.during(spans))

    def during(self, spans: Spans) -> list[tuple[float, float, float]]:
        """(sent at, seconds to the last byte, seconds until it was answered) per probe."""
        return [
            (at, seconds, self.served.get(at, math.nan))
            for at, seconds in zip(self.sent, self.took, strict=True)
            if within(at, spans)
        ]

    def in_server(self, spans: Spans) -> list[float]:
        return sorted(wait for at, wait in self.served.items() if within(at, spans))


class Client:
    """One in-process SSE client: counts the event frames it is sent. With ``accept``, its
    ``send`` takes that many body bytes and then hangs until it is cancelled."""

    def __init__(self, target: int, accept: int | None = None) -> None:
        self.target = target
        self.accept = accept
        self.frames = 0
        self.bytes = 0
        self.resets = 0
        self.started = time.monotonic()
        self.finished: float | None = None  # got every event
        self.stalled: float | None = None  # its write began to hang
        self.ended: float | None = None  # the request returned
        self.done = anyio.Event()
        self.gone = anyio.Event()

    async def receive(self) -> Message:
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        if message["type"] != "http.response.body":
            return
        body: bytes = message.get("body", b"")
        if self.accept is not None and self.bytes + len(body) > self.accept:
            self.stalled = time.monotonic()
            await anyio.sleep_forever()
        self.bytes += len(body)
        self.frames += body.count(b"\ndata: ")
        if b"event: reset\n" in body:
            self.resets += 1
        if self.frames >= self.target and not self.done.is_set():
            self.finished = time.monotonic()
            self.done.set()

    async def resume(
        self, app: Callable[[Scope, Receive, Send], Awaitable[None]], last: str
    ) -> None:
        scope: Scope = {
            "type": "http",
            "method": "GET",
            "path": "/events",
            "query_string": b"",
            "headers": [(b"accept", b"text/event-stream"), (b"last-event-id", last.encode())],
        }
        self.started = time.monotonic()
        try:
            await app(scope, self.receive, self.send)
        finally:
            self.ended = time.monotonic()


@dataclass
class Setup:
    """One bus, its broadcaster, the app serving it, and how to publish live."""

    kind: str
    broadcaster: Broadcaster
    publish: Callable[[object], Awaitable[None]]
    oldest: str  # the Last-Event-ID of the oldest position
    app: Callable[[Scope, Receive, Send], Awaitable[None]]
    answered: dict[int, float]  # when the app had written probe n's answer
    fill_seconds: float = 0.0


def make_app(
    endpoint: SseEndpoint, answered: dict[int, float]
) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """``/ping?<n>`` answers ``pong`` (the other request) and notes in ``answered`` when
    the server had written it (uvicorn writes to the socket within ``send``); everything
    else is the SSE endpoint."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/ping":
            headers = [(b"content-type", b"text/plain"), (b"content-length", b"4")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b"pong"})
            answered[int(scope["query_string"] or 0)] = time.monotonic()
            return
        await endpoint(scope, receive, send)

    return app


@asynccontextmanager
async def open_setup(kind: str, url: str, name: str, events: int) -> AsyncIterator[Setup]:
    """A running broadcaster on bus ``kind`` whose log holds ``events`` events."""
    retain = 4 * events  # room for the live events of (b) without trimming the oldest
    async with AsyncExitStack() as stack:
        publisher: InMemoryEventBus | RedisEventBus
        if kind == "memory":
            bus: InMemoryEventBus | RedisEventBus = InMemoryEventBus()
            history = InMemoryHistory(retain, max_total=retain)
            publisher = bus
        else:
            bus = RedisEventBus(url, mode="streams", stream=name, maxlen=retain)
            publisher = RedisEventBus(url, mode="streams", stream=name, maxlen=retain)
            for each in (bus, publisher):
                each.register(OrderUpdated)
            history = InMemoryHistory(0)  # every page from Redis
        await stack.enter_async_context(bus)
        if publisher is not bus:
            await stack.enter_async_context(publisher)
        broadcaster = Broadcaster(
            bus,
            EVENTS,
            history=history,
            heartbeat=None,
            max_queue=MAX_QUEUE,
            write_timeout=WRITE_TIMEOUT,
            max_replay=retain,
            replay_page=PAGE,
            replay_concurrency=CONCURRENCY,
        )
        await stack.enter_async_context(broadcaster)
        oldest = broadcaster.position_id()
        started = time.monotonic()
        batch = 1 if kind == "memory" else 20
        for first in range(0, events, batch):
            await asyncio.gather(
                *(publisher.publish(order(seq)) for seq in range(first, min(first + batch, events)))
            )
        while broadcaster.position < events:  # noqa: ASYNC110 - the listener has no event
            await asyncio.sleep(0.01)
        answered: dict[int, float] = {}
        app = make_app(SseEndpoint(broadcaster), answered)
        setup = Setup(kind, broadcaster, publisher.publish, oldest, app, answered)
        setup.fill_seconds = time.monotonic() - started
        yield setup


# -- (a) replay cost ------------------------------------------------------------------------


@dataclass
class CostRow:
    """One window of (a): what the clients got, the loop's lateness, the probes' latency."""

    label: str
    clients: int
    seconds: float
    frames: list[int] = field(default_factory=list)
    resets: int = 0
    resume: list[float] = field(default_factory=list)  # seconds per client to every event
    lateness: list[float] = field(default_factory=list)
    collections: list[float] = field(default_factory=list)  # seconds each
    probes: list[float] = field(default_factory=list)
    #: (sent at, seconds, seconds until the app began) of every probe, and (first started,
    #: last finished) of every round, on the monotonic clock: where the slow probes fall.
    timeline: list[tuple[float, float, float]] = field(default_factory=list)
    #: seconds from each probe's send until the server had written its answer
    served: list[float] = field(default_factory=list)
    rounds: list[tuple[float, float]] = field(default_factory=list)


async def resumes(setup: Setup, count: int, events: int) -> list[Client]:
    """``count`` clients resume at once from the oldest position, until each has every event."""
    clients = [Client(events) for _ in range(count)]
    async with anyio.create_task_group() as tasks:
        for client in clients:
            tasks.start_soon(client.resume, setup.app, setup.oldest)
        for client in clients:
            with anyio.move_on_after(300):
                await client.done.wait()
            client.gone.set()
    return clients


async def replay_cost(
    setup: Setup,
    ticker: Ticker,
    collections: Collections,
    prober: Prober,
    events: int,
    concurrent: int,
    block: float,
    least: float,
) -> list[CostRow]:
    """Rounds of 1, then of ``concurrent``, simultaneous resumes, each round starting when
    the last one's clients all have every event, until they add up to ``least`` seconds (so
    that they hold enough probes). The rounds run in blocks of at least ``block`` seconds,
    and each block is followed by an idle gap as long as it: the idle row pools the gaps,
    so it was measured in the same moments of the machine's other load as the resumes."""
    idle: list[tuple[float, float]] = []

    async def rest(seconds: float) -> None:
        await asyncio.sleep(SETTLE)  # the last round's requests end
        start = time.monotonic()
        await asyncio.sleep(seconds)
        idle.append((start, time.monotonic()))

    measured: list[tuple[int, list[tuple[float, float]], list[Client]]] = []
    for count in (1, concurrent):
        clients: list[Client] = []
        spans: list[tuple[float, float]] = []
        total = 0.0
        while total < least:
            started = len(spans)
            begun = time.monotonic()
            while len(spans) == started or time.monotonic() - begun < block:
                batch = await resumes(setup, count, events)
                span = (
                    min(c.started for c in batch),
                    max(c.finished or c.ended or c.started for c in batch),
                )
                spans.append(span)
                total += span[1] - span[0]
                clients += batch
            await rest(time.monotonic() - begun)
        measured.append((count, spans, clients))

    def window(label: str, count: int, spans: Spans, clients: Sequence[Client]) -> CostRow:
        return CostRow(
            label,
            count,
            sum(end - start for start, end in spans),
            frames=[c.frames for c in clients],
            resets=sum(c.resets for c in clients),
            resume=sorted((c.finished or math.nan) - c.started for c in clients),
            lateness=ticker.lateness(spans),
            collections=collections.during(spans),
            probes=prober.latencies(spans),
            timeline=prober.during(spans),
            served=prober.in_server(spans),
            rounds=list(spans),
        )

    # Only now, with nothing left to measure: sorting the figures takes the loop a while.
    rows = [window(f"idle, {len(idle)} gaps", 0, idle, [])]
    for count, spans, clients in measured:
        label = f"{count} resume{'s' if count > 1 else ''} x {len(spans)}"
        rows.append(window(label, count, spans, clients))
    return rows


# -- (c) CPU per loop turn ------------------------------------------------------------------


@dataclass
class TurnRow:
    """One window of (c): the loop thread's CPU time of every turn while clients resume."""

    clients: int
    seconds: float
    turns: list[float] = field(default_factory=list)


async def turn_cost(setup: Setup, events: int, concurrent: int) -> list[TurnRow]:
    """A task that yields every turn records the loop thread's CPU time between two of its
    steps (``time.thread_time``: time the process was not running is not counted, so the
    figures hold on a busy machine), during 1 and ``concurrent`` simultaneous resumes."""

    async def spin(row: TurnRow, stop: asyncio.Event) -> None:
        last = time.thread_time()
        while not stop.is_set():
            await asyncio.sleep(0)
            now = time.thread_time()
            row.turns.append(now - last)
            last = now

    rows = []
    for count in (1, concurrent):
        row = TurnRow(count, 0.0)
        stop = asyncio.Event()
        spinner = asyncio.create_task(spin(row, stop))
        start = time.monotonic()
        await resumes(setup, count, events)
        row.seconds = time.monotonic() - start
        stop.set()
        await spinner
        row.turns.sort()
        rows.append(row)
    return rows


# -- (b) resume memory ----------------------------------------------------------------------


def rss() -> int:
    """This process's resident set size, in bytes."""
    try:
        import psutil  # type: ignore[import-untyped, unused-ignore]
    except ImportError:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return int(psutil.Process().memory_info().rss)


@dataclass
class MemoryRow:
    """One pass of (b)."""

    accept: int
    clients: int
    stalled: int = 0
    frames_before_stall: float = 0.0
    rss_growth: int = 0
    traced_peak: int = 0
    traced_held: int = 0  # while every client was stalled
    evicted: int = 0
    evicted_after: float = 0.0  # the longest time from a stall to its request ending
    write_errors: int = 0


async def live_traffic(setup: Setup, first: int) -> None:
    start = time.monotonic()
    for n in range(10**9):
        delay = start + n / LIVE_RATE - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await setup.publish(order(first + n))


async def stalled_pass(
    setup: Setup, count: int, accept: int, events: int, traced: bool
) -> MemoryRow:
    row = MemoryRow(accept, count)
    errors = setup.broadcaster.metrics().write_errors
    gc.collect()
    baseline = rss()
    peak_rss = baseline
    if traced:
        tracemalloc.start()
        traced_base = tracemalloc.get_traced_memory()[0]
    clients = [Client(events, accept) for _ in range(count)]

    async def sample() -> None:
        nonlocal peak_rss
        while True:
            peak_rss = max(peak_rss, rss())
            await asyncio.sleep(0.01)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(sample)
        tasks.start_soon(live_traffic, setup, 10 * events)
        async with anyio.create_task_group() as requests:
            for client in clients:
                requests.start_soon(client.resume, setup.app, setup.oldest)
            with anyio.move_on_after(10):
                while not all(c.stalled for c in clients):  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
            await asyncio.sleep(0.5)  # live traffic while every client is stalled
            if traced:
                row.traced_held = tracemalloc.get_traced_memory()[0] - traced_base
            with anyio.move_on_after(2 * WRITE_TIMEOUT + 5):
                while not all(c.ended for c in clients):  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
            released = time.monotonic()  # requests still open now were not evicted
            for client in clients:
                client.gone.set()
        peak_rss = max(peak_rss, rss())
        tasks.cancel_scope.cancel()
    if traced:
        row.traced_peak = tracemalloc.get_traced_memory()[1] - traced_base
        tracemalloc.stop()
    row.rss_growth = peak_rss - baseline
    waits = [
        c.ended - c.stalled
        for c in clients
        if c.stalled is not None and c.ended is not None and c.ended < released
    ]
    row.stalled = sum(c.stalled is not None for c in clients)
    row.frames_before_stall = sum(c.frames for c in clients) / count
    row.evicted = len(waits)
    row.evicted_after = max(waits, default=math.nan)
    row.write_errors = setup.broadcaster.metrics().write_errors - errors
    return row


# -- report ---------------------------------------------------------------------------------


def percentile(ordered: Sequence[float], p: float) -> float:
    """The nearest-rank ``p``-th percentile (0 < p <= 100) of sorted values."""
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)] if ordered else math.nan


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def mib(size: float) -> str:
    return f"{size / (1 << 20):.2f}"


def report_cost(results: dict[str, list[CostRow]], events: int, scheduling: str) -> None:
    print(
        f"\n(a) Replay cost: resuming from the oldest of {events:,} events (times in ms; the"
        f" prober's scheduling: {scheduling}; *in server*: from the ping's send until the"
        " server had written the answer)\n"
    )
    print(
        "| bus | window | s | frames per client | resets | resume p50 / max | loop stall max |"
        " p99 | stalls > 10 ms | pings | ping p50 | p99 | max | p50 / idle | p99 / idle |"
        " in server p99 | / idle | longest GC |"
    )
    print(
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    for kind, rows in results.items():
        idle = rows[0]
        for row in rows:
            frames = f"{min(row.frames):,}" if row.frames else ""
            if row.frames and max(row.frames) != min(row.frames):
                frames += f"-{max(row.frames):,}"
            resume = (
                f"{ms(percentile(row.resume, 50))} / {ms(row.resume[-1])}" if row.resume else ""
            )
            cells = [
                BUSES[kind],
                row.label,
                f"{row.seconds:.2f}",
                frames,
                str(row.resets) if row.clients else "",
                resume,
                ms(row.lateness[-1]),
                ms(percentile(row.lateness, 99)),
                str(sum(late > 0.010 for late in row.lateness)),
                str(len(row.probes)),
                ms(percentile(row.probes, 50)),
                ms(percentile(row.probes, 99)),
                ms(row.probes[-1] if row.probes else math.nan),
                f"{percentile(row.probes, 50) / percentile(idle.probes, 50):.2f}x",
                f"{percentile(row.probes, 99) / percentile(idle.probes, 99):.2f}x",
                ms(percentile(row.served, 99)),
                f"{percentile(row.served, 99) / percentile(idle.served, 99):.2f}x",
                ms(row.collections[-1]) if row.collections else "",
            ]
            print("| " + " | ".join(cells) + " |")


def report_turns(results: dict[str, list[TurnRow]], events: int) -> None:
    print(
        f"\n(c) CPU time of each loop turn while clients resume from the oldest of {events:,}"
        " events (us)\n"
    )
    print("| bus | resumes | s | turns | p50 | p99 | p99.9 | max | turns over 1 ms |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for kind, rows in results.items():
        for row in rows:
            us = [f"{percentile(row.turns, p) * 1e6:.0f}" for p in (50, 99, 99.9)]
            cells = [
                BUSES[kind],
                str(row.clients),
                f"{row.seconds:.2f}",
                str(len(row.turns)),
                *us,
                f"{row.turns[-1] * 1e6:.0f}",
                str(sum(t > 0.001 for t in row.turns)),
            ]
            print("| " + " | ".join(cells) + " |")


def report_memory(
    results: dict[str, list[tuple[MemoryRow, MemoryRow]]], frame: int, events: int
) -> None:
    print(
        f"\n(b) Resume memory: stalled clients resuming from the oldest of {events:,} events,"
        f" max_queue={MAX_QUEUE},\nreplay_page={PAGE}, write_timeout={WRITE_TIMEOUT:g} s,"
        f" {LIVE_RATE:g} live events/s; frame {frame} bytes (sizes in MiB)\n"
    )
    print(
        "| bus | clients | write hangs after | stalled | frames before | RSS growth |"
        " tracemalloc peak | held while stalled | held per client KiB | bound |"
        " bound per client KiB | evicted | after s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for kind, rows in results.items():
        for plain, traced in rows:
            bound = plain.clients * (MAX_QUEUE + PAGE) * frame
            cells = [
                BUSES[kind],
                str(plain.clients),
                f"{plain.accept // 1024} KiB",
                f"{plain.stalled}/{plain.clients}",
                f"{plain.frames_before_stall:.0f}",
                mib(plain.rss_growth),
                mib(traced.traced_peak),
                mib(traced.traced_held),
                f"{traced.traced_held / plain.clients / 1024:.1f}",
                mib(bound),
                f"{(MAX_QUEUE + PAGE) * frame / 1024:.1f}",
                f"{plain.evicted}/{plain.clients}",
                f"{plain.evicted_after:.2f}",
            ]
            print("| " + " | ".join(cells) + " |")


async def run(
    url: str,
    events: int,
    concurrent: int,
    stalled: int,
    block: float,
    least: float,
    dump: str | None = None,
    turns: bool = False,
    freeze: bool = False,
    plain_prober: bool = False,
) -> None:
    logging.getLogger("ssebus").setLevel(logging.ERROR)  # (b) times out every client
    name = f"ssebus-bench-replay-{secrets.token_hex(4)}"
    redis: coredis.Redis[str] = coredis.Redis.from_url(url, decode_responses=True)
    ticker = Ticker()
    collections = Collections()
    cost: dict[str, list[CostRow]] = {}
    memory: dict[str, list[tuple[MemoryRow, MemoryRow]]] = {}
    turn_rows: dict[str, list[TurnRow]] = {}
    frame = 0
    scheduling = "?"
    async with redis, AsyncExitStack() as stack:
        stack.enter_context(collections)
        info: dict[str, Any] = await redis.info("server")
        print(
            f"Python {platform.python_version()}, Redis {info['redis_version']}, coredis"
            f" {version('coredis')}, uvloop {version('uvloop')}, {os.cpu_count()} CPUs"
            f" {platform.machine()}, load average {os.getloadavg()[0]:.2f}; {events:,} events,"
            f" {concurrent} concurrent resumes, {stalled} stalled clients"
        )

        async def delete_keys() -> None:
            for stream in (f"{name}-a", f"{name}-b"):
                keys = [key async for key in redis.scan_iter(match=f"{{{stream}}}:*")]
                if keys:
                    await redis.delete(keys)
                print(f"deleted {len(keys)} Redis keys {{{stream}}}:*", file=sys.stderr)

        stack.push_async_callback(delete_keys)
        tasks = await stack.enter_async_context(anyio.create_task_group())
        stack.callback(tasks.cancel_scope.cancel)
        tasks.start_soon(ticker.run)
        for kind in BUSES:
            if stalled:  # --stalled 0: (a) only
                # (b) first, while the heap has not grown for (a), so that RSS can show growth
                async with open_setup(kind, url, f"{name}-b", events) as setup:
                    print(f"  {kind}: filled in {setup.fill_seconds:.1f} s", file=sys.stderr)
                    frame_of = setup.broadcaster.render(order(events), events)
                    assert frame_of is not None
                    frame = len(frame_of.data)
                    rows = []
                    for accept in (0, SOCKET_BUFFER):
                        plain = await stalled_pass(setup, stalled, accept, events, traced=False)
                        traced = await stalled_pass(setup, stalled, accept, events, traced=True)
                        rows.append((plain, traced))
                    memory[kind] = rows
                    print(f"  {kind}: resume memory done", file=sys.stderr)
            # (a) on a log of its own: (b)'s live events are not in it
            async with open_setup(kind, url, f"{name}-a", events) as setup:
                listener = socket.create_server(("127.0.0.1", 0))
                config = uvicorn.Config(
                    setup.app, http="httptools", lifespan="off", log_level="warning"
                )
                server = uvicorn.Server(config)
                serving = asyncio.create_task(server.serve(sockets=[listener]))
                while not server.started:  # noqa: ASYNC110 - uvicorn offers a flag
                    await asyncio.sleep(0.01)
                process = await asyncio.create_subprocess_exec(
                    sys.executable,
                    __file__,
                    "--probe",
                    str(listener.getsockname()[1]),
                    *(["--plain-prober"] if plain_prober else []),
                    stdout=asyncio.subprocess.PIPE,
                )
                prober = Prober(process, setup.answered)
                reading = asyncio.create_task(prober.read())
                try:
                    await asyncio.sleep(0.5)  # the prober connects
                    if freeze:  # what README advises an app: nothing alive now is scanned again
                        gc.collect()
                        gc.freeze()
                    cost[kind] = await replay_cost(
                        setup, ticker, collections, prober, events, concurrent, block, least
                    )
                finally:
                    if freeze:
                        gc.unfreeze()
                    process.terminate()
                    await process.wait()
                    await reading
                    server.should_exit = True
                    await serving
                scheduling = prober.scheduling
                print(f"  {kind}: replay cost done", file=sys.stderr)
                if turns:
                    turn_rows[kind] = await turn_cost(setup, events, concurrent)
    report_cost(cost, events, scheduling)
    if turn_rows:
        report_turns(turn_rows, events)
    if dump is not None:
        raw = {kind: [asdict(row) for row in rows] for kind, rows in cost.items()}
        await anyio.Path(dump).write_text(json.dumps(raw))
    if memory:
        report_memory(memory, frame, events)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 events, 5 and 15 clients")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0", metavar="URL")
    parser.add_argument("--events", type=int, default=10_000, help="in the log (default 10,000)")
    parser.add_argument("--concurrent", type=int, default=20, help="resumes at once (default 20)")
    parser.add_argument(
        "--stalled", type=int, default=60, help="stalled clients (default 60; 0: skip (b))"
    )
    parser.add_argument(
        "--block",
        type=float,
        default=0.3,
        help="least seconds of resumes between two idle gaps (default 0.3)",
    )
    parser.add_argument(
        "--window", type=float, default=3.0, help="least seconds of resume rounds (default 3)"
    )
    parser.add_argument(
        "--dump", metavar="FILE", help="write (a)'s raw latencies (seconds) there as JSON"
    )
    parser.add_argument(
        "--turns", action="store_true", help="also (c): the loop's CPU time per turn"
    )
    parser.add_argument(
        "--gc-freeze",
        action="store_true",
        help="(a): gc.collect() and gc.freeze() once the log is filled, as README advises",
    )
    parser.add_argument(
        "--plain-prober",
        action="store_true",
        help="leave the prober at normal priority (default: SCHED_FIFO where permitted)",
    )
    parser.add_argument("--probe", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        probe(args.probe, PROBE_INTERVAL, rt=not args.plain_prober)
        return
    if args.quick:  # other defaults; what the command line says still holds
        parser.set_defaults(events=2_000, concurrent=5, stalled=15, window=1.0)
        args = parser.parse_args()
    uvloop.run(
        run(
            args.redis,
            args.events,
            args.concurrent,
            args.stalled,
            args.block,
            args.window,
            args.dump,
            args.turns,
            args.gc_freeze,
            args.plain_prober,
        )
    )


if __name__ == "__main__":
    main()
