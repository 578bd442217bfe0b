"""Servers that send no ASGI lifespan (daphne): the endpoint starts its broadcaster itself.

An ``SseEndpoint`` whose broadcaster was never started, and that has seen no lifespan,
starts it at the first request, once, in a task it owns, in a process a server runs (one
that handles SIGTERM): that server's stop signal, chained through the endpoint, stops it
again. Elsewhere (a test harness with Python's default signals, another thread than the
main one, ``stop_on_signals=False``) nobody would ever stop it, so it answers 503 and says
so once, with the fix. A broadcaster that ran and stopped is never restarted behind the
user's back. Over real sockets under daphne, and in process on asyncio and trio.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Any

import anyio
import httpx
import pytest
from clients import wait_until
from servers import LIFESPANLESS_SERVERS, ServerProcess, serve_app
from starlette.testclient import TestClient

from ssebus import Broadcaster, EventMap, InMemoryEventBus, SseEndpoint
from ssebus._types import Message
from ssebus.testing import EventStreamParser, ParsedEvent

#: Seconds any single step of a test may take.
STEP = 5.0
#: The INFO line a lazy start logs, in part.
STARTED = "started the Broadcaster at the first request"


def started_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if STARTED in r.getMessage()]


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "ssebus" and r.levelno >= logging.WARNING
    ]


# -- under daphne, over real sockets --------------------------------------------------------


class Stream:
    """A streamed response read as ``EventSource`` reads it."""

    def __init__(self, response: httpx.Response) -> None:
        self._chunks = response.aiter_bytes()
        self._parser = EventStreamParser()
        self._events: list[ParsedEvent] = []

    async def events(self, count: int) -> list[ParsedEvent]:
        """The next ``count`` dispatched events (0: wait for the stream's position)."""
        with anyio.fail_after(STEP):
            while len(self._events) < count or not self._parser.last_event_id:
                self._events.extend(self._parser.feed(await self._chunks.__anext__()))
        taken, self._events = self._events[:count], self._events[count:]
        return taken


async def publish(client: httpx.AsyncClient, server: ServerProcess, data: str) -> str:
    response = await client.post(f"{server.url}/publish", json={"data": data, "event": "note"})
    response.raise_for_status()
    return str(response.json()["id"])


@pytest.fixture(params=LIFESPANLESS_SERVERS)
def lifespanless(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_daphne_streams_the_top_level_endpoint_and_says_once_why_it_started_it(
    lifespanless: str, anyio_backend: str
) -> None:
    with serve_app(lifespanless, "raw_app") as server:
        async with httpx.AsyncClient(timeout=STEP) as client:
            for _ in range(3):
                async with client.stream("GET", server.url) as response:
                    assert response.status_code == 200
                    assert await Stream(response).events(0) == []
        log = server.output()
    # daphne's root handler repeats each record: count those of the app's own handler.
    started = [line for line in log.splitlines() if line.startswith("INFO ssebus: ")]
    started = [line for line in started if STARTED in line]
    assert len(started) == 1, log
    assert "daphne" in started[0], started
    assert "not running" not in log, log


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_daphne_delivers_published_events_and_resumes_from_last_event_id(
    lifespanless: str, anyio_backend: str
) -> None:
    with serve_app(lifespanless, "starlette_app") as server:
        async with httpx.AsyncClient(timeout=STEP) as client:
            async with client.stream("GET", f"{server.url}/events") as response:
                assert response.status_code == 200
                stream = Stream(response)
                await stream.events(0)  # registered: what is published from now reaches it
                ids = [await publish(client, server, text) for text in ("a", "b", "c")]
                events = await stream.events(3)
            assert [(e.type, e.data, e.last_event_id) for e in events] == [
                ("note", text, id_) for text, id_ in zip("abc", ids, strict=True)
            ]
            headers = {"last-event-id": ids[0]}
            async with client.stream("GET", f"{server.url}/events", headers=headers) as resumed:
                assert resumed.status_code == 200
                missed = await Stream(resumed).events(2)
            assert [(e.data, e.last_event_id) for e in missed] == [("b", ids[1]), ("c", ids[2])]


# -- in process: a stand-in for the server's signal handlers ---------------------------------


@dataclass
class ServerSignals:
    """What a server installs for its graceful stop: handlers that note each signal."""

    received: list[int]


@contextmanager
def handlers(handler: Any) -> Iterator[None]:
    """SIGTERM and SIGINT handled by ``handler`` meanwhile; put back afterwards."""
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    for signum in before:
        signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, previous in before.items():
            signal.signal(signum, previous)


@pytest.fixture
def server_process() -> Iterator[ServerSignals]:
    """Make this process look like a server's: SIGTERM and SIGINT handled, as uvicorn,
    hypercorn and daphne (Twisted) do."""
    received: list[int] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        received.append(signum)

    with handlers(handler):
        yield ServerSignals(received)


@pytest.fixture
def harness_process() -> Iterator[None]:
    """A process as a test harness leaves it: Python's default signal handlers."""
    with handlers(signal.SIG_DFL):
        signal.signal(signal.SIGINT, signal.default_int_handler)
        yield


class Client:
    """One in-process GET: what the endpoint sent, and a way to leave."""

    def __init__(self) -> None:
        self.sent: list[Message] = []
        self.gone = anyio.Event()

    async def receive(self) -> Message:
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    @property
    def status(self) -> int | None:
        return int(self.sent[0]["status"]) if self.sent else None

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent[1:])

    @property
    def ended(self) -> bool:
        return bool(self.sent) and self.sent[-1].get("more_body") is False


SCOPE: dict[str, Any] = {
    "type": "http",
    "method": "GET",
    "path": "/",
    "headers": [],
    "query_string": b"",
}


async def request(endpoint: SseEndpoint, client: Client) -> None:
    await endpoint(dict(SCOPE), client.receive, client.send)


async def get_once(endpoint: SseEndpoint) -> Client:
    """A GET whose client leaves as soon as the response has started."""
    client = Client()
    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(request, endpoint, client)
            await wait_until(lambda: client.status is not None)
            client.gone.set()
    return client


class CountingBroadcaster(Broadcaster):
    """A Broadcaster that counts how often it was started."""

    starts = 0

    async def __aenter__(self) -> CountingBroadcaster:
        self.starts += 1
        return await super().__aenter__()


def new_endpoint(**options: Any) -> SseEndpoint:
    return SseEndpoint(
        CountingBroadcaster(InMemoryEventBus(), EventMap(), heartbeat=None), **options
    )


def starts(endpoint: SseEndpoint) -> int:
    """How often ``endpoint``'s broadcaster was started."""
    assert isinstance(endpoint.broadcaster, CountingBroadcaster)
    return endpoint.broadcaster.starts


@pytest.fixture
async def endpoint() -> AsyncIterator[SseEndpoint]:
    endpoint = new_endpoint()
    try:
        yield endpoint
    finally:
        with anyio.fail_after(STEP):
            await endpoint.aclose()


@pytest.mark.anyio
async def test_a_plain_request_without_lifespan_starts_the_broadcaster_and_says_why(
    server_process: ServerSignals, endpoint: SseEndpoint, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ssebus")
    for _ in range(3):
        client = await get_once(endpoint)
        assert client.status == 200
        assert client.body.startswith(b"retry: 3000\n\nid: ")
    assert starts(endpoint) == 1
    [started] = started_lines(caplog)
    assert STARTED in started
    assert "no ASGI lifespan" in started
    assert "daphne" in started
    assert not warnings_of(caplog)


@pytest.mark.anyio
async def test_two_concurrent_first_requests_start_the_broadcaster_once(
    server_process: ServerSignals, endpoint: SseEndpoint, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ssebus")
    clients = [Client(), Client()]
    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tasks:
            for client in clients:
                tasks.start_soon(request, endpoint, client)
            await wait_until(lambda: all(b"id: " in c.body for c in clients))
            assert isinstance(endpoint.broadcaster, Broadcaster)
            assert len(endpoint.broadcaster.registry) == 2
            for client in clients:
                client.gone.set()
    assert [c.status for c in clients] == [200, 200]
    assert starts(endpoint) == 1
    assert len(started_lines(caplog)) == 1
    assert not warnings_of(caplog)


@pytest.mark.anyio
async def test_sigterm_stops_a_lazily_started_broadcaster_then_reaches_the_server(
    server_process: ServerSignals, endpoint: SseEndpoint, caplog: pytest.LogCaptureFixture
) -> None:
    client = Client()
    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(request, endpoint, client)
            await wait_until(lambda: b"id: " in client.body)
            signal.raise_signal(signal.SIGTERM)
            await wait_until(lambda: server_process.received == [signal.SIGTERM])
    # The stream got its goodbye and a proper end before the server heard the signal.
    assert b": server shutting down\nretry: " in client.body, client.body
    assert client.ended
    assert not warnings_of(caplog)
    # ...and stays stopped: the next request is answered 503, nothing is restarted.
    assert (await get_once(endpoint)).status == 503
    assert starts(endpoint) == 1


@pytest.mark.anyio
async def test_after_a_clean_shutdown_the_endpoint_answers_503_and_never_restarts(
    server_process: ServerSignals, endpoint: SseEndpoint, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ssebus")
    assert (await get_once(endpoint)).status == 200
    await endpoint.aclose()
    for _ in range(3):
        client = await get_once(endpoint)
        assert client.status == 503
    assert starts(endpoint) == 1
    assert len(started_lines(caplog)) == 1
    [warning] = warnings_of(caplog)
    assert "not running" in warning


@pytest.mark.anyio
async def test_a_broadcaster_its_owner_ran_and_stopped_is_never_restarted(
    server_process: ServerSignals, endpoint: SseEndpoint, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ssebus")
    assert isinstance(endpoint.broadcaster, Broadcaster)
    async with endpoint.broadcaster:
        assert (await get_once(endpoint)).status == 200
    assert (await get_once(endpoint)).status == 503
    assert starts(endpoint) == 1
    assert not started_lines(caplog)


class RefusingBus(InMemoryEventBus):
    """A bus that cannot be subscribed to: its broadcaster's start fails."""

    def subscribe(self, event_type: Any, handler: Any) -> Any:
        raise RuntimeError("no subscriptions today")


@pytest.mark.anyio
async def test_after_a_failed_lifespan_startup_a_request_does_not_start_it_again(
    server_process: ServerSignals, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ssebus")
    endpoint = SseEndpoint(Broadcaster(RefusingBus(), EventMap(), heartbeat=None))
    said: list[Message] = []

    async def receive() -> Message:
        return {"type": "lifespan.startup"}

    async def send(message: Message) -> None:
        said.append(message)

    with anyio.fail_after(STEP):
        await endpoint({"type": "lifespan"}, receive, send)
    assert [m["type"] for m in said] == ["lifespan.startup.failed"]
    assert (await get_once(endpoint)).status == 503
    assert not started_lines(caplog)
    [warning] = warnings_of(caplog)
    assert "not running" in warning


@pytest.mark.anyio
async def test_outside_a_server_process_a_request_gets_503_and_one_warning_with_the_fix(
    harness_process: None, caplog: pytest.LogCaptureFixture
) -> None:
    # A test harness (no handler for SIGTERM): nobody would ever stop a lazy start.
    caplog.set_level(logging.INFO, logger="ssebus")
    endpoint = new_endpoint()
    for _ in range(3):
        assert (await get_once(endpoint)).status == 503
    assert starts(endpoint) == 0
    [warning] = warnings_of(caplog)
    assert "not running" in warning
    assert "async with" in warning


@pytest.mark.anyio
async def test_with_stop_on_signals_off_nothing_starts_lazily(
    server_process: ServerSignals, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ssebus")
    endpoint = new_endpoint(stop_on_signals=False)
    assert (await get_once(endpoint)).status == 503
    assert starts(endpoint) == 0
    [warning] = warnings_of(caplog)
    assert "not running" in warning


def test_a_test_client_without_its_with_block_gets_503_and_nothing_starts(
    server_process: ServerSignals, caplog: pytest.LogCaptureFixture
) -> None:
    # Each request then runs on a short-lived loop in another thread: nothing to own a task.
    caplog.set_level(logging.INFO, logger="ssebus")
    endpoint = new_endpoint()
    for _ in range(2):
        response = TestClient(endpoint).get("/")
        assert response.status_code == 503
    assert starts(endpoint) == 0
    [warning] = warnings_of(caplog)
    assert "with TestClient(app)" in warning
