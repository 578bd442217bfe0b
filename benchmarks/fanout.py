"""Fan-out: how fast, how promptly and how cheaply one server streams every event to N clients.

Run ``python benchmarks/fanout.py`` (``--quick`` for a smoke run, ``--help`` for options).

For each scenario, each server variant of ``benchmarks/_fanout_apps.py`` runs in turn in a
fresh process under the same uvicorn (uvloop, httptools, one worker, log level warning) on
127.0.0.1: ``ssebus`` (Broadcaster + SseEndpoint), ``sse-starlette`` (its usual broadcast
recipe: a queue per client drained by an EventSourceResponse) and ``bare`` (pre-encoded
bytes in a queue per client, one ASGI ``send`` per frame: the ceiling). This process is the
load: N raw asyncio protocols (on uvloop) GET ``/sse``; then ``POST /publish`` makes the
server publish M events of about 100 bytes of JSON from a server-side task. Per variant:

* frames/s: frames received by all clients / (last receipt - publish start). Each client
  splits what it reads at the blank line ``\\n\\n`` and counts the frames by the publish
  timestamp they carry, so pings are not counted.
* latency p50/p99: receipt time - the event's ``time.monotonic()`` taken at publish
  (CLOCK_MONOTONIC is system-wide on Linux, so both processes read the same clock).
* idle RSS/client: (server VmRSS with N idle clients - VmRSS before any) / N.
* server CPU: utime + stime from /proc/<pid>/stat over the publish phase, also per frame;
  load CPU is this process's, to tell when the client rather than the server was the limit.

Scenarios: ``burst`` (M events as fast as possible; the publisher yields to the loop with
``await asyncio.sleep(0)`` every ``--yield-every`` events, identically in every variant),
``turn`` (the same, yielding after every event, as a handler that publishes one does),
``steady`` (``--rate`` events/s for ``--seconds``), ``slow`` (a burst while every 10th
client has stopped reading), ``10k`` (10 x the clients, a twentieth of the events).

In ``slow`` the stalled clients ``pause_reading()`` and have a 4 KiB receive buffer, and
the server's sockets a 16 KiB send buffer (SO_SNDBUF on the listening socket, inherited on
accept): with Linux's autotuned loopback buffers a stalled socket soaks up about 4 MB,
some 27,000 of these frames, before the server even notices. ssebus evicts a client whose
queue of ``max_queue`` (1,024) frames is full; the other two queue without bound.

``--profile DIR`` records the server with py-spy during each publish phase and prints its
top functions; ``--tracemalloc`` instead connects idle clients to servers that trace their
allocations and prints the sites that grew, per client. Figures, never assertions: the
machines are shared and noisy, so the tables quote ratios between variants of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import re
import resource
import signal
import socket
import statistics
import struct
import sys
import time
from array import array
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager, nullcontext
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any, cast

import uvloop

APPS = Path(__file__).with_name("_fanout_apps.py")
VARIANTS = ("ssebus", "ssebus-delay", "sse-starlette", "bare")
SCENARIOS = ("burst", "turn", "steady", "slow", "10k")
TIMESTAMP = re.compile(rb'"t":([0-9.]+)')
SSE_REQUEST = b"GET /sse HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n"
CONNECT_CONCURRENCY = 200
SETTLE_SECONDS = 0.5  # after connecting, before reading the idle RSS
QUIET_SECONDS = 3.0  # delivery is over once nothing arrived for this long after publishing


@dataclass(frozen=True)
class Scenario:
    """One workload: how many clients, how many events, how fast, and who stalls."""

    name: str
    title: str
    clients: int
    events: int
    rate: float = 0.0  # events/s; 0 is a burst
    stall_every: int = 0  # every n-th client stops reading (0: none)
    sndbuf: int = 0  # server SO_SNDBUF (0: the kernel's autotuning)
    rcvbuf: int = 0  # stalled clients' SO_RCVBUF
    yield_every: int = 0  # the publisher yields after this many events (0: --yield-every)


@dataclass
class Tally:
    """What all the clients of one run received, kept up to date as frames arrive."""

    frames: int = 0
    last: float = 0.0
    latencies: array[float] = field(default_factory=lambda: array("d"))


@dataclass
class Result:
    """One variant's figures in one scenario."""

    variant: str
    fast: int  # clients that read
    stalled: int
    events: int
    frames: int
    complete: int  # fast clients that received every event
    seconds: float  # publish start -> last receipt
    publish_seconds: float
    p50_ms: float
    p99_ms: float
    idle_rss: float  # bytes per client
    rss_growth: int  # bytes, over the publish phase
    cpu: float
    load_cpu: float
    dropped: list[float]  # seconds after publish start at which the server dropped a client
    backlog: int | None  # the longest queue of frames left for a client (None: not known)

    @property
    def rate(self) -> float:
        """Frames per second received by all the fast clients together."""
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_per_frame_us(self) -> float:
        """Server CPU microseconds per frame delivered."""
        return self.cpu / self.frames * 1e6 if self.frames else float("nan")


class SseClient(asyncio.Protocol):
    """A light SSE client: counts the frames it receives and how late each one is."""

    def __init__(self, tally: Tally, *, stall: bool) -> None:
        self.tally = tally
        self.stall = stall
        self.frames = 0
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self._buffer = b""
        self._streaming = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.write(SSE_REQUEST)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        if self._buffer:
            data = self._buffer + data
        if not self._streaming:
            head, blank, data = data.partition(b"\r\n\r\n")
            if not blank:
                self._buffer = head
                return
            if not head.startswith(b"HTTP/1.1 200"):
                self.ready.set_exception(ConnectionError(head.decode(errors="replace")))
                return
            self._streaming = True
            self.ready.set_result(None)
            if self.stall and self.transport is not None:
                self.transport.pause_reading()
        end = data.rfind(b"\n\n")
        if end < 0:
            self._buffer = data
            return
        self._buffer = data[end + 2 :]
        stamps = TIMESTAMP.findall(data, 0, end)
        if stamps:
            self.frames += len(stamps)
            tally = self.tally
            tally.frames += len(stamps)
            tally.last = now
            tally.latencies.extend([now - float(stamp) for stamp in stamps])

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(exc or ConnectionError("closed before the headers"))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()


async def connect(port: int, tally: Tally, *, stall: bool, rcvbuf: int) -> SseClient:
    """Open one stream; return once its response headers arrived."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # Reset on close: no TIME_WAIT, so runs after runs do not run out of ports.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    if stall and rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, ("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    _, client = await loop.create_connection(lambda: SseClient(tally, stall=stall), sock=sock)
    await asyncio.wait_for(client.ready, 60)
    return client


async def connect_all(port: int, scenario: Scenario, tally: Tally) -> list[SseClient]:
    """Open ``scenario.clients`` streams, a few hundred at a time."""
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def one(i: int) -> SseClient:
        stall = bool(scenario.stall_every) and i % scenario.stall_every == 0
        async with gate:
            return await connect(port, tally, stall=stall, rcvbuf=scenario.rcvbuf)

    return await asyncio.gather(*(one(i) for i in range(scenario.clients)))


class Server:
    """One variant's server process: its port, its control endpoints, its /proc figures."""

    def __init__(self, variant: str, *, sndbuf: int = 0, trace_memory: bool = False) -> None:
        self.variant = variant
        self.sndbuf = sndbuf
        self.trace_memory = trace_memory
        self.port = 0
        self._process: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    async def __aenter__(self) -> Server:
        env = dict(os.environ, PYTHONTRACEMALLOC="1") if self.trace_memory else None
        command = [sys.executable, str(APPS), self.variant, "--sndbuf", str(self.sndbuf)]
        self._process = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.PIPE, env=env
        )
        assert self._process.stdout is not None
        line = await asyncio.wait_for(self._process.stdout.readline(), 30)
        if not line.startswith(b"port "):
            raise RuntimeError(f"{self.variant} server did not start: {line!r}")
        self.port = int(line.split()[1])
        await self.request("GET", "/stats")  # answered once the lifespan has started
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        # Killed, not stopped: the figures are taken, and the bare variant never notices
        # that its clients left, so a graceful shutdown would only wait and then complain.
        assert self._process is not None
        self._process.kill()
        await self._process.wait()

    async def request(self, method: str, path: str, timeout: float = 600) -> Any:
        """Call a control endpoint; return its JSON answer."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(
                f"{method} {path} HTTP/1.1\r\nHost: bench\r\n"
                "Content-Length: 0\r\nConnection: close\r\n\r\n".encode()
            )
            raw = await asyncio.wait_for(reader.read(), timeout)
        finally:
            writer.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"{method} {path}: {head.decode(errors='replace')}")
        return json.loads(body)

    def rss(self) -> int:
        """The server's resident memory in bytes (VmRSS)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def cpu(self) -> float:
        """The server's CPU seconds so far (user + system)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    async def wait_connected(self, clients: int, timeout: float = 60) -> None:
        """Wait until the server sees ``clients`` open streams."""
        deadline = time.monotonic() + timeout
        while (await self.request("GET", "/stats"))["connected"] < clients:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.variant}: fewer than {clients} streams open")
            await asyncio.sleep(0.05)


def load_cpu() -> float:
    """This process's CPU seconds so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@asynccontextmanager
async def py_spy(pid: int, output: Path) -> AsyncIterator[None]:
    """Sample ``pid`` with py-spy (raw collapsed stacks into ``output``) while in the block."""
    spy = await asyncio.create_subprocess_exec(
        *[str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(pid)],
        *["--rate", "250", "--function", "--format", "raw", "-o", str(output)],
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    await asyncio.sleep(1)  # py-spy attaches
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)
        await spy.wait()


def top_functions(profile: Path, limit: int = 15) -> list[tuple[str, float, float]]:
    """(function, self %, total %) of the most expensive functions in a raw py-spy profile."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in profile.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        frames = [re.sub(r" \((.*/)?([^/]*?)(:\d+)?\)$", r" (\2)", f) for f in stack.split(";")]
        samples += int(count)
        own[frames[-1]] += int(count)
        for frame in set(frames):
            total[frame] += int(count)
    return [(f, n / samples * 100, total[f] / samples * 100) for f, n in own.most_common(limit)]


def percentile(ordered: Sequence[float], q: float) -> float:
    """The ``q`` quantile of already sorted values (NaN when there are none)."""
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def measure(scenario: Scenario, variant: str, args: argparse.Namespace) -> Result:
    """Run ``scenario`` against a fresh server of ``variant``."""
    tally = Tally()
    async with Server(variant, sndbuf=scenario.sndbuf) as server:
        await asyncio.sleep(SETTLE_SECONDS)
        rss_before = server.rss()
        clients = await connect_all(server.port, scenario, tally)
        try:
            await server.wait_connected(scenario.clients)
            await asyncio.sleep(SETTLE_SECONDS)
            rss_idle = server.rss()
            fast = [c for c in clients if not c.stall]
            expected = len(fast) * scenario.events
            recording = (
                py_spy(server.pid, Path(args.profile) / f"{scenario.name}-{variant}.txt")
                if args.profile
                else nullcontext()
            )
            async with recording:
                cpu, load = server.cpu(), load_cpu()
                query = f"count={scenario.events}&rate={scenario.rate}&size={args.size}"
                published = await server.request(
                    "POST",
                    f"/publish?{query}&yield_every={scenario.yield_every or args.yield_every}",
                )
                await wait_delivered(tally, expected)
                cpu, load = server.cpu() - cpu, load_cpu() - load
            rss_after = server.rss()
            stats = await server.request("GET", "/stats")
        finally:
            for client in clients:
                client.close()
    started = published["started"]
    latencies = sorted(tally.latencies)
    return Result(
        variant=variant,
        fast=len(fast),
        stalled=len(clients) - len(fast),
        events=scenario.events,
        frames=tally.frames,
        complete=sum(c.frames == scenario.events for c in fast),
        seconds=tally.last - started,
        publish_seconds=published["ended"] - started,
        p50_ms=percentile(latencies, 0.50) * 1e3,
        p99_ms=percentile(latencies, 0.99) * 1e3,
        idle_rss=(rss_idle - rss_before) / scenario.clients,
        rss_growth=rss_after - rss_idle,
        cpu=cpu,
        load_cpu=load,
        dropped=sorted(t - started for t in stats["dropped"] if t >= started),
        backlog=stats["backlog"],
    )


async def wait_delivered(tally: Tally, expected: int) -> None:
    """Return when every expected frame arrived, or nothing more did for a while."""
    seen, since = -1, time.monotonic()
    while tally.frames < expected and time.monotonic() - since < QUIET_SECONDS:
        if tally.frames != seen:
            seen, since = tally.frames, time.monotonic()
        await asyncio.sleep(0.02)


def median_result(results: list[Result]) -> Result:
    """One result from repeated runs: the median of each figure, the worst delivery."""
    if len(results) == 1:
        return results[0]

    def median(name: str) -> Any:
        return statistics.median(getattr(r, name) for r in results)

    frames = min(r.frames for r in results)
    rate = statistics.median(r.rate for r in results)
    return dataclasses.replace(
        results[0],
        frames=frames,
        complete=min(r.complete for r in results),
        seconds=frames / rate if rate else 0.0,  # so that .rate is the median rate
        **{
            name: median(name)
            for name in (
                "publish_seconds",
                "p50_ms",
                "p99_ms",
                "idle_rss",
                "rss_growth",
                "cpu",
                "load_cpu",
            )
        },
    )


def spread(runs: dict[str, list[Result]]) -> str:
    """ssebus's p99 latency and frames/s over each other variant, run by run."""
    ours = runs.get("ssebus", [])
    lines = []
    for variant, theirs in runs.items():
        if variant == "ssebus" or not ours:
            continue
        p99 = ", ".join(_ratio(a.p99_ms, b.p99_ms) for a, b in zip(ours, theirs, strict=True))
        rate = ", ".join(_ratio(a.rate, b.rate) for a, b in zip(ours, theirs, strict=True))
        lines.append(f"run by run, ssebus / {variant}: p99 {p99}; frames/s {rate}")
    return "\n".join(lines)


# -- the report ---------------------------------------------------------------------------


def table(scenario: Scenario, results: list[Result], burst: dict[str, Result]) -> str:
    """The scenario's figures, one column per variant, then ssebus's ratios to the others."""
    rows: list[tuple[str, Callable[[Result], str]]] = [
        ("frames delivered", lambda r: f"{r.frames / max(1, r.fast * r.events):.1%}"),
        ("frames/s", lambda r: f"{r.rate:,.0f}"),
        ("latency p50 ms", lambda r: f"{r.p50_ms:,.1f}"),
        ("latency p99 ms", lambda r: f"{r.p99_ms:,.1f}"),
        ("idle RSS/client KiB", lambda r: f"{r.idle_rss / 1024:.1f}"),
        ("RSS growth in publish MiB", lambda r: f"{r.rss_growth / 2**20:.1f}"),
        ("server CPU s", lambda r: f"{r.cpu:.2f}"),
        ("server CPU us/frame", lambda r: f"{r.cpu_per_frame_us:.2f}"),
        ("load CPU s", lambda r: f"{r.load_cpu:.2f}"),
        ("clients with every event", lambda r: f"{r.complete:,}/{r.fast:,}"),
    ]
    if scenario.stall_every:
        rows += [
            ("stalled clients dropped", lambda r: f"{len(r.dropped):,}/{r.stalled:,}"),
            ("dropped after s (median)", lambda r: _median(r.dropped)),
            ("dropped after s (last)", lambda r: f"{r.dropped[-1]:.2f}" if r.dropped else "-"),
            ("dropped after ~events", lambda r: _events_behind(r)),
            ("longest queue left", lambda r: "-" if r.backlog is None else f"{r.backlog:,}"),
        ]
        if burst:
            rows += [
                ("frames/s vs burst", lambda r: _change(r, burst, "rate")),
                ("latency p99 vs burst", lambda r: _change(r, burst, "p99_ms")),
            ]
    width = max(16, *(len(r.variant) + 2 for r in results))
    lines = [f"== {scenario.name}: {scenario.title} =="]
    lines.append(f"{'':<28}" + "".join(f"{r.variant:>{width}}" for r in results))
    lines += [
        f"{name:<28}" + "".join(f"{cell(r):>{width}}" for r in results) for name, cell in rows
    ]
    ours = next((r for r in results if r.variant == "ssebus"), None)
    for other in results:
        if ours is None or other is ours:
            continue
        lines.append(
            f"ssebus / {other.variant}: throughput = {_ratio(ours.rate, other.rate)}, "
            f"p99 latency = {_ratio(ours.p99_ms, other.p99_ms)}, "
            f"idle RSS/client = {_ratio(ours.idle_rss, other.idle_rss)}, "
            f"CPU/frame = {_ratio(ours.cpu_per_frame_us, other.cpu_per_frame_us)}"
        )
    return "\n".join(lines)


def _ratio(ours: float, theirs: float) -> str:
    return f"{ours / theirs:.2f}x" if theirs > 0 else "-"


def _median(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}" if values else "-"


def _events_behind(result: Result) -> str:
    """How many events had been published when the median stalled client was dropped."""
    if not result.dropped or result.publish_seconds <= 0:
        return "-"
    share = min(1.0, statistics.median(result.dropped) / result.publish_seconds)
    return f"{share * result.events:,.0f}"


def _change(result: Result, burst: dict[str, Result], metric: str) -> str:
    before = burst.get(result.variant)
    if before is None or not getattr(before, metric):
        return "-"
    return f"{getattr(result, metric) / getattr(before, metric) - 1:+.0%}"


# -- the command --------------------------------------------------------------------------


def plan(args: argparse.Namespace) -> list[Scenario]:
    """The scenarios asked for, sized by the options."""
    n, m, rate = args.clients, args.events, args.rate
    steady = max(1, round(rate * args.seconds))
    many, few = 10 * n, max(1, m // 20)
    every = f"yielding every {args.yield_every}"
    scenarios = {
        "burst": Scenario("burst", f"{n:,} clients, {m:,} events at once ({every})", n, m),
        "turn": Scenario(
            "turn",
            f"{n:,} clients, {m:,} events, the publisher yielding after each",
            n,
            m,
            yield_every=1,
        ),
        "steady": Scenario(
            "steady", f"{n:,} clients, {rate:g} events/s for {args.seconds:g} s", n, steady, rate
        ),
        "slow": Scenario(
            "slow",
            f"{n:,} clients of which every 10th stalls, {m:,} events at once ({every})",
            n,
            m,
            stall_every=10,
            sndbuf=16384,
            rcvbuf=4096,
        ),
        "10k": Scenario("10k", f"{many:,} clients, {few:,} events at once ({every})", many, few),
    }
    return [scenarios[name] for name in args.scenario]


async def run(args: argparse.Namespace) -> None:
    """Measure every scenario on every variant and print a table per scenario."""
    burst: dict[str, Result] = {}
    for scenario in plan(args):
        runs: dict[str, list[Result]] = {variant: [] for variant in args.variants}
        for _ in range(args.repeat):  # variants take turns, so noise hits them alike
            for variant in args.variants:
                runs[variant].append(await measure(scenario, variant, args))
        results = [median_result(runs[variant]) for variant in args.variants]
        if args.repeat > 1:
            print(spread(runs), flush=True)
        if scenario.name == "burst":
            burst = {r.variant: r for r in results}
        print(table(scenario, results, burst), end="\n\n", flush=True)
        if args.profile:
            for variant in args.variants:
                print(f"-- py-spy, {scenario.name}, {variant}: self %, total %")
                for name, own, total in top_functions(
                    Path(args.profile) / f"{scenario.name}-{variant}.txt"
                ):
                    print(f"{own:6.1f} {total:6.1f}  {name}")
            print(flush=True)


async def memory_sites(args: argparse.Namespace) -> None:
    """Print, per variant, the allocation sites that grow with idle clients, per client."""
    for variant in args.variants:
        scenario = Scenario("idle", "", args.clients, 0)
        async with Server(variant, trace_memory=True) as server:
            await server.request("GET", "/memory")
            clients = await connect_all(server.port, scenario, Tally())
            try:
                await server.wait_connected(args.clients)
                await asyncio.sleep(SETTLE_SECONDS)
                sites = await server.request("GET", "/memory")
            finally:
                for client in clients:
                    client.close()
        total = sum(size for _, size, _ in sites)
        print(f"-- tracemalloc, {variant}: {total / args.clients:,.0f} B/client traced")
        for site, size, blocks in sites[: args.sites]:
            print(f"{size / args.clients:8,.0f} B {blocks / args.clients:6.1f} blocks  {site}")
        print(flush=True)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Compare SSE fan-out across server variants.")
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--events", type=int, default=2000, help="events per burst")
    parser.add_argument("--size", type=int, default=100, help="bytes of JSON per event")
    parser.add_argument("--rate", type=float, default=20, help="events/s in steady")
    parser.add_argument("--seconds", type=float, default=5, help="duration of steady")
    parser.add_argument("--yield-every", type=int, default=10, help="burst: events per yield")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--scenario", default=",".join(SCENARIOS))
    parser.add_argument("--quick", action="store_true", help="200 clients, 200 events, 2 s")
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs per scenario; the tables show medians"
    )
    parser.add_argument("--profile", metavar="DIR", help="py-spy the servers while publishing")
    parser.add_argument(
        "--tracemalloc", action="store_true", help="only trace the memory of idle clients"
    )
    parser.add_argument(
        "--sites", type=int, default=12, help="allocation sites to list with --tracemalloc"
    )
    args = parser.parse_args()
    if args.quick:
        args.clients, args.events, args.seconds = 200, 200, 2
    args.variants = args.variants.split(",")
    args.scenario = args.scenario.split(",")
    for name in args.variants:
        if name not in VARIANTS:
            parser.error(f"unknown variant {name!r}; pick from {', '.join(VARIANTS)}")
    for name in args.scenario:
        if name not in SCENARIOS:
            parser.error(f"unknown scenario {name!r}; pick from {', '.join(SCENARIOS)}")
    return args


def main() -> None:
    args = parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    print(f"Python {platform.python_version()}, {platform.platform()}, {os.cpu_count()} CPUs")
    print(
        f"ssebus {version('ssebus')}, sse-starlette {version('sse-starlette')}, "
        f"uvicorn {version('uvicorn')}, uvloop {version('uvloop')}\n",
        flush=True,
    )
    uvloop.run(memory_sites(args) if args.tracemalloc else run(args))


if __name__ == "__main__":
    main()
