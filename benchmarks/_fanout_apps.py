"""The servers ``benchmarks/fanout.py`` measures: one ASGI app per variant, under a server.

``python benchmarks/_fanout_apps.py VARIANT [--server uvicorn|hypercorn] [--sndbuf BYTES]``
listens on a free port of 127.0.0.1, prints ``port N`` and serves until SIGTERM: under
uvicorn (uvloop, httptools, one worker) or hypercorn (its asyncio worker on the standard
asyncio loop, one worker; the socket is handed over as ``fd://``). Granian is started by
its own command line on the factory ``_fanout_apps:granian_app``, which reads the variant
from ``SSEBUS_BENCH_VARIANT``. Every variant sits behind the same tiny router, so only the
streaming differs:

* ``GET /sse``: the variant's event stream.
* ``POST /publish?count=M&rate=R&size=S&yield_every=K``: publish M events of about S bytes
  of JSON from the request's own task, R per second (0: a burst that yields to the loop
  every K events), then answer with the start and end times (``time.monotonic()``).
* ``GET /stats``: how many streams are open, when the server dropped streams, the
  longest queue of frames waiting for a client (not known for ssebus: null), the ASGI
  ``http.response.body`` sends the streams made so far (counted by a wrapper around
  ``send``: an int increment), this process's pid and its event loop's module (granian
  serves from a worker process and picks its own loop), and the garbage collections so
  far (count, total and longest in seconds, by ``gc.callbacks``; ``?reset=1`` restarts the
  count).
* ``GET /objects``: ``len(gc.get_objects())``; ``POST /freeze``: ``gc.collect()`` then
  ``gc.freeze()``, so that the objects of the connections open so far are never scanned
  again.
* ``POST /sndbuf?bytes=N``: sets SO_SNDBUF on every connected TCP socket of this process
  (for granian, whose listening socket cannot be prepared; the others inherit it from
  theirs).
* ``GET /memory``: with ``PYTHONTRACEMALLOC`` set, the allocation sites that grew since
  the previous call (the first call only takes the baseline).

Variants: ``ssebus`` (``Broadcaster`` + ``SseEndpoint``), ``ssebus-delay`` (the same with
``write_delay`` from ``SSEBUS_BENCH_WRITE_DELAY``: seconds, or ``auto``, passed on as the
string; ``auto`` by default), ``sse-starlette`` (a queue per client drained by its
``EventSourceResponse``, the usual broadcast recipe) and ``bare`` (a queue of pre-encoded
frames per client, one ``send`` per frame, nothing else). The ssebus variants run without
``max_connections`` (idle20k opens more streams than its default allows here).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import logging
import os
import resource
import socket
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol, cast
from urllib.parse import parse_qs

from sse_starlette import EventSourceResponse

from ssebus import (
    Broadcaster,
    EventMap,
    InMemoryClientRegistry,
    InMemoryEventBus,
    SseConnection,
    SseEndpoint,
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

STATUSES = ("created", "paid", "shipped", "delivered")
#: ssebus's ids are opaque position tokens of 19 characters; the other variants number
#: their events with ids of the same length, so every variant writes the same bytes.
ID_WIDTH = 19
SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-store")]


@dataclass(frozen=True, slots=True)
class OrderUpdated:
    """The domain event every variant broadcasts; ``t`` is ``time.monotonic()`` at publish."""

    order_id: str
    status: str
    t: float
    pad: str


def payload(event: OrderUpdated) -> dict[str, Any]:
    """The JSON data of the SSE event."""
    return {"orderId": event.order_id, "status": event.status, "t": event.t, "pad": event.pad}


def dumps(event: OrderUpdated) -> str:
    """Compact JSON, as ``ssebus.compact_json`` writes it."""
    return json.dumps(payload(event), separators=(",", ":"), ensure_ascii=False)


class Variant(Protocol):
    """What the router needs from a server variant."""

    #: ``time.monotonic()`` of each stream the server stopped delivering to.
    dropped: list[float]

    def lifespan(self) -> AbstractAsyncContextManager[None]: ...

    def backlog(self) -> int | None: ...

    async def stream(self, scope: Scope, receive: Receive, send: Send) -> None: ...

    async def publish(self, event: OrderUpdated) -> None: ...


class _TimedRegistry(InMemoryClientRegistry):
    """Notes when the broadcaster drops a connection, e.g. when it evicts a slow client."""

    def __init__(self, dropped: list[float]) -> None:
        super().__init__()
        self._dropped = dropped

    def remove(self, connection_id: str) -> SseConnection | None:
        connection = super().remove(connection_id)
        if connection is not None:
            self._dropped.append(time.monotonic())
        return connection


def bench_write_delay() -> Any:
    """``SSEBUS_BENCH_WRITE_DELAY``: a float of seconds, or the string ``auto`` as is."""
    raw = os.environ.get("SSEBUS_BENCH_WRITE_DELAY", "auto").strip()
    return raw if raw == "auto" else float(raw)


class SsebusVariant:
    """``Broadcaster`` on an ``InMemoryEventBus``; ``SseEndpoint`` streams it."""

    write_delay: Any = 0.0

    def __init__(self) -> None:
        self.dropped: list[float] = []
        self.bus = InMemoryEventBus()
        self.broadcaster = Broadcaster(
            self.bus,
            EventMap({OrderUpdated: ("order", payload)}),
            heartbeat=15.0,
            write_delay=self.write_delay,
            # The default ("auto") refuses connections beyond 90% of the open-files limit:
            # 18,000 at the 20,000 here, fewer than idle20k opens.
            max_connections=None,
        )
        # Set, not passed: Broadcaster(registry=...) drops a registry that is empty, as
        # ``registry or InMemoryClientRegistry()`` finds it false.
        self.broadcaster.registry = _TimedRegistry(self.dropped)
        self.endpoint = SseEndpoint(self.broadcaster, retry=None)

    @asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        async with self.broadcaster:
            yield

    def backlog(self) -> None:
        return None  # bounded by max_queue; a fuller queue is evicted

    async def stream(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.endpoint(scope, receive, send)

    async def publish(self, event: OrderUpdated) -> None:
        await self.bus.publish(event)


class SsebusDelayVariant(SsebusVariant):
    """The same with ``write_delay`` from ``SSEBUS_BENCH_WRITE_DELAY`` (default ``auto``:
    a busy stream writes at most once per four turns of the event loop; a number is
    seconds)."""

    write_delay = bench_write_delay()


class SseStarletteVariant:
    """The sse-starlette broadcast recipe: every client's ``EventSourceResponse`` drains
    its own ``asyncio.Queue``; publishing puts one event dict in every queue, which each
    response encodes. Default ping (15 s); ``sep="\\n"`` so the frames match the others."""

    def __init__(self) -> None:
        self.dropped: list[float] = []
        self.queues: set[asyncio.Queue[dict[str, str]]] = set()
        self.ids = itertools.count(1)

    @asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        yield

    def backlog(self) -> int:
        return max((queue.qsize() for queue in self.queues), default=0)

    async def stream(self, scope: Scope, receive: Receive, send: Send) -> None:
        queue: asyncio.Queue[dict[str, str]] = asyncio.Queue()

        async def events() -> AsyncIterator[dict[str, str]]:
            while True:
                yield await queue.get()

        self.queues.add(queue)
        try:
            await EventSourceResponse(events(), sep="\n")(scope, receive, send)
        finally:
            self.queues.discard(queue)
            self.dropped.append(time.monotonic())

    async def publish(self, event: OrderUpdated) -> None:
        message = {"id": f"{next(self.ids):0{ID_WIDTH}}", "event": "order", "data": dumps(event)}
        for queue in self.queues:
            queue.put_nowait(message)


class BareVariant:
    """The ceiling: encode once, queue the bytes for every client, one ``send`` per frame.
    No heartbeat, no disconnect watching, no bound on the queues."""

    def __init__(self) -> None:
        self.dropped: list[float] = []
        self.queues: set[asyncio.Queue[bytes]] = set()
        self.ids = itertools.count(1)

    @asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        yield

    def backlog(self) -> int:
        return max((queue.qsize() for queue in self.queues), default=0)

    async def stream(self, scope: Scope, receive: Receive, send: Send) -> None:
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.queues.add(queue)
        try:
            await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
            while True:
                data = await queue.get()
                await send({"type": "http.response.body", "body": data, "more_body": True})
        finally:
            self.queues.discard(queue)
            self.dropped.append(time.monotonic())

    async def publish(self, event: OrderUpdated) -> None:
        event_id = f"{next(self.ids):0{ID_WIDTH}}"
        frame = f"id: {event_id}\nevent: order\ndata: {dumps(event)}\n\n".encode()
        for queue in self.queues:
            queue.put_nowait(frame)


VARIANTS: dict[str, Callable[[], Variant]] = {
    "ssebus": SsebusVariant,
    "ssebus-delay": SsebusDelayVariant,
    "sse-starlette": SseStarletteVariant,
    "bare": BareVariant,
}


async def publish_events(
    publish: Callable[[OrderUpdated], Awaitable[None]],
    count: int,
    rate: float,
    size: int,
    yield_every: int,
) -> tuple[float, float]:
    """Publish ``count`` events, paced at ``rate`` per second (0: burst); return start, end."""
    pad = "x" * max(0, size - len(dumps(OrderUpdated("ord-000000", "delivered", 1e5, ""))))
    started = time.monotonic()
    for i in range(count):
        if rate:
            delay = started + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        elif i % yield_every == 0:
            await asyncio.sleep(0)
        await publish(OrderUpdated(f"ord-{i:06}", STATUSES[i % 4], time.monotonic(), pad))
    return started, time.monotonic()


class GcLog:
    """The garbage collections since the last reset, timed by ``gc.callbacks``."""

    def __init__(self) -> None:
        self.count = 0
        self.total = 0.0
        self.longest = 0.0
        self.by_generation = [0, 0, 0]
        self._started = 0.0
        gc.callbacks.append(self)

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        took = time.perf_counter() - self._started
        self.count += 1
        self.total += took
        self.longest = max(self.longest, took)
        self.by_generation[info["generation"]] += 1

    def reset(self) -> None:
        self.count, self.total, self.longest = 0, 0.0, 0.0
        self.by_generation = [0, 0, 0]

    def stats(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "seconds": self.total,
            "longest": self.longest,
            "by_generation": self.by_generation,
        }


class Router:
    """Routes ``/sse`` to the variant and serves the control endpoints."""

    def __init__(self, variant: Variant) -> None:
        self.variant = variant
        self.connected = 0
        self.body_sends = 0
        self.last_send = 0.0  # time.monotonic() of the latest body send of an event (idle20k)
        self.gc_log = GcLog()
        self._memory_baseline: tracemalloc.Snapshot | None = None

    def counting(self, send: Send) -> Send:
        """``send``, counting the ``http.response.body`` messages (no extra coroutine)."""

        def counted(message: Message) -> Awaitable[None]:
            if message["type"] == "http.response.body":
                self.body_sends += 1
                if b'"t":' in message.get("body", b""):  # an event's frame, not a ping
                    self.last_send = time.monotonic()
            return send(message)

        return counted

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await receive()
            async with self.variant.lifespan():
                await send({"type": "lifespan.startup.complete"})
                await receive()
            await send({"type": "lifespan.shutdown.complete"})
            return
        path = scope["path"]
        if path == "/sse":
            self.connected += 1
            try:
                await self.variant.stream(scope, receive, self.counting(send))
            finally:
                self.connected -= 1
            return
        if path == "/publish":
            query = {k: v[-1] for k, v in parse_qs(scope["query_string"].decode()).items()}
            started, ended = await publish_events(
                self.variant.publish,
                count=int(query.get("count", "1000")),
                rate=float(query.get("rate", "0")),
                size=int(query.get("size", "100")),
                yield_every=int(query.get("yield_every", "10")),
            )
            await respond(send, {"started": started, "ended": ended})
        elif path == "/stats":
            if b"reset=1" in scope["query_string"]:
                self.gc_log.reset()
            variant = self.variant
            stats = {"connected": self.connected, "dropped": variant.dropped}
            loop = type(asyncio.get_running_loop()).__module__.partition(".")[0]
            await respond(
                send,
                {
                    **stats,
                    "backlog": variant.backlog(),
                    "body_sends": self.body_sends,
                    "last_send": self.last_send,
                    "pid": os.getpid(),
                    "loop": loop,
                    "gc": self.gc_log.stats(),
                },
            )
        elif path == "/objects":
            await respond(send, {"objects": len(gc.get_objects())})
        elif path == "/freeze":
            gc.collect()
            gc.freeze()
            await respond(send, {"frozen": gc.get_freeze_count()})
        elif path == "/sndbuf":
            query = {k: v[-1] for k, v in parse_qs(scope["query_string"].decode()).items()}
            await respond(send, {"sockets": set_sndbuf(int(query["bytes"]))})
        elif path == "/memory":
            await respond(send, self.memory_growth())
        else:
            await respond(send, {"error": "not found"}, status=404)

    def memory_growth(self) -> list[tuple[str, int, int]]:
        """(site, bytes, blocks) of the sites that grew since the last call, largest first."""
        if not tracemalloc.is_tracing():
            return []
        snapshot = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(False, tracemalloc.__file__)]
        )
        baseline, self._memory_baseline = self._memory_baseline, snapshot
        if baseline is None:
            return []
        stats = snapshot.compare_to(baseline, "lineno")
        return [
            (str(s.traceback), s.size_diff, s.count_diff) for s in stats[:25] if s.size_diff > 0
        ]


async def respond(send: Send, body: Any, status: int = 200) -> None:
    """Answer with ``body`` as JSON."""
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(data))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


def set_sndbuf(size: int) -> int:
    """Set SO_SNDBUF on every connected TCP socket of this process; return how many."""
    done = 0
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            if not os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                continue
            sock = socket.socket(fileno=os.dup(fd))  # the family and type are detected
        except OSError:
            continue
        with sock:
            if sock.family != socket.AF_INET or sock.type != socket.SOCK_STREAM:
                continue
            try:
                sock.getpeername()
            except OSError:
                continue  # listening, not connected
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
            done += 1
    return done


def granian_app() -> Router:
    """The factory granian loads (``--factory``): the variant in ``SSEBUS_BENCH_VARIANT``."""
    raise_open_files_limit()
    logging.getLogger("ssebus").setLevel(logging.ERROR)
    return Router(VARIANTS[os.environ["SSEBUS_BENCH_VARIANT"]]())


def raise_open_files_limit() -> None:
    """Allow as many open sockets as the hard limit does (10,000 clients need more than 1,024)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve one fan-out benchmark variant.")
    parser.add_argument("variant", choices=sorted(VARIANTS))
    parser.add_argument("--server", choices=("uvicorn", "hypercorn"), default="uvicorn")
    parser.add_argument("--sndbuf", type=int, default=0, help="SO_SNDBUF of every connection")
    args = parser.parse_args()
    raise_open_files_limit()
    # An evicted client is logged at WARNING per connection; the benchmark counts them instead.
    logging.getLogger("ssebus").setLevel(logging.ERROR)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if args.sndbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, args.sndbuf)  # inherited on accept
    sock.bind(("127.0.0.1", 0))
    sock.listen(4096)
    print(f"port {sock.getsockname()[1]}", flush=True)
    app = Router(VARIANTS[args.variant]())
    if args.server == "hypercorn":
        serve_hypercorn(app, sock)
    else:
        serve_uvicorn(app, sock)


def serve_uvicorn(app: Router, sock: socket.socket) -> None:
    """Serve on ``sock`` under uvicorn: uvloop, httptools, one worker."""
    import uvicorn

    config = uvicorn.Config(
        app,
        loop="uvloop",
        http="httptools",
        workers=1,
        log_level="warning",
        access_log=False,
        lifespan="on",
        backlog=4096,
        timeout_graceful_shutdown=2,
    )
    # Uvicorn reports each evicted stream (its response cannot be ended on a socket the
    # client stopped reading); the benchmark counts evictions itself.
    logging.getLogger("uvicorn.error").addFilter(
        lambda record: "without completing response" not in record.getMessage()
    )
    uvicorn.Server(config).run(sockets=[sock])


def serve_hypercorn(app: Router, sock: socket.socket) -> None:
    """Serve on ``sock`` under hypercorn's asyncio worker (the standard loop), in process."""
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    config = Config()
    config.bind = [f"fd://{sock.fileno()}"]
    config.backlog = 4096
    config.accesslog = None
    config.loglevel = "WARNING"
    config.graceful_timeout = 2
    asyncio.run(serve(cast(Any, app), config, mode="asgi"))


if __name__ == "__main__":
    main()
