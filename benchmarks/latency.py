"""Publish -> client latency: ``InMemoryEventBus`` vs ``RedisEventBus`` (pubsub, streams).

Run ``python benchmarks/latency.py [--quick] [--redis URL]`` (needs ``ssebus[redis]``,
uvicorn, uvloop and httptools, and a Redis at URL, default ``redis://127.0.0.1:6379/0``);
``--help`` lists the knobs. The default run takes about a minute, ``--quick`` a quarter.

For each bus one serving process runs uvicorn (uvloop, httptools) on a real socket with
``SseEndpoint(Broadcaster(bus, EventMap(...)))``. For each client count this process
opens that many raw-socket SSE clients on every server, which stamp each chunk they
receive with ``time.monotonic()`` (system-wide on Linux, so comparable across processes).
A publisher calls ``await bus.publish(Tick(seq, sent))`` at a steady rate (200/s), with
``sent = time.monotonic()`` just before the call; a frame's latency is the time its last
byte reached the client minus ``sent``. The serving process also records the bus hop:
from ``sent`` to the broadcaster rendering the frame, just before it is queued on every
connection. The in-memory bus necessarily publishes in the serving process; a Redis bus
publishes from a separate process (instance A) to the serving process (instance B), as in
a deployment. Each cell is ``--passes`` passes of ``--seconds`` (after a few warm-up
events), the three buses taking turns in every pass so that noise from other processes
falls on all three alike. The channel and stream names are unique to the run, and the
stream is deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import itertools
import json
import math
import os
import platform
import re
import secrets
import socket
import sys
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any, cast

import coredis
import uvicorn
import uvloop

from ssebus import Broadcaster, EventMap, InMemoryEventBus, SseEndpoint
from ssebus.redis import Mode, RedisEventBus

BUSES = {"memory": "in-memory", "pubsub": "redis pubsub", "streams": "redis streams"}
WARMUP = 20  # events published before the measured ones, in every pass
FRAME = re.compile(rb'data: \{"seq":(\d+),"t":([^}]+)\}\n\n')


@dataclass(frozen=True)
class Tick:
    """The benchmark's domain event: a sequence number and its publish time."""

    seq: int
    sent: float


#: In a serving process: seconds from publish() to the broadcaster rendering the frame.
HOPS: list[float] = []


def payload(event: Tick) -> dict[str, Any]:
    """The SSE data of a tick; also records its bus hop (the broadcaster renders each event
    once, in the bus's delivery, right before queueing it on every connection)."""
    if event.seq >= WARMUP:
        HOPS.append(time.monotonic() - event.sent)
    return {"seq": event.seq, "t": event.sent}


EVENTS = EventMap({Tick: ("tick", payload)})


# -- worker processes: a server, or a Redis publisher ---------------------------------------


def make_bus(kind: str, url: str, name: str) -> InMemoryEventBus | RedisEventBus:
    """The bus ``kind`` names; a Redis one uses ``name`` as its channel and stream."""
    if kind == "memory":
        return InMemoryEventBus()
    mode: Mode = "pubsub" if kind == "pubsub" else "streams"
    bus = RedisEventBus(url, mode=mode, channel=name, stream=name)
    bus.register(Tick)
    return bus


async def publish_ticks(
    bus: InMemoryEventBus | RedisEventBus, count: int, rate: float
) -> list[float]:
    """Publish ``count`` ticks at ``rate`` per second; return each publish() call's seconds."""
    durations: list[float] = []
    start = time.monotonic()
    for seq in range(count):
        delay = start + seq / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        sent = time.monotonic()
        await bus.publish(Tick(seq, sent))
        durations.append(time.monotonic() - sent)
    return durations


async def obey(bus: InMemoryEventBus | RedisEventBus) -> None:
    """Answer each command on stdin with a JSON line, until EOF: ``publish COUNT RATE``
    with the publish() durations, ``hops`` with the bus hops recorded since the last one."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    async for line in reader:
        command, *args = line.decode().split()
        if command == "publish":
            answer = await publish_ticks(bus, int(args[0]), float(args[1]))
        else:
            answer = HOPS.copy()
            HOPS.clear()
        print(json.dumps(answer), flush=True)


async def serve(kind: str, url: str, name: str) -> None:
    """Serve the SSE endpoint for the bus until stdin closes; publish too if in-memory."""
    bus = make_bus(kind, url, name)
    broadcaster = Broadcaster(bus, EVENTS, heartbeat=None)
    listener = socket.create_server(("127.0.0.1", 0))
    config = uvicorn.Config(
        SseEndpoint(broadcaster), http="httptools", lifespan="off", log_level="warning"
    )
    server = uvicorn.Server(config)
    async with bus, broadcaster:
        serving = asyncio.create_task(server.serve(sockets=[listener]))
        while not server.started:  # noqa: ASYNC110 - uvicorn offers a flag, not an event
            await asyncio.sleep(0.01)
        print(f"ready {listener.getsockname()[1]}", flush=True)
        await obey(bus)  # a Redis server is only asked for hops: its publisher is elsewhere
        server.should_exit = True
        await serving


async def publish(kind: str, url: str, name: str) -> None:
    """Be instance A: a Redis bus that publishes on command, with no clients of its own."""
    async with make_bus(kind, url, name) as bus:
        print("ready 0", flush=True)
        await obey(bus)


# -- the measuring process ------------------------------------------------------------------


class Worker:
    """A worker process of this script, driven by lines on its stdin, answering on stdout."""

    def __init__(self, process: asyncio.subprocess.Process, port: int) -> None:
        self.process = process
        self.port = port  # of its SSE endpoint; 0 for a publisher

    @classmethod
    async def start(cls, *args: str) -> Worker:
        """Start a worker and wait until it says ``ready PORT``."""
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert process.stdout is not None
        greeting = (await process.stdout.readline()).split()
        if greeting[:1] != [b"ready"]:
            raise RuntimeError(f"worker {args} did not start (exit code {process.returncode})")
        return cls(process, int(greeting[1]))

    async def ask(self, command: str) -> list[float]:
        """Send a command (see :func:`obey`); its answer, a list of seconds."""
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write(f"{command}\n".encode())
        answer: list[float] = json.loads(await self.process.stdout.readline())
        return answer

    async def stop(self) -> None:
        """Close its stdin, which ends it; kill it if it has not ended within 10 s."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            await asyncio.wait_for(self.process.wait(), 10)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


class SseClient(asyncio.Protocol):
    """One SSE client on a raw socket: it only stamps and keeps the chunks it receives, so
    that the next client's chunk is not kept waiting; :meth:`take_frames` parses them."""

    def __init__(self) -> None:
        self.chunks: list[tuple[float, bytes]] = []
        self.streaming = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.write(b"GET / HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n")

    def data_received(self, data: bytes) -> None:
        self.chunks.append((time.monotonic(), data))
        if not self.streaming.done() and b"\r\n\r\n" in b"".join(c for _, c in self.chunks):
            self.streaming.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.streaming.done():
            self.streaming.set_exception(ConnectionError("the server closed the stream"))

    def take_frames(self) -> list[tuple[int, float]]:
        """Parse and drop the chunks so far: (seq, seconds from publish to the frame's end)
        for each tick received."""
        chunks, self.chunks = self.chunks, []
        ends = list(itertools.accumulate(len(chunk) for _, chunk in chunks))
        received = []
        for match in FRAME.finditer(b"".join(chunk for _, chunk in chunks)):
            arrived = chunks[bisect.bisect_left(ends, match.end())][0]
            received.append((int(match.group(1)), arrived - float(match.group(2))))
        return received


async def connect(port: int, count: int) -> list[SseClient]:
    """Open ``count`` SSE streams on ``port`` (each registered once its headers arrive)."""
    loop = asyncio.get_running_loop()
    clients = [
        (await loop.create_connection(SseClient, "127.0.0.1", port))[1] for _ in range(count)
    ]
    await asyncio.wait_for(asyncio.gather(*(client.streaming for client in clients)), 30)
    return clients


@dataclass
class Cell:
    """One bus and client count, in seconds: latencies, publish() durations, bus hops."""

    latencies: list[float] = field(default_factory=list)
    publish: list[float] = field(default_factory=list)
    hops: list[float] = field(default_factory=list)
    missing: int = 0


async def measure(
    cell: Cell, server: Worker, publisher: Worker, clients: list[SseClient], count: int, rate: float
) -> None:
    """One pass: publish ``count`` ticks (after the warm-up), wait until the clients have
    received nothing for 0.25 s, and add what they got to ``cell``."""
    cell.publish += (await publisher.ask(f"publish {WARMUP + count} {rate}"))[WARMUP:]
    received, quiet_since = 0, time.monotonic()
    while time.monotonic() - quiet_since < 0.25:
        await asyncio.sleep(0.05)
        now = sum(len(client.chunks) for client in clients)
        if now != received:
            received, quiet_since = now, time.monotonic()
    for client in clients:
        latencies = [latency for seq, latency in client.take_frames() if seq >= WARMUP]
        cell.latencies += latencies
        cell.missing += count - len(latencies)
    cell.hops += await server.ask("hops")


def percentile(ordered: Sequence[float], p: float) -> float:
    """The nearest-rank ``p``-th percentile (0 < p <= 100) of sorted values."""
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)] if ordered else math.nan


def ms(ordered: Sequence[float]) -> list[str]:
    """p50, p90, p99 and max of sorted seconds, in ms."""
    return [f"{percentile(ordered, p) * 1000:.2f}" for p in (50, 90, 99, 100)]


def report(cells: dict[tuple[int, str], Cell]) -> None:
    """Print the latency table and the publish() and bus hop table, in Markdown."""
    for cell in cells.values():
        cell.latencies.sort()
        cell.publish.sort()
        cell.hops.sort()
    print("\nPublish -> client latency (ms), and each bus against in-memory at the same count:\n")
    print("| clients | bus | frames | missing | p50 | p90 | p99 | max | p50 / mem | p99 / mem |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (clients, kind), cell in cells.items():
        base = cells[clients, "memory"].latencies
        ratios = [f"{percentile(cell.latencies, p) / percentile(base, p):.1f}x" for p in (50, 99)]
        row = [str(clients), BUSES[kind], str(len(cell.latencies)), str(cell.missing)]
        print("| " + " | ".join(row + ms(cell.latencies) + ratios) + " |")
    print(
        "\nThe `await bus.publish(event)` call, and the bus hop: from publish() to the"
        " broadcaster\nrendering the frame in the serving process, before its fan-out (ms):\n"
    )
    print("| clients | bus | publish p50 | p90 | p99 | max | hop p50 | p90 | p99 | max |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (clients, kind), cell in cells.items():
        row = [str(clients), BUSES[kind], *ms(cell.publish), *ms(cell.hops)]
        print("| " + " | ".join(row) + " |")


async def run(url: str, counts: list[int], rate: float, seconds: float, passes: int) -> None:
    """Start the workers, measure every bus at every client count, print, clean up."""
    name = f"ssebus-bench-latency-{secrets.token_hex(4)}"
    count = round(rate * seconds)
    redis: coredis.Redis[str] = coredis.Redis.from_url(url, decode_responses=True)
    async with redis, AsyncExitStack() as stack:
        info: dict[str, Any] = await redis.info("server")
        print(
            f"Python {platform.python_version()}, Redis {info['redis_version']}, "
            f"{os.cpu_count()} CPUs {platform.machine()}, load average {os.getloadavg()[0]:.2f}; "
            f"{passes} x {count} events at {rate:g}/s per cell (+{WARMUP} warm-up events a pass); "
            "in-memory publishes in the serving process, Redis from a separate process"
        )
        stack.push_async_callback(redis.delete, [name])
        workers: dict[str, tuple[Worker, Worker]] = {}
        for kind in BUSES:
            server = await Worker.start("--serve", kind, "--redis", url, "--name", name)
            stack.push_async_callback(server.stop)
            publisher = server
            if kind != "memory":
                publisher = await Worker.start("--publish", kind, "--redis", url, "--name", name)
                stack.push_async_callback(publisher.stop)
            workers[kind] = (server, publisher)
        cells: dict[tuple[int, str], Cell] = {}
        for clients in counts:
            streams = {
                kind: await connect(server.port, clients) for kind, (server, _) in workers.items()
            }
            for _ in range(passes):
                for kind, (server, publisher) in workers.items():
                    cell = cells.setdefault((clients, kind), Cell())
                    await measure(cell, server, publisher, streams[kind], count, rate)
            for client in itertools.chain(*streams.values()):
                assert client.transport is not None
                client.transport.close()
            print(f"  {clients} clients: done", file=sys.stderr)
        report(cells)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one pass per cell: a smoke run")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0", metavar="URL")
    parser.add_argument("--clients", default="1,10,100", help="client counts (default 1,10,100)")
    parser.add_argument("--rate", type=float, default=200.0, help="events/s (default 200)")
    parser.add_argument("--seconds", type=float, default=1.0, help="of a pass (default 1)")
    parser.add_argument("--passes", type=int, default=5, help="per cell (default 5)")
    parser.add_argument("--serve", choices=BUSES, help=argparse.SUPPRESS)
    parser.add_argument("--publish", choices=BUSES, help=argparse.SUPPRESS)
    parser.add_argument("--name", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        uvloop.run(serve(args.serve, args.redis, args.name))
    elif args.publish:
        uvloop.run(publish(args.publish, args.redis, args.name))
    else:
        counts = [int(n) for n in args.clients.split(",")]
        passes = 1 if args.quick else args.passes
        uvloop.run(run(args.redis, counts, args.rate, args.seconds, passes))


if __name__ == "__main__":
    main()
