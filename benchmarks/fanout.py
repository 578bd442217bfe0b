"""Fan-out: how fast, how promptly and how cheaply one server streams every event to N clients.

Run ``python benchmarks/fanout.py`` (``--quick`` for a smoke run, ``--help`` for options).

For each scenario, each server variant of ``benchmarks/_fanout_apps.py`` runs in turn in a
fresh process under each server of ``--servers`` (default ``uvicorn``) on 127.0.0.1:
``uvicorn`` (uvloop, httptools, one worker, log level warning), ``hypercorn`` (its asyncio
worker on the standard asyncio loop, one worker) and ``granian`` (``--interface asgi``, one
worker, ``--backpressure`` above the client count, its ``auto`` loop: uvloop when installed;
the table names the loop the app found itself on). Variants: ``ssebus`` (Broadcaster +
SseEndpoint), ``sse-starlette`` (its usual broadcast recipe: a queue per client drained by
an EventSourceResponse) and ``bare`` (pre-encoded bytes in a queue per client, one ASGI
``send`` per frame: the ceiling). This process is the load: N raw asyncio protocols (on
uvloop) GET ``/sse``; then ``POST /publish`` makes the server publish M events of about 100
bytes of JSON from a server-side task. Per variant:

* frames/s: frames received by all clients / (last receipt - publish start). Each client
  splits what it reads at the blank line ``\\n\\n`` and counts the frames by the publish
  timestamp they carry, so pings are not counted.
* latency p50/p99: receipt time - the event's ``time.monotonic()`` taken at publish
  (CLOCK_MONOTONIC is system-wide on Linux, so both processes read the same clock).
* idle RSS/client: (server VmRSS with N idle clients - VmRSS before any) / N.
* server CPU: utime + stime from /proc/<pid>/stat over the publish phase, also per frame;
  load CPU is this process's, to tell when the client rather than the server was the limit.
  <pid> is the process that runs the app, as the app reports it (granian's worker).
* body sends/frame: the ASGI ``http.response.body`` messages the streams sent during the
  publish phase (the app wraps each stream's ``send`` with a counter) / frames delivered:
  1.00 is one write per frame, below 1 frames shared a write. In ``slow`` the sends to the
  stalled clients count but their frames do not (1.11 for one send per frame).
* write syscalls/frame: ``syscw`` of /proc/<pid>/io over the publish phase / frames
  delivered. It counts write(2) and writev(2), not send(2) or sendmsg(2): meaningful under
  uvicorn (uvloop, i.e. libuv, writes with write/writev); near 0 under hypercorn (the
  asyncio loop writes with ``socket.send``); under granian it counts the writev calls of
  its Rust I/O (tokio), not any plain ``send``, so treat it as a lower bound there.
* GCs in publish: the garbage collections in the server during the publish phase (count,
  total and longest ms, from ``gc.callbacks``).

Scenarios: ``burst`` (M events as fast as possible; the publisher yields to the loop with
``await asyncio.sleep(0)`` every ``--yield-every`` events, identically in every variant),
``turn`` (the same, yielding after every event, as a handler that publishes one does),
``steady`` (``--rate`` events/s for ``--seconds``), ``slow`` (a burst while every 10th
client has stopped reading), ``10k`` (10 x the clients, a twentieth of the events), and,
only when asked for, ``idle20k``: 19,500 idle clients (``--clients`` overrides; 2,000 with
``--quick``; the hard limit of open files here is 20,000 per process, and both processes
raise their soft limit to it), then 10 single events, one published about every second.
Per event it takes the time from publish until every client had it (the slowest client),
and reports the worst and the median of the 10; RSS per connection; the gc-tracked objects
per connection in the server (``len(gc.get_objects())`` with N idle clients minus before
any, / N); and the collections during the 10 events (count, of the oldest generation,
total and longest ms). The time until every client had an event includes this process
reading all the sockets in turn, alike for every variant: compare variants, not times.

``--gc-freeze`` adds a ``VARIANT+freeze`` column per variant (in every scenario): once the
clients are connected the app runs ``gc.collect()`` and ``gc.freeze()``, so the collector
never scans the connections' objects again; what an application gains by doing the same.

In ``slow`` the stalled clients ``pause_reading()`` and have a 4 KiB receive buffer, and
the server's sockets a 16 KiB send buffer (SO_SNDBUF on the listening socket, inherited on
accept; under granian the app sets it on its connected sockets once all are open): with
Linux's autotuned loopback buffers a stalled socket soaks up about 4 MB, some 27,000 of
these frames, before the server even notices. ssebus evicts a client whose
queue of ``max_queue`` (1,024) frames is full; the other two queue without bound.

``--profile DIR`` records the server with py-spy during each publish phase and prints its
top functions; ``--tracemalloc`` instead connects idle clients to servers that trace their
allocations and prints the sites that grew, per client. Figures, never assertions: the
machines are shared and noisy, so the tables quote ratios between variants of one run, and
always under the same server.
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
from contextlib import asynccontextmanager, nullcontext, suppress
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any, cast

import uvloop

APPS = Path(__file__).with_name("_fanout_apps.py")
VARIANTS = ("ssebus", "ssebus-delay", "sse-starlette", "bare")
SCENARIOS = ("burst", "turn", "steady", "slow", "10k", "idle20k")
DEFAULT_SCENARIOS = SCENARIOS[:-1]  # idle20k is opt-in: about a minute per variant
SERVERS = ("uvicorn", "granian", "hypercorn")
IDLE_CLIENTS = 19_500
IDLE_EVENTS = 10
IDLE_INTERVAL = 1.0  # seconds from one publish to the next in idle20k
FREEZE = "+freeze"
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
    #: Per event (its timestamp): the latest receipt and how many clients had it (idle20k).
    worst: dict[bytes, float] | None = None
    received: Counter[bytes] = field(default_factory=Counter)


@dataclass
class Result:
    """One variant's figures in one scenario under one server."""

    variant: str
    server: str
    loop: str
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
    body_sends: int  # ASGI http.response.body messages in the publish phase
    syscw: int | None  # write/writev syscalls in the publish phase (None: not readable)
    gc_count: int
    gc_seconds: float
    gc_longest: float

    @property
    def rate(self) -> float:
        """Frames per second received by all the fast clients together."""
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_per_frame_us(self) -> float:
        """Server CPU microseconds per frame delivered."""
        return self.cpu / self.frames * 1e6 if self.frames else float("nan")

    @property
    def sends_per_frame(self) -> float:
        """ASGI body sends per frame delivered."""
        return self.body_sends / self.frames if self.frames else float("nan")


@dataclass
class IdleResult:
    """One variant's figures in idle20k under one server."""

    variant: str
    server: str
    loop: str
    clients: int
    connect_seconds: float
    idle_rss: float  # bytes per connection
    objects: float  # gc-tracked objects per connection
    worst: list[float]  # per event, seconds from publish until every client had it
    server_side: list[float]  # per event, seconds from publish until the server's last send
    complete: int  # events every client received
    gc_count: int
    gc_full: int  # of which of the oldest generation
    gc_seconds: float
    gc_longest: float


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
            if tally.worst is not None:
                tally.received.update(stamps)
                for stamp in stamps:
                    tally.worst[stamp] = now - float(stamp)  # receipts only get later

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

    def __init__(
        self,
        variant: str,
        *,
        server: str = "uvicorn",
        clients: int = 0,
        sndbuf: int = 0,
        trace_memory: bool = False,
    ) -> None:
        self.variant = variant
        self.server = server
        self.clients = clients
        self.sndbuf = sndbuf
        self.trace_memory = trace_memory
        self.port = 0
        self.pid = 0  # the process that runs the app (granian's worker, not its supervisor)
        self.loop = ""
        self._process: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> Server:
        env = dict(os.environ, SSEBUS_BENCH_VARIANT=self.variant)
        if self.trace_memory:
            env["PYTHONTRACEMALLOC"] = "1"
        if self.server == "granian":
            self.port = free_port()
            command = [
                *[str(Path(sys.executable).with_name("granian")), "--interface", "asgi"],
                *["--workers", "1", "--host", "127.0.0.1", "--port", str(self.port)],
                *["--backlog", "4096", "--backpressure", str(max(1024, self.clients + 256))],
                *["--log-level", "warning", "--working-dir", str(APPS.parent)],
                *["--factory", f"{APPS.stem}:granian_app"],
            ]
        else:
            command = [sys.executable, str(APPS), self.variant, "--server", self.server]
            command += ["--sndbuf", str(self.sndbuf)]
        # A session of its own, so that killing its group also ends granian's worker.
        self._process = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.PIPE, env=env, start_new_session=True
        )
        assert self._process.stdout is not None
        if self.server != "granian":
            line = await asyncio.wait_for(self._process.stdout.readline(), 30)
            if not line.startswith(b"port "):
                raise RuntimeError(f"{self.variant} server did not start: {line!r}")
            self.port = int(line.split()[1])
        stats = await self.wait_ready()  # answered once the lifespan has started
        self.pid, self.loop = stats["pid"], stats["loop"]
        return self

    async def wait_ready(self, timeout: float = 30) -> Any:
        """Ask for /stats until the server answers."""
        assert self._process is not None
        deadline = time.monotonic() + timeout
        while True:
            try:
                return await self.request("GET", "/stats", timeout=5)
            except OSError:
                if self._process.returncode is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{self.variant} under {self.server} did not start"
                    ) from None
                await asyncio.sleep(0.1)

    async def __aexit__(self, *exc_info: object) -> None:
        # Killed, not stopped: the figures are taken, and the bare variant never notices
        # that its clients left, so a graceful shutdown would only wait and then complain.
        assert self._process is not None
        with suppress(ProcessLookupError):
            os.killpg(self._process.pid, signal.SIGKILL)
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

    def syscw(self) -> int | None:
        """The server's write and writev syscalls so far (None: /proc/<pid>/io unreadable)."""
        try:
            for line in Path(f"/proc/{self.pid}/io").read_text().splitlines():
                if line.startswith("syscw:"):
                    return int(line.split()[1])
        except OSError:
            pass
        return None

    async def wait_connected(self, clients: int, timeout: float = 60) -> None:
        """Wait until the server sees ``clients`` open streams."""
        deadline = time.monotonic() + max(timeout, clients / 100)
        while (await self.request("GET", "/stats"))["connected"] < clients:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.variant}: fewer than {clients} streams open")
            await asyncio.sleep(0.05)


def free_port() -> int:
    """A port of 127.0.0.1 that nothing listens on now (for servers that bind it themselves)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


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


def base_variant(label: str) -> tuple[str, bool]:
    """The server variant of a column label, and whether the app freezes the collector."""
    return label.removesuffix(FREEZE), label.endswith(FREEZE)


async def prepare(server: Server, clients: int, sndbuf: int, freeze: bool) -> None:
    """Once ``clients`` streams are open: granian's send buffers, then the collector."""
    await server.wait_connected(clients)
    if sndbuf and server.server == "granian":
        done = (await server.request("POST", f"/sndbuf?bytes={sndbuf}"))["sockets"]
        if done < clients:
            raise RuntimeError(f"SO_SNDBUF set on {done} sockets, not all {clients}")
    if freeze:
        await server.request("POST", "/freeze")


async def measure(scenario: Scenario, label: str, server_name: str, args: Any) -> Result:
    """Run ``scenario`` against a fresh server of ``label``'s variant under ``server_name``."""
    tally = Tally()
    variant, freeze = base_variant(label)
    async with Server(
        variant, server=server_name, clients=scenario.clients, sndbuf=scenario.sndbuf
    ) as server:
        await asyncio.sleep(SETTLE_SECONDS)
        rss_before = server.rss()
        clients = await connect_all(server.port, scenario, tally)
        try:
            await prepare(server, scenario.clients, scenario.sndbuf, freeze)
            await asyncio.sleep(SETTLE_SECONDS)
            rss_idle = server.rss()
            fast = [c for c in clients if not c.stall]
            expected = len(fast) * scenario.events
            recording = (
                py_spy(
                    server.pid, Path(args.profile) / f"{scenario.name}-{server_name}-{label}.txt"
                )
                if args.profile
                else nullcontext()
            )
            async with recording:
                before = await server.request("GET", "/stats?reset=1")
                cpu, load, syscw = server.cpu(), load_cpu(), server.syscw()
                query = f"count={scenario.events}&rate={scenario.rate}&size={args.size}"
                published = await server.request(
                    "POST",
                    f"/publish?{query}&yield_every={scenario.yield_every or args.yield_every}",
                )
                await wait_delivered(tally, expected)
                cpu, load = server.cpu() - cpu, load_cpu() - load
                syscw_after = server.syscw()
                stats = await server.request("GET", "/stats")
            rss_after = server.rss()
        finally:
            for client in clients:
                client.close()
    started = published["started"]
    latencies = sorted(tally.latencies)
    return Result(
        variant=label,
        server=server_name,
        loop=server.loop,
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
        body_sends=stats["body_sends"] - before["body_sends"],
        syscw=None if syscw is None or syscw_after is None else syscw_after - syscw,
        gc_count=stats["gc"]["count"],
        gc_seconds=stats["gc"]["seconds"],
        gc_longest=stats["gc"]["longest"],
    )


async def measure_idle(scenario: Scenario, label: str, server_name: str) -> IdleResult:
    """idle20k: N idle clients, then single events about a second apart."""
    tally = Tally(worst={})
    variant, freeze = base_variant(label)
    n = scenario.clients
    async with Server(variant, server=server_name, clients=n) as server:
        await asyncio.sleep(SETTLE_SECONDS)
        rss_before = server.rss()
        objects_before = (await server.request("GET", "/objects"))["objects"]
        connecting = time.monotonic()
        clients = await connect_all(server.port, scenario, tally)
        try:
            await server.wait_connected(n)
            connect_seconds = time.monotonic() - connecting
            await asyncio.sleep(SETTLE_SECONDS)
            rss_idle = server.rss()
            objects = (await server.request("GET", "/objects"))["objects"]
            await prepare(server, n, 0, freeze)  # after counting: frozen ones are not listed
            await server.request("GET", "/stats?reset=1")
            server_side = []
            for i in range(scenario.events):
                sent = time.monotonic()
                await server.request("POST", "/publish?count=1&rate=0&yield_every=1")
                await wait_delivered(tally, (i + 1) * n)
                assert tally.worst is not None
                published = max(map(float, tally.worst))  # this event's stamp
                last_send = (await server.request("GET", "/stats"))["last_send"]
                server_side.append(last_send - published)
                await asyncio.sleep(max(0.0, sent + IDLE_INTERVAL - time.monotonic()))
            gc_stats = (await server.request("GET", "/stats"))["gc"]
        finally:
            for client in clients:
                client.close()
    assert tally.worst is not None
    events = sorted(tally.worst, key=float)
    return IdleResult(
        variant=label,
        server=server_name,
        loop=server.loop,
        clients=n,
        connect_seconds=connect_seconds,
        idle_rss=(rss_idle - rss_before) / n,
        objects=(objects - objects_before) / n,
        worst=[tally.worst[e] for e in events],
        server_side=server_side,
        complete=sum(tally.received[e] == n for e in events),
        gc_count=gc_stats["count"],
        gc_full=gc_stats["by_generation"][2],
        gc_seconds=gc_stats["seconds"],
        gc_longest=gc_stats["longest"],
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
    syscws = [r.syscw for r in results]
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
                "body_sends",
                "gc_count",
                "gc_seconds",
                "gc_longest",
            )
        },
        syscw=None if None in syscws else round(statistics.median(cast(list[int], syscws))),
    )


def spread(server: str, runs: dict[str, list[Result]]) -> str:
    """ssebus's p99 latency and frames/s over each other variant, run by run, one server."""
    ours = runs.get("ssebus", [])
    lines = []
    for variant, theirs in runs.items():
        if variant == "ssebus" or not ours:
            continue
        p99 = ", ".join(_ratio(a.p99_ms, b.p99_ms) for a, b in zip(ours, theirs, strict=True))
        rate = ", ".join(_ratio(a.rate, b.rate) for a, b in zip(ours, theirs, strict=True))
        lines.append(f"run by run, {server}, ssebus / {variant}: p99 {p99}; frames/s {rate}")
    return "\n".join(lines)


# -- the report ---------------------------------------------------------------------------


def table(results: list[Result], burst: dict[tuple[str, str], Result], stalls: bool) -> str:
    """One server's figures, one column per variant, then ssebus's ratios to the others."""
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
        ("body sends/frame", lambda r: f"{r.sends_per_frame:.3f}"),
        ("write syscalls/frame", lambda r: _per_frame(r.syscw, r.frames)),
        ("GCs in publish (ms)", lambda r: f"{r.gc_count} ({r.gc_seconds * 1e3:.1f})"),
        ("longest GC ms", lambda r: f"{r.gc_longest * 1e3:.1f}"),
        ("clients with every event", lambda r: f"{r.complete:,}/{r.fast:,}"),
    ]
    if not stalls:
        rows.append(("streams the server dropped", lambda r: f"{len(r.dropped):,}"))
    if stalls:
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
    first = results[0]
    lines = [f"-- under {first.server} ({first.loop} loop)"]
    lines.append(f"{'':<28}" + "".join(f"{r.variant:>{width}}" for r in results))
    lines += [
        f"{name:<28}" + "".join(f"{cell(r):>{width}}" for r in results) for name, cell in rows
    ]
    for ours, other in _pairs(results):
        lines.append(
            f"{ours.variant} / {other.variant} ({first.server}): "
            f"throughput = {_ratio(ours.rate, other.rate)}, "
            f"p99 latency = {_ratio(ours.p99_ms, other.p99_ms)}, "
            f"idle RSS/client = {_ratio(ours.idle_rss, other.idle_rss)}, "
            f"CPU/frame = {_ratio(ours.cpu_per_frame_us, other.cpu_per_frame_us)}, "
            f"sends/frame = {_ratio(ours.sends_per_frame, other.sends_per_frame)}"
        )
    return "\n".join(lines)


def idle_table(results: list[IdleResult]) -> str:
    """One server's idle20k figures, one column per variant, then ssebus's ratios."""
    rows: list[tuple[str, Callable[[IdleResult], str]]] = [
        ("connected in s", lambda r: f"{r.connect_seconds:.1f}"),
        ("RSS/connection KiB", lambda r: f"{r.idle_rss / 1024:.1f}"),
        ("gc objects/connection", lambda r: f"{r.objects:.1f}"),
        ("all clients had it, worst ms", lambda r: _ms(max(r.worst, default=float("nan")))),
        ("all clients had it, p50 ms", lambda r: _ms(_median_of(r.worst))),
        ("server's last send, worst ms", lambda r: _ms(max(r.server_side, default=float("nan")))),
        ("server's last send, p50 ms", lambda r: _ms(_median_of(r.server_side))),
        ("events every client had", lambda r: f"{r.complete}/{len(r.worst)}"),
        ("GCs in the events (gen 2)", lambda r: f"{r.gc_count} ({r.gc_full})"),
        ("GC total ms", lambda r: f"{r.gc_seconds * 1e3:.1f}"),
        ("longest GC ms", lambda r: f"{r.gc_longest * 1e3:.1f}"),
    ]
    width = max(16, *(len(r.variant) + 2 for r in results))
    first = results[0]
    lines = [f"-- under {first.server} ({first.loop} loop), {first.clients:,} clients"]
    lines.append(f"{'':<30}" + "".join(f"{r.variant:>{width}}" for r in results))
    lines += [
        f"{name:<30}" + "".join(f"{cell(r):>{width}}" for r in results) for name, cell in rows
    ]
    for ours, other in _pairs(results):
        worst_ours, worst_other = max(ours.worst, default=0), max(other.worst, default=0)
        lines.append(
            f"{ours.variant} / {other.variant} ({first.server}): "
            f"worst all-clients time = {_ratio(worst_ours, worst_other)}, "
            f"median = {_ratio(_median_of(ours.worst), _median_of(other.worst))}, "
            f"RSS/connection = {_ratio(ours.idle_rss, other.idle_rss)}, "
            f"objects/connection = {_ratio(ours.objects, other.objects)}"
        )
    return "\n".join(lines)


def _pairs(results: Sequence[Any]) -> list[tuple[Any, Any]]:
    """(ssebus, other) for each other variant, a frozen ssebus against the frozen others."""
    by_label = {r.variant: r for r in results}
    pairs = []
    for r in results:
        _, freeze = base_variant(r.variant)
        ours = by_label.get("ssebus" + (FREEZE if freeze else ""))
        if ours is not None and r is not ours:
            pairs.append((ours, r))
    return pairs


def _median_of(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.1f}"


def _per_frame(count: int | None, frames: int) -> str:
    return "-" if count is None or not frames else f"{count / frames:.3f}"


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


def _change(result: Result, burst: dict[tuple[str, str], Result], metric: str) -> str:
    before = burst.get((result.server, result.variant))
    if before is None or not getattr(before, metric):
        return "-"
    return f"{getattr(result, metric) / getattr(before, metric) - 1:+.0%}"


# -- the command --------------------------------------------------------------------------


def plan(args: argparse.Namespace) -> list[Scenario]:
    """The scenarios asked for, sized by the options."""
    n, m, rate = args.clients or 1000, args.events, args.rate
    idle = args.idle_clients
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
        "idle20k": Scenario(
            "idle20k",
            f"{idle:,} idle clients, then {IDLE_EVENTS} single events {IDLE_INTERVAL:g} s apart",
            idle,
            IDLE_EVENTS,
        ),
    }
    return [scenarios[name] for name in args.scenario]


async def run(args: argparse.Namespace) -> None:
    """Measure every scenario on every variant under every server; a table per server."""
    burst: dict[tuple[str, str], Result] = {}
    for scenario in plan(args):
        print(f"== {scenario.name}: {scenario.title} ==", flush=True)
        if scenario.name == "idle20k":
            await run_idle(scenario, args)
            continue
        runs = {(s, v): list[Result]() for s in args.servers for v in args.labels}
        for _ in range(args.repeat):  # variants take turns, so noise hits them alike
            for server in args.servers:
                for label in args.labels:
                    runs[server, label].append(await measure(scenario, label, server, args))
        for server in args.servers:
            results = [median_result(runs[server, label]) for label in args.labels]
            if args.repeat > 1:
                print(spread(server, {v: runs[server, v] for v in args.labels}), flush=True)
            if scenario.name == "burst":
                burst.update({(r.server, r.variant): r for r in results})
            print(table(results, burst, bool(scenario.stall_every)), end="\n\n", flush=True)
            if args.profile:
                for label in args.labels:
                    print(f"-- py-spy, {scenario.name}, {server}, {label}: self %, total %")
                    for name, own, total in top_functions(
                        Path(args.profile) / f"{scenario.name}-{server}-{label}.txt"
                    ):
                        print(f"{own:6.1f} {total:6.1f}  {name}")
                print(flush=True)


async def run_idle(scenario: Scenario, args: argparse.Namespace) -> None:
    """idle20k on every variant under every server (once each: it is long)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if scenario.clients + 100 > hard:
        raise SystemExit(f"idle20k: {scenario.clients:,} clients need more than {hard:,} files")
    for server in args.servers:
        results = [await measure_idle(scenario, label, server) for label in args.labels]
        print(idle_table(results), end="\n\n", flush=True)


async def memory_sites(args: argparse.Namespace) -> None:
    """Print, per variant, the allocation sites that grow with idle clients, per client."""
    n = args.clients or 1000
    for variant in args.variants:
        scenario = Scenario("idle", "", n, 0)
        async with Server(variant, server=args.servers[0], trace_memory=True) as server:
            await server.request("GET", "/memory")
            clients = await connect_all(server.port, scenario, Tally())
            try:
                await server.wait_connected(n)
                await asyncio.sleep(SETTLE_SECONDS)
                sites = await server.request("GET", "/memory")
            finally:
                for client in clients:
                    client.close()
        total = sum(size for _, size, _ in sites)
        print(f"-- tracemalloc, {variant}: {total / n:,.0f} B/client traced")
        for site, size, blocks in sites[: args.sites]:
            print(f"{size / n:8,.0f} B {blocks / n:6.1f} blocks  {site}")
        print(flush=True)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Compare SSE fan-out across server variants.")
    parser.add_argument(
        "--clients", type=int, help=f"default 1,000 (idle20k: {IDLE_CLIENTS:,}); 10k takes 10x"
    )
    parser.add_argument("--events", type=int, default=2000, help="events per burst")
    parser.add_argument("--size", type=int, default=100, help="bytes of JSON per event")
    parser.add_argument("--rate", type=float, default=20, help="events/s in steady")
    parser.add_argument("--seconds", type=float, default=5, help="duration of steady")
    parser.add_argument("--yield-every", type=int, default=10, help="burst: events per yield")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument(
        "--scenario",
        default=",".join(DEFAULT_SCENARIOS),
        help=f"of {', '.join(SCENARIOS)} (idle20k only when named)",
    )
    parser.add_argument(
        "--servers", default="uvicorn", help=f"of {', '.join(SERVERS)}; each variant under each"
    )
    parser.add_argument(
        "--gc-freeze",
        action="store_true",
        help="also run each variant with gc.freeze() once the clients are connected",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="200 clients, 200 events, 2 s (idle20k: 2,000 clients)",
    )
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
    args.idle_clients = args.clients or (2000 if args.quick else IDLE_CLIENTS)
    if args.quick:
        args.clients, args.events, args.seconds = args.clients or 200, 200, 2
    args.variants = args.variants.split(",")
    args.scenario = args.scenario.split(",")
    args.servers = args.servers.split(",")
    args.labels = args.variants + [v + FREEZE for v in args.variants if args.gc_freeze]
    for name in args.servers:
        if name not in SERVERS:
            parser.error(f"unknown server {name!r}; pick from {', '.join(SERVERS)}")
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
    servers = ", ".join(f"{name} {version(name)}" for name in args.servers)
    print(
        f"ssebus {version('ssebus')}, sse-starlette {version('sse-starlette')}, "
        f"{servers}, uvloop {version('uvloop')}",
        flush=True,
    )
    if "ssebus-delay" in args.variants:
        delay = os.environ.get("SSEBUS_BENCH_WRITE_DELAY", "auto")
        print(f"ssebus-delay: write_delay={delay} (SSEBUS_BENCH_WRITE_DELAY)")
    print(flush=True)
    uvloop.run(memory_sites(args) if args.tracemalloc else run(args))


if __name__ == "__main__":
    main()
