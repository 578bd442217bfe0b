"""A ``Broadcaster`` starts again after a clean stop: the README's module-level app serves
a second ``TestClient(app)``, a second lifespan, a second ``async with``.

Each run is fresh - its own task group, heartbeat, connections, subscription to the bus,
position key - and starting one that is running is a ``ClosedError`` that says so.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

import anyio
import pytest
from clients import Client, join, leave, wait_until
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from ssebus import (
    Broadcaster,
    ClosedError,
    EventMap,
    InMemoryEventBus,
    InMemoryHistory,
    ServerSentEvent,
    SseEndpoint,
)
from ssebus._types import Message

GUARD = 5.0
Backend = Literal["asyncio", "trio"]


@dataclass(frozen=True)
class Noted:
    text: str


def noted_events() -> EventMap:
    events = EventMap()
    events.add(Noted, "noted", lambda event: {"text": event.text})
    return events


# -- async with, twice ------------------------------------------------------------------------


async def one_run(bus: InMemoryEventBus, broadcaster: Broadcaster, text: str) -> Client:
    """Start ``broadcaster``, publish ``text`` to one client, wait for a heartbeat, stop."""
    async with anyio.create_task_group() as tasks, broadcaster:
        client = await join(tasks, broadcaster)
        await bus.publish(Noted(text))
        # The heartbeat of this run reaches this run's client.
        await wait_until(lambda: b": ping" in client.stream)
        assert len(broadcaster.registry) == 1
    assert len(broadcaster.registry) == 0
    return client


@pytest.mark.anyio
async def test_async_with_twice_serves_each_run_afresh() -> None:
    bus = InMemoryEventBus()
    broadcaster = Broadcaster(bus, noted_events(), heartbeat=0.01)
    with anyio.fail_after(GUARD):
        first = await one_run(bus, broadcaster, "first")
        second = await one_run(bus, broadcaster, "second")
    for client, text in ((first, "first"), (second, "second")):
        noted = [e.data for e in client.events() if e.type == "noted"]
        # Exactly once: the first run's subscription to the bus did not outlive it.
        assert noted == [f'{{"text":"{text}"}}']
        assert b": server shutting down\nretry: " in client.stream  # its run's goodbye
    # A fresh position key per run: the first run's ids mean nothing in the second.
    assert not first.ids() & second.ids()


@pytest.mark.anyio
async def test_after_a_restart_a_client_of_the_previous_run_is_reset() -> None:
    bus = InMemoryEventBus()
    broadcaster = Broadcaster(bus, noted_events(), heartbeat=None)
    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as tasks, broadcaster:
            first = await join(tasks, broadcaster)
            await bus.publish(Noted("before"))
        async with anyio.create_task_group() as tasks, broadcaster:
            assert broadcaster.position == 0
            again = await join(tasks, broadcaster, last_event_id=first.last_event_id())
            await bus.publish(Noted("after"))
            await wait_until(lambda: any(e.type == "noted" for e in again.events()))
            await leave(again)
    assert [e.type for e in again.events()] == ["reset", "noted"]


@pytest.mark.anyio
async def test_starting_a_running_broadcaster_raises_a_closed_error_that_says_so() -> None:
    broadcaster = Broadcaster(InMemoryEventBus(), noted_events(), heartbeat=None)
    async with broadcaster:
        with pytest.raises(ClosedError, match="already running"):
            await broadcaster.__aenter__()
        # ... and the running one is untouched.
        async with anyio.create_task_group() as tasks:
            client = await join(tasks, broadcaster)
            broadcaster.broadcast(ServerSentEvent(data="still here"))
            await wait_until(lambda: any(e.data == "still here" for e in client.events()))
            await leave(client)


@pytest.mark.anyio
async def test_a_start_that_fails_leaves_the_broadcaster_startable() -> None:
    class FlakyHistory(InMemoryHistory):
        failures = 1

        def start(self, position: int) -> None:
            if self.failures:
                self.failures -= 1
                raise OSError("history store unavailable")
            super().start(position)

    bus = InMemoryEventBus()
    broadcaster = Broadcaster(bus, noted_events(), history=FlakyHistory(), heartbeat=0.01)
    with anyio.fail_after(GUARD):
        with pytest.raises(OSError, match="unavailable"):
            async with broadcaster:
                pass
        async with anyio.create_task_group() as tasks, broadcaster:
            client = await join(tasks, broadcaster)
            await bus.publish(Noted("once"))
            await wait_until(lambda: any(e.type == "noted" for e in client.events()))
            await leave(client)
    assert [e.data for e in client.events() if e.type == "noted"] == ['{"text":"once"}']


# -- the README's module-level app under Starlette's TestClient, twice --------------------


def module_level_app() -> tuple[Starlette, Broadcaster]:
    """What a user writes at module level: one bus, one broadcaster, one app."""
    bus = InMemoryEventBus()
    broadcaster = Broadcaster(bus, noted_events())

    async def publish(request: Request) -> Response:
        await bus.publish(Noted((await request.json())["text"]))
        return JSONResponse({"position": broadcaster.position, "id": broadcaster.position_id()})

    async def broadcast(request: Request) -> Response:
        frame = broadcaster.broadcast(ServerSentEvent(data="hello"))
        return JSONResponse({"id": frame.id})

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        async with broadcaster:
            yield

    app = Starlette(
        routes=[
            Route("/events", SseEndpoint(broadcaster)),
            Route("/publish", publish, methods=["POST"]),
            Route("/broadcast", broadcast, methods=["POST"]),
        ],
        lifespan=lifespan,
    )
    return app, broadcaster


def bounded(function: Callable[[], None], seconds: float = GUARD) -> None:
    """Run ``function`` in a thread and fail if it takes longer than ``seconds``: a
    ``TestClient`` whose lifespan went wrong may wait forever for a shutdown answer."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            function()
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s"
    if failure:
        raise failure[0]


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_two_test_clients_one_after_the_other_on_one_module_level_app(backend: Backend) -> None:
    app, _ = module_level_app()

    def clients() -> None:
        for _ in range(3):
            with TestClient(app, backend=backend) as client:
                response = client.post("/publish", json={"text": "hi"})
                assert response.status_code == 200, response.text
                assert response.json()["position"] == 1
                assert client.post("/broadcast").status_code == 200
                assert client.head("/events").status_code == 200

    bounded(clients)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_two_test_clients_on_a_top_level_endpoint_run_its_lifespan_twice(backend: Backend) -> None:
    broadcaster = Broadcaster(InMemoryEventBus(), noted_events())
    app = SseEndpoint(broadcaster)

    def clients() -> None:
        for _ in range(2):
            with TestClient(app, backend=backend) as client:
                assert client.head("/").status_code == 200
                broadcaster.broadcast(ServerSentEvent(data="running"))  # raises unless running

    bounded(clients)


async def one_lifespan(endpoint: SseEndpoint, broadcaster: Broadcaster) -> list[str]:
    """Run ``endpoint``'s lifespan: startup, a broadcast while it runs, shutdown; what it sent."""
    sent: list[str] = []
    started = anyio.Event()
    stop = anyio.Event()
    incoming: list[Message] = [{"type": "lifespan.startup"}]

    async def receive() -> Message:
        if incoming:
            return incoming.pop(0)
        await stop.wait()
        return {"type": "lifespan.shutdown"}

    async def send(message: Message) -> None:
        sent.append(message["type"])
        if message["type"] == "lifespan.startup.complete":
            started.set()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(endpoint, {"type": "lifespan"}, receive, send)
        await started.wait()
        broadcaster.broadcast(ServerSentEvent(data="running"))  # raises unless running
        stop.set()
    return sent


@pytest.mark.anyio
async def test_the_endpoint_lifespan_starts_and_stops_the_broadcaster_twice() -> None:
    broadcaster = Broadcaster(InMemoryEventBus(), noted_events(), heartbeat=0.01)
    endpoint = SseEndpoint(broadcaster)
    with anyio.fail_after(GUARD):
        for _ in range(2):
            assert await one_lifespan(endpoint, broadcaster) == [
                "lifespan.startup.complete",
                "lifespan.shutdown.complete",
            ]
