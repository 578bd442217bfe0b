"""The ASGI apps the live-server tests serve, and a launcher that serves them gracefully.

Not a test module: every factory here runs inside a server subprocess, started by
``tests/servers.py`` either through a server's own command line
(``uvicorn --factory tests.apps:starlette_app``, ``hypercorn 'tests.apps:starlette_app()'``,
``daphne tests.apps:instances.starlette_app``) or through :func:`main`
(``python tests/apps.py uvicorn starlette_app --port N``), which serves programmatically
and ends every stream as soon as the server is asked to stop.

Factories:

* :func:`raw_app` - ``SseEndpoint`` as the top-level ASGI app; it runs the broadcaster's
  lifespan itself. Nothing publishes to it; it serves the protocol-level tests.
* :func:`auth_app` - the same, with an ``authorize`` hook that wants ``Bearer good``.
* :func:`starlette_app` / :func:`fastapi_app` - the endpoint mounted in a framework app, plus
  ``POST /publish`` ``{"data": str, "event"?: str, "tenant"?: str}`` (broadcast as is,
  answers ``{"id"}``, the position token the frame was given), ``POST /domain``
  ``{"text": str}`` (a domain event published on the bus, mapped to a ``noted`` event;
  answers its ``{"id"}`` too), ``POST /burst`` ``{"count": int}`` (that many events,
  data ``0``, ``1``, ..., one per turn of the event loop),
  ``POST /kick`` (aborts every stream) and ``GET /metrics``.
* :func:`worker_app` / :func:`redis_worker_app` - for several worker processes: the endpoint
  at ``/events`` answering with an ``x-worker-pid`` header, ``POST /domain`` as above, and
  ``noted`` payloads carrying the pid of the worker that delivered them; on the in-memory bus,
  or on the Redis bus ``SSEBUS_TEST_REDIS_STREAM`` at ``SSEBUS_TEST_REDIS_URL`` (streams mode).
* :func:`orders_app` - the demo of ``examples/orders_app.py`` plus ``POST /kick``;
  :func:`orders_app_short_history` the same keeping only the last 2 events per tenant, so
  a page that misses 3 gets a ``reset``.

``SSEBUS_TEST_HEARTBEAT`` sets the heartbeat in seconds (``off``: none; default 15);
``SSEBUS_TEST_WRITE_TIMEOUT`` and ``SSEBUS_TEST_SHUTDOWN_TIMEOUT`` the broadcaster's, and
``SSEBUS_TEST_WRITE_DELAY`` its ``write_delay`` (seconds or ``auto``; default 0).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager, suppress
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import anyio
import anyio.lowlevel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ssebus import (
    Broadcaster,
    EventHistory,
    EventMap,
    IEventBus,
    InMemoryEventBus,
    InMemoryHistory,
    Refusal,
    ServerSentEvent,
    SseEndpoint,
    Subscription,
)
from ssebus._types import ASGIApp, Message, Receive, Scope, Send

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make ``examples`` importable
    sys.path.insert(0, str(ROOT))

from examples.orders_app import build_app  # noqa: E402

HEARTBEAT_ENV = "SSEBUS_TEST_HEARTBEAT"
#: The ``retry:`` every test endpoint announces first.
RETRY_MS = 3000


@dataclass(frozen=True)
class Noted:
    """The domain event ``POST /domain`` publishes on the bus."""

    text: str


def heartbeat_from_env() -> float | None:
    value = os.environ.get(HEARTBEAT_ENV, "15")
    return None if value == "off" else float(value)


def seconds_from_env(name: str, default: float) -> float:
    """A broadcaster timeout a test sets through the environment (``SSEBUS_TEST_<NAME>``)."""
    return float(os.environ.get(f"SSEBUS_TEST_{name.upper()}", default))


def new_broadcaster() -> Broadcaster:
    # The server's output is shown when a test fails: let it tell each connection's story.
    logger = logging.getLogger("ssebus")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    events = EventMap()
    events.add(Noted, "noted", lambda event: {"text": event.text})
    delay = os.environ.get("SSEBUS_TEST_WRITE_DELAY", "0")
    return Broadcaster(
        InMemoryEventBus(),
        events,
        heartbeat=heartbeat_from_env(),
        write_delay="auto" if delay == "auto" else float(delay),
        write_timeout=seconds_from_env("write_timeout", 10.0),
        shutdown_timeout=seconds_from_env("shutdown_timeout", 5.0),
    )


def raw_app() -> SseEndpoint:
    """``SseEndpoint`` alone, as the whole ASGI app."""
    return SseEndpoint(new_broadcaster(), retry=RETRY_MS)


async def bearer_good(scope: MutableMapping[str, Any]) -> Refusal | None:
    """Accept only ``authorization: Bearer good``."""
    for name, value in scope.get("headers", ()):
        if name == b"authorization" and value == b"Bearer good":
            return None
    return Refusal(401, "Unauthorized")


def auth_app() -> SseEndpoint:
    """``SseEndpoint`` alone, refusing requests without ``authorization: Bearer good``."""
    return SseEndpoint(new_broadcaster(), retry=RETRY_MS, authorize=bearer_good)


def control_routes(broadcaster: Broadcaster) -> list[Route]:
    """The routes a test drives the broadcaster with."""

    async def publish(request: Request) -> Response:
        body = await request.json()
        frame = broadcaster.broadcast(
            ServerSentEvent(data=body["data"], event=body.get("event", "note")),
            tenant=body.get("tenant"),
        )
        return JSONResponse({"id": frame.id})

    async def burst(request: Request) -> Response:
        count = (await request.json())["count"]
        for n in range(count):  # one per turn of the loop, as handlers publishing one would
            broadcaster.broadcast(ServerSentEvent(data=str(n), event="note"))
            await anyio.lowlevel.checkpoint()
        return JSONResponse({"published": count})

    async def domain(request: Request) -> Response:
        body = await request.json()
        await broadcaster.bus.publish(Noted(body["text"]))
        # The in-memory bus delivers before ``publish`` returns: the newest position is
        # this event's, and its (tenant-less) id is the token of that position.
        return JSONResponse({"id": broadcaster.position_id()})

    async def kick(request: Request) -> Response:
        connections = broadcaster.registry.snapshot()
        for connection in connections:
            connection.abort("kicked")
        return JSONResponse({"kicked": len(connections)})

    async def metrics(request: Request) -> Response:
        return JSONResponse(broadcaster.metrics().as_dict())

    return [
        Route("/publish", publish, methods=["POST"]),
        Route("/burst", burst, methods=["POST"]),
        Route("/domain", domain, methods=["POST"]),
        Route("/kick", kick, methods=["POST"]),
        Route("/metrics", metrics),
    ]


def broadcaster_lifespan(
    broadcaster: Broadcaster,
) -> Callable[[Any], AbstractAsyncContextManager[None]]:
    """A framework lifespan that runs ``broadcaster`` for the life of the app."""

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        async with broadcaster:
            yield

    return lifespan


async def tenant_from_query(scope: MutableMapping[str, Any]) -> Subscription | None:
    """``?tenant=NAME`` subscribes to that tenant's events (and those of no tenant); an
    empty ``?tenant=`` makes the hook raise, as a buggy one would."""
    query = parse_qs(bytes(scope.get("query_string", b"")).decode(), keep_blank_values=True)
    if "tenant" not in query:
        return None
    tenant = query["tenant"][0]
    if not tenant:
        raise ValueError("tenant: empty")
    return Subscription(tenant=tenant)


def starlette_app() -> Starlette:
    """The endpoint as a Starlette ``Route("/events", endpoint)`` (``?tenant=`` picks a
    tenant), plus control routes."""
    broadcaster = new_broadcaster()
    app = Starlette(
        routes=[
            Route("/events", SseEndpoint(broadcaster, retry=RETRY_MS, authorize=tenant_from_query)),
            *control_routes(broadcaster),
        ],
        lifespan=broadcaster_lifespan(broadcaster),
    )
    app.state.broadcaster = broadcaster
    return app


def fastapi_app() -> Starlette:
    """The endpoint in FastAPI: as a route at ``/events`` and ``mount``-ed at ``/mounted/``."""
    from fastapi import FastAPI

    broadcaster = new_broadcaster()
    endpoint = SseEndpoint(broadcaster, retry=RETRY_MS)
    app = FastAPI(lifespan=broadcaster_lifespan(broadcaster))
    app.mount("/mounted", endpoint)
    # ``add_route`` would do at run time, but is typed for request -> response functions.
    app.router.routes.extend([Route("/events", endpoint), *control_routes(broadcaster)])
    app.state.broadcaster = broadcaster
    return app


class WithPidHeader:
    """``app``, its responses saying which process served them (``x-worker-pid``); a class,
    so that Starlette's ``Route`` serves it as an ASGI app."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        pid = str(os.getpid()).encode()

        async def send_with_pid(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [*message["headers"], (b"x-worker-pid", pid)]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_pid)


def worker_starlette_app(bus: IEventBus, *runs: AbstractAsyncContextManager[Any]) -> Starlette:
    """The app of :func:`worker_app` on ``bus``; ``runs`` are entered in its lifespan."""
    events = EventMap()
    events.add(Noted, "noted", lambda event: {"text": event.text, "pid": os.getpid()})
    broadcaster = Broadcaster(bus, events, heartbeat=heartbeat_from_env())

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            for run in (*runs, broadcaster):
                await stack.enter_async_context(run)
            yield

    async def domain(request: Request) -> Response:
        body = await request.json()
        await bus.publish(Noted(body["text"]))
        return JSONResponse({"pid": os.getpid()})

    app = Starlette(
        routes=[
            Route("/events", WithPidHeader(SseEndpoint(broadcaster, retry=RETRY_MS))),
            Route("/domain", domain, methods=["POST"]),
        ],
        lifespan=lifespan,
    )
    app.state.broadcaster = broadcaster
    return app


def worker_app() -> Starlette:
    """:func:`worker_starlette_app` on an in-memory bus: each worker process has its own."""
    new_broadcaster()  # the log handler
    return worker_starlette_app(InMemoryEventBus())


def redis_worker_app() -> Starlette:
    """:func:`worker_starlette_app` on one Redis bus that every worker process shares."""
    from ssebus.redis import RedisEventBus

    new_broadcaster()  # the log handler
    bus = RedisEventBus(
        os.environ["SSEBUS_TEST_REDIS_URL"],
        mode="streams",
        stream=os.environ["SSEBUS_TEST_REDIS_STREAM"],
    )
    bus.register(Noted)
    return worker_starlette_app(bus, bus)


def orders_app(history: EventHistory | None = None) -> Starlette:
    """The live-orders demo, unchanged, plus ``POST /kick`` (abort every stream)."""
    app = build_app(heartbeat=heartbeat_from_env() or 15.0, history=history)
    broadcaster: Broadcaster = app.state.broadcaster
    app.router.routes.extend(r for r in control_routes(broadcaster) if r.path == "/kick")
    return app


def orders_app_short_history() -> Starlette:
    """:func:`orders_app` keeping the last 2 events per tenant: missing 3 means a reset."""
    return orders_app(InMemoryHistory(max_events=2))


FACTORIES: dict[str, Callable[[], Any]] = {
    "raw_app": raw_app,
    "auth_app": auth_app,
    "starlette_app": starlette_app,
    "fastapi_app": fastapi_app,
    "worker_app": worker_app,
    "redis_worker_app": redis_worker_app,
    "orders_app": orders_app,
    "orders_app_short_history": orders_app_short_history,
}


class _Instances:
    """``daphne tests.apps:instances.raw_app``: daphne takes an app object, not a factory."""

    def __getattr__(self, factory: str) -> Any:
        if factory not in FACTORIES:
            raise AttributeError(factory)
        return FACTORIES[factory]()


instances = _Instances()


def broadcaster_of(app: Any) -> Broadcaster:
    broadcaster = app.broadcaster if isinstance(app, SseEndpoint) else app.state.broadcaster
    assert isinstance(broadcaster, Broadcaster)
    return broadcaster


# -- the graceful launcher ----------------------------------------------------------------


async def serve_uvicorn(app: Any, port: int) -> None:
    """As ``examples/orders_app.py`` does: watch ``should_exit``, then end every stream.

    Uvicorn waits for open responses before it runs the lifespan shutdown, so without the
    watcher an open stream would keep the server alive forever.
    """
    import uvicorn

    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )

    async def close_streams_on_exit() -> None:
        while not server.should_exit:  # noqa: ASYNC110 - uvicorn offers a flag, not an event
            await anyio.sleep(0.05)
        await broadcaster_of(app).aclose()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(close_streams_on_exit)
        await server.serve()
        tasks.cancel_scope.cancel()


async def serve_hypercorn(app: Any, port: int, *, trio: bool = False) -> None:
    """Serve with Hypercorn; on SIGINT/SIGTERM end every stream, then let Hypercorn stop.

    Hypercorn (asyncio and trio workers alike) stops accepting on a signal and then waits up
    to ``graceful_timeout`` (3 s) for open requests before it cancels them and only then runs
    the lifespan shutdown. A stream never finishes on its own, so it would be cut at that
    timeout without the goodbye ``retry:``. Passing ``shutdown_trigger`` replaces Hypercorn's
    own signal handlers: ours closes the broadcaster first (each client gets its final
    frame and a properly ended body), then returns to start Hypercorn's shutdown.
    """
    from hypercorn.config import Config

    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None

    async def shutdown_trigger() -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                break
        await broadcaster_of(app).aclose()

    if trio:
        from hypercorn.trio import serve as trio_serve

        await trio_serve(app, config, shutdown_trigger=shutdown_trigger)
    else:
        from hypercorn.asyncio import serve as asyncio_serve

        await asyncio_serve(app, config, shutdown_trigger=shutdown_trigger)


SERVE: dict[str, tuple[Callable[[Any, int], Awaitable[None]], str]] = {
    "uvicorn": (serve_uvicorn, "asyncio"),
    "hypercorn": (serve_hypercorn, "asyncio"),
    "hypercorn-trio": (partial(serve_hypercorn, trio=True), "trio"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve a test app; end streams on SIGINT.")
    parser.add_argument("server", choices=sorted(SERVE))
    parser.add_argument("factory", choices=sorted(FACTORIES))
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    serve, backend = SERVE[args.server]
    app = FACTORIES[args.factory]()
    # Uvicorn re-raises the SIGINT it handled once it has shut down gracefully.
    with suppress(KeyboardInterrupt):
        anyio.run(partial(serve, app, args.port), backend=backend)


if __name__ == "__main__":
    main()
