"""A broadcaster that is not running is said out loud, once, with the fix - never a flood.

An endpoint whose broadcaster is not running (a lifespan never wired, a server or a test
transport that sends no lifespan) still answers ``503`` + ``Retry-After``, and logs one
warning per period of not running. ``InMemoryEventBus.publish`` of an event nobody
subscribes to (no broadcaster running) warns once per event type, then at debug level.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import anyio
import httpx
import pytest
from clients import wait_until
from starlette.applications import Starlette
from starlette.routing import Mount

from ssebus import Broadcaster, EventMap, InMemoryEventBus, SseEndpoint
from ssebus._types import Message

pytestmark = pytest.mark.anyio

GUARD = 5.0


@dataclass(frozen=True)
class Noted:
    text: str


@dataclass(frozen=True)
class Other:
    text: str


def noted_events() -> EventMap:
    events = EventMap()
    events.add(Noted, "noted", lambda event: {"text": event.text})
    return events


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "ssebus" and r.levelno >= logging.WARNING
    ]


async def get(endpoint: SseEndpoint) -> list[Message]:
    """One GET to ``endpoint`` in process, by a client that leaves at once."""
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/", "headers": [], "query_string": b""}
    with anyio.fail_after(GUARD):
        await endpoint(scope, receive, send)
    return sent


def status_of(sent: list[Message]) -> tuple[int, dict[bytes, bytes]]:
    start = sent[0]
    assert start["type"] == "http.response.start"
    return start["status"], dict(start["headers"])


async def test_an_endpoint_whose_broadcaster_is_not_running_warns_once_with_the_fix(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="ssebus")
    endpoint = SseEndpoint(Broadcaster(InMemoryEventBus(), noted_events()))
    for _ in range(5):
        status, headers = status_of(await get(endpoint))
        assert status == 503
        assert headers[b"retry-after"] == b"5"
    [warning] = warnings_of(caplog)
    assert "Broadcaster is not running" in warning
    assert "wire its lifespan (see README)" in warning
    assert "run SseEndpoint as the top-level app" in warning


async def test_the_warning_comes_again_only_after_the_broadcaster_ran_and_stopped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="ssebus")
    broadcaster = Broadcaster(InMemoryEventBus(), noted_events(), heartbeat=None)
    endpoint = SseEndpoint(broadcaster)
    await get(endpoint)
    await get(endpoint)
    assert len(warnings_of(caplog)) == 1
    async with broadcaster:
        status, _ = status_of(await get(endpoint))
        assert status == 200
        await wait_until(lambda: not len(broadcaster.registry))
    for _ in range(3):
        status, _ = status_of(await get(endpoint))
        assert status == 503
    assert len([w for w in warnings_of(caplog) if "not running" in w]) == 2


async def test_a_mounted_endpoint_without_its_lifespan_warns_under_httpx_asgi_transport(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # httpx's ASGITransport sends no lifespan: the app's broadcaster never starts.
    caplog.set_level(logging.WARNING, logger="ssebus")
    app = Starlette(
        routes=[Mount("/events", SseEndpoint(Broadcaster(InMemoryEventBus(), noted_events())))]
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        for _ in range(3):
            response = await client.get("/events/")
            assert response.status_code == 503
            assert response.headers["retry-after"] == "5"
    [warning] = warnings_of(caplog)
    assert "not running" in warning


async def test_publish_with_nobody_subscribed_warns_once_per_event_type_then_debugs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="ssebus")
    bus = InMemoryEventBus()
    await bus.publish(Noted("1"))
    await bus.publish(Noted("2"))
    await bus.publish(Other("1"))
    await bus.publish(Other("2"))
    warnings = warnings_of(caplog)
    assert len(warnings) == 2
    assert "nobody subscribes to Noted" in warnings[0]
    assert "nobody subscribes to Other" in warnings[1]
    assert all("Broadcaster running" in w for w in warnings)
    debugs = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.DEBUG and "nobody subscribes" in r.getMessage()
    ]
    assert len(debugs) == 2
    # Once the broadcaster runs (it subscribes to everything), nothing more is said.
    said = len(caplog.records)
    async with Broadcaster(bus, noted_events(), heartbeat=None):
        await bus.publish(Noted("3"))
        await bus.publish(Other("3: unmapped, still heard"))
    assert not any("nobody subscribes" in r.getMessage() for r in caplog.records[said:])
