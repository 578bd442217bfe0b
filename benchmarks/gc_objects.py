"""What one idle SSE connection leaves for the garbage collector, server side only.

Run ``python benchmarks/gc_objects.py`` (``-n`` clients, 500 by default; ``--help``).

For each variant (``ssebus``: ``Broadcaster`` + ``SseEndpoint``; ``bare``: a queue per
client; both the apps of ``benchmarks/_fanout_apps.py``) a server runs in a fresh process
under uvicorn on 127.0.0.1, with a ``/gc`` route added in front of the benchmark's router.
Helper processes open the raw-socket clients (a ``GET /sse`` each, then nothing more is
read), so the client sockets are never counted. The server is measured twice, after
``--warmup`` clients (one-time allocations: imports, caches, the first stream's state) and
after ``-n`` more idle ones; the difference divided by ``-n`` is printed per connection:

* gc-tracked objects (``gc.get_objects()``, after a full ``gc.collect()``), broken down
  by type name: what every full collection has to traverse, per idle stream;
* bytes traced by ``tracemalloc`` (the server runs with it on: ``--no-tracemalloc`` to
  measure without its overhead) and VmRSS;
* how long one full ``gc.collect()`` takes (the median of three) after the warm-up and
  after the idle streams, and the same after ``gc.freeze()`` (everything alive then moved
  to the permanent generation, which collections skip; ``gc.unfreeze()`` after). An app
  that froze once started collects about the difference of the first two.

``--loop asyncio|uvloop`` and ``--http h11|httptools`` choose uvicorn's (the fan-out
benchmark uses uvloop and httptools). Figures, never assertions.
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SSE_REQUEST = b"GET /sse HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n"
#: Sockets per client process: well below the usual open-files limits.
PER_CLIENT_PROCESS = 5000

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


# -- the server ------------------------------------------------------------------------------


class GcRoute:
    """``GET /gc`` answers the server's gc-tracked objects by type, traced and resident
    bytes, and the duration of a full collection with and without ``gc.freeze()``; every
    other request goes to ``app``."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/gc":
            await self.app(scope, receive, send)
            return
        data = json.dumps(gc_stats()).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(data))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": data})


def gc_stats() -> dict[str, Any]:
    """This process's figures now (see :class:`GcRoute`)."""
    gc.collect()
    collect = timed_collection()
    gc.freeze()
    frozen = timed_collection()
    gc.unfreeze()
    objects = gc.get_objects()
    by_type = collections.Counter(type(o).__name__ for o in objects)
    del objects
    with open("/proc/self/statm") as statm:
        rss = int(statm.read().split()[1]) * resource.getpagesize()
    traced = tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else None
    return {
        "objects": dict(by_type),
        "traced": traced,
        "rss": rss,
        "collect": collect,
        "collect_frozen": frozen,
    }


def timed_collection(repeat: int = 3) -> float:
    """Seconds one full ``gc.collect()`` takes, the median of ``repeat``."""
    durations = []
    for _ in range(repeat):
        started = time.perf_counter()
        gc.collect()
        durations.append(time.perf_counter() - started)
    return statistics.median(durations)


def serve(variant: str, loop: str, http: str) -> None:
    """Serve ``variant`` behind :class:`GcRoute` on a free port; print ``port N``."""
    import logging

    import uvicorn

    sys.path.insert(0, str(ROOT))
    from benchmarks._fanout_apps import VARIANTS, Router, raise_open_files_limit

    raise_open_files_limit()
    logging.getLogger("ssebus").setLevel(logging.ERROR)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(4096)
    print(f"port {sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(
        GcRoute(Router(VARIANTS[variant]())),
        loop=loop,
        http=http,
        log_level="warning",
        access_log=False,
        lifespan="on",
        backlog=4096,
        timeout_graceful_shutdown=1,
    )
    uvicorn.Server(config).run(sockets=[sock])


# -- the clients -----------------------------------------------------------------------------


def hold_clients(port: int, count: int) -> None:
    """Open ``count`` idle streams, print ``open``, and hold them until stdin closes."""
    raise_limit()
    sockets = []
    for _ in range(count):
        client = socket.create_connection(("127.0.0.1", port))
        client.sendall(SSE_REQUEST)
        sockets.append(client)
    print("open", flush=True)
    sys.stdin.read()
    for client in sockets:
        client.close()


def raise_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Clients:
    """Idle streams held by helper processes, at most ``PER_CLIENT_PROCESS`` each."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.processes: list[subprocess.Popen[str]] = []

    def open(self, count: int) -> None:
        while count > 0:
            batch = min(count, PER_CLIENT_PROCESS)
            process = subprocess.Popen(
                [sys.executable, __file__, "--hold", str(self.port), str(batch)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            assert process.stdout is not None
            if process.stdout.readline().strip() != "open":
                raise RuntimeError("a client process failed")
            self.processes.append(process)
            count -= batch

    def close(self) -> None:
        for process in self.processes:
            assert process.stdin is not None
            process.stdin.close()
        for process in self.processes:
            process.wait(timeout=30)
        self.processes = []


# -- the driver ------------------------------------------------------------------------------


def get(port: int, path: str) -> Any:
    """GET ``path`` on the server and decode its JSON body."""
    with socket.create_connection(("127.0.0.1", port), timeout=120) as client:
        client.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while chunk := client.recv(1 << 16):
            chunks.append(chunk)
    return json.loads(b"".join(chunks).split(b"\r\n\r\n", 1)[1])


def wait_connected(port: int, count: int) -> None:
    deadline = time.monotonic() + 120
    while get(port, "/stats")["connected"] < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"fewer than {count} streams open after 120 s")
        time.sleep(0.2)
    time.sleep(0.5)  # let every stream reach its idle wait


def measure(variant: str, args: argparse.Namespace) -> dict[str, Any]:
    env = dict(os.environ)
    if args.tracemalloc:
        env["PYTHONTRACEMALLOC"] = "1"
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", variant, "--loop", args.loop, "--http", args.http],
        stdout=subprocess.PIPE,
        # At shutdown uvicorn reports every ``bare`` stream it cancels (none watches for
        # the client leaving): noise here.
        stderr=None if args.verbose else subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline().split()[1])
        clients = Clients(port)
        clients.open(args.warmup)
        wait_connected(port, args.warmup)
        before = get(port, "/gc")
        clients.open(args.n)
        wait_connected(port, args.warmup + args.n)
        after = get(port, "/gc")
        clients.close()
        return {"before": before, "after": after}
    finally:
        server.terminate()
        server.wait(timeout=30)


def report(variant: str, result: dict[str, Any], n: int, top: int) -> None:
    before, after = result["before"], result["after"]
    growth = collections.Counter(after["objects"])
    growth.subtract(before["objects"])
    total = sum(growth.values())
    print(f"\n{variant}: {total / n:.1f} gc-tracked objects per idle connection")
    for name, count in growth.most_common(top):
        if count / n >= 0.05:
            print(f"  {count / n:6.2f}  {name}")
    if after["traced"] is not None:
        traced = (after["traced"] - before["traced"]) / n
        print(f"  tracemalloc: {traced:,.0f} bytes per connection")
    print(f"  VmRSS: {(after['rss'] - before['rss']) / n:,.0f} bytes per connection")
    print(
        f"  full gc.collect() with {n:,} more connections: {after['collect'] * 1e3:.1f} ms "
        f"(before them {before['collect'] * 1e3:.1f} ms); "
        f"after gc.freeze(): {after['collect_frozen'] * 1e3:.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("-n", type=int, default=500, help="idle connections measured")
    parser.add_argument("--warmup", type=int, default=20, help="connections before the baseline")
    parser.add_argument("--variant", action="append", choices=["ssebus", "bare"])
    parser.add_argument("--loop", default="asyncio", choices=["asyncio", "uvloop"])
    parser.add_argument("--http", default="h11", choices=["h11", "httptools"])
    parser.add_argument("--no-tracemalloc", dest="tracemalloc", action="store_false")
    parser.add_argument("--top", type=int, default=30, help="types listed per variant")
    parser.add_argument("--verbose", action="store_true", help="show the servers' stderr")
    parser.add_argument("--json", action="store_true", help="print the raw figures too")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--hold", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.loop, args.http)
        return
    if args.hold:
        hold_clients(*args.hold)
        return
    print(
        f"{args.n:,} idle connections after {args.warmup} (uvicorn, loop {args.loop}, "
        f"http {args.http}, Python {sys.version.split()[0]}, "
        f"tracemalloc {'on' if args.tracemalloc else 'off'})"
    )
    for variant in args.variant or ["ssebus", "bare"]:
        result = measure(variant, args)
        report(variant, result, args.n, args.top)
        if args.json:
            print(json.dumps(result))


if __name__ == "__main__":
    main()
