"""``SseEndpoint`` over real sockets, under uvicorn, Hypercorn (asyncio) and Hypercorn (trio).

Each app of ``tests/apps.py`` is served by each server in a subprocess (``tests/servers.py``)
and driven with httpx; streams are read as raw bytes and interpreted by
``ssebus.testing.EventStreamParser``, i.e. exactly as a browser's ``EventSource`` would.
Every wait is bounded (``anyio.fail_after`` and httpx timeouts).

Shutdown: neither server ends an open stream on SIGINT by itself. Uvicorn waits for open
responses (forever, unless ``--timeout-graceful-shutdown``) *before* it runs the lifespan
shutdown that would close the broadcaster. Hypercorn stops accepting, waits up to
``graceful_timeout`` (3 s) for open requests, then cancels them, and only then runs the
lifespan shutdown: the stream ends without the broadcaster's goodbye ``retry:``. So the
graceful-shutdown tests serve the way ``examples/orders_app.py`` does: with uvicorn a task
watches ``server.should_exit`` and calls ``broadcaster.aclose()``; with Hypercorn
``serve(..., shutdown_trigger=...)`` waits for the signal and calls ``broadcaster.aclose()``
before returning (see ``tests/apps.py``).
"""

from __future__ import annotations

import json
import re
import secrets
import socket
import struct
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import anyio
import httpx
import pytest
from anyio.abc import SocketAttribute
from httpx_sse import aconnect_sse
from servers import (
    CLEAN_EXIT,
    SERVERS,
    STOP_TIMEOUT,
    ServerProcess,
    httpx_sse_prelude,
    serve_app,
    serve_demo,
)

from ssebus._position import PositionCodec
from ssebus.testing import EventStreamParser, ParsedEvent

pytestmark = pytest.mark.anyio

#: The ``retry`` every test endpoint announces first (``tests/apps.py``).
RETRY_MS = 3000
#: What the endpoint writes first on every stream.
RETRY_PRELUDE = b"retry: 3000\n\n"
#: A fresh stream (no Last-Event-ID): the retry, then the client's position as an id alone.
FRESH_PRELUDE = re.compile(rb"retry: 3000\n\nid: ([A-Za-z0-9_-]+)\n\n")
#: Seconds any single step of a test may take.
STEP = 5.0
SSE_HEADERS = {
    "content-type": "text/event-stream; charset=utf-8",
    "cache-control": "no-store",
    "x-accel-buffering": "no",
}


# -- servers: one per app and server kind, shared by the tests of this module ----------------


@pytest.fixture(scope="module", params=SERVERS)
def server_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def raw_server(server_kind: str) -> Iterator[ServerProcess]:
    """``SseEndpoint`` as the top-level app, served by the server's own command line."""
    with serve_app(server_kind, "raw_app") as server:
        yield server


@pytest.fixture(scope="module")
def auth_server(server_kind: str) -> Iterator[ServerProcess]:
    with serve_app(server_kind, "auth_app") as server:
        yield server


@pytest.fixture(scope="module")
def starlette_server(server_kind: str) -> Iterator[ServerProcess]:
    """The Starlette app, with heartbeats off: no byte is written unless a test publishes."""
    with serve_app(server_kind, "starlette_app", env={"SSEBUS_TEST_HEARTBEAT": "off"}) as server:
        yield server


@pytest.fixture(scope="module")
def fastapi_server(server_kind: str) -> Iterator[ServerProcess]:
    with serve_app(server_kind, "fastapi_app") as server:
        yield server


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=STEP) as http:
        yield http


# -- reading a stream as a browser would -----------------------------------------------------


class EventReader:
    """Reads a streamed response chunk by chunk and yields what ``EventSource`` dispatches."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.parser = EventStreamParser()
        self.raw = bytearray()
        self.ended = False
        self._chunks = response.aiter_bytes()
        self._events: deque[ParsedEvent] = deque()

    async def _read_chunk(self) -> None:
        try:
            chunk = await self._chunks.__anext__()
        except StopAsyncIteration:
            self.ended = True
            self._events.extend(self.parser.close())
            return
        self.raw += chunk
        self._events.extend(self.parser.feed(chunk))

    async def connected(self, retry: int = RETRY_MS) -> None:
        """Wait for the ``retry:`` prelude: from then on the connection is registered."""
        with anyio.fail_after(STEP):
            while self.parser.retry is None and not self.ended:
                await self._read_chunk()
        assert self.parser.retry == retry, bytes(self.raw)

    async def position(self) -> str:
        """Wait for the id a fresh stream starts with; no event may be dispatched before."""
        with anyio.fail_after(STEP):
            while not self.parser.last_event_id and not self.ended:
                await self._read_chunk()
        assert self.parser.last_event_id, bytes(self.raw)
        assert not self._events, self._events
        return self.parser.last_event_id

    async def events(self, count: int) -> list[ParsedEvent]:
        """The next ``count`` dispatched events; fails if they do not come in time."""
        with anyio.fail_after(STEP):
            while len(self._events) < count:
                if self.ended:
                    raise AssertionError(f"stream ended early; got {bytes(self.raw)!r}")
                await self._read_chunk()
        return [self._events.popleft() for _ in range(count)]

    async def until_end(self) -> bytes:
        """Read to the end of the stream; return the bytes read by this call."""
        start = len(self.raw)
        with anyio.fail_after(STEP):
            while not self.ended:
                await self._read_chunk()
        return bytes(self.raw[start:])


async def publish(client: httpx.AsyncClient, base: str, data: str, event: str = "note") -> str:
    """Broadcast ``data`` as an ``event`` through the app's ``POST /publish``; its id."""
    response = await client.post(f"{base}/publish", json={"data": data, "event": event})
    response.raise_for_status()
    event_id = response.json()["id"]
    assert isinstance(event_id, str)
    return event_id


async def active_connections(client: httpx.AsyncClient, base: str) -> int:
    response = await client.get(f"{base}/metrics")
    response.raise_for_status()
    return int(response.json()["active_connections"])


async def wait_active_connections(
    client: httpx.AsyncClient, base: str, expected: int, within: float = 3.0
) -> None:
    """Poll ``GET /metrics`` until ``active_connections == expected`` (at most ``within`` s)."""
    seen = -1
    with anyio.move_on_after(within):
        while (seen := await active_connections(client, base)) != expected:  # noqa: ASYNC110
            await anyio.sleep(0.05)  # polling a remote server: there is no event to wait on
    assert seen == expected, f"active_connections still {seen} after {within} s"


# -- the protocol: headers, retry, HEAD, methods ---------------------------------------------


async def test_get_answers_200_with_the_event_stream_headers(
    raw_server: ServerProcess, client: httpx.AsyncClient
) -> None:
    async with client.stream("GET", raw_server.url) as response:
        assert response.status_code == 200
        for name, value in SSE_HEADERS.items():
            assert response.headers.get(name) == value, name


async def test_stream_starts_with_retry_then_the_clients_position_without_an_event(
    raw_server: ServerProcess, client: httpx.AsyncClient
) -> None:
    async with client.stream("GET", raw_server.url) as response:
        first = bytearray()
        with anyio.fail_after(STEP):
            async for chunk in response.aiter_bytes():
                first += chunk
                if FRESH_PRELUDE.match(first):
                    break
    match = FRESH_PRELUDE.match(first)
    assert match, bytes(first)
    parser = EventStreamParser()
    assert parser.feed(bytes(first)) == []  # EventSource dispatches nothing...
    assert parser.last_event_id == match.group(1).decode()  # ...but would resume from here


async def test_head_answers_the_headers_without_a_body_and_without_waiting(
    raw_server: ServerProcess, client: httpx.AsyncClient
) -> None:
    with anyio.fail_after(STEP):
        response = await client.head(raw_server.url)
    assert response.status_code == 200
    for name, value in SSE_HEADERS.items():
        assert response.headers.get(name) == value, name
    assert response.content == b""


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
async def test_other_methods_get_405_with_allow(
    raw_server: ServerProcess, client: httpx.AsyncClient, method: str
) -> None:
    response = await client.request(method, raw_server.url, content=b"{}")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD"
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text == "Method Not Allowed"


# -- authorization ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"authorization": "Bearer bad"}, {"authorization": "Basic Z29vZA=="}],
    ids=["no-credentials", "wrong-token", "wrong-scheme"],
)
async def test_refused_request_gets_401_with_a_plain_body_and_no_stream(
    auth_server: ServerProcess, client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    with anyio.fail_after(STEP):
        response = await client.get(auth_server.url, headers=headers)
    assert response.status_code == 401
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.text == "Unauthorized"
    assert "x-accel-buffering" not in response.headers


async def test_refused_head_gets_401_too(
    auth_server: ServerProcess, client: httpx.AsyncClient
) -> None:
    with anyio.fail_after(STEP):
        response = await client.head(auth_server.url)
    assert response.status_code == 401


async def test_authorized_request_gets_the_stream(
    auth_server: ServerProcess, client: httpx.AsyncClient
) -> None:
    headers = {"authorization": "Bearer good"}
    async with client.stream("GET", auth_server.url, headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == SSE_HEADERS["content-type"]
        reader = EventReader(response)
        await reader.connected()


# -- mounted in Starlette and FastAPI --------------------------------------------------------


@pytest.mark.parametrize(
    ("app", "path"),
    [("starlette", "/events"), ("fastapi", "/events"), ("fastapi", "/mounted/")],
    ids=["starlette-route", "fastapi-route", "fastapi-mount"],
)
async def test_framework_mounts_stream_published_and_domain_events(
    starlette_server: ServerProcess,
    fastapi_server: ServerProcess,
    client: httpx.AsyncClient,
    app: str,
    path: str,
) -> None:
    server = starlette_server if app == "starlette" else fastapi_server
    async with client.stream("GET", server.url + path) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == SSE_HEADERS["content-type"]
        reader = EventReader(response)
        await reader.connected()
        note_id = await publish(client, server.url, "hello", event="note")
        posted = await client.post(f"{server.url}/domain", json={"text": "ship it"})
        posted.raise_for_status()
        assert await reader.events(2) == [
            ParsedEvent("note", "hello", note_id, RETRY_MS),
            ParsedEvent("noted", '{"text":"ship it"}', posted.json()["id"], RETRY_MS),
        ]


async def test_httpx_sse_reads_the_mounted_stream(
    starlette_server: ServerProcess, client: httpx.AsyncClient
) -> None:
    url = f"{starlette_server.url}/events"
    with anyio.fail_after(STEP):
        async with aconnect_sse(client, "GET", url) as source:
            events = source.aiter_sse()
            position = await httpx_sse_prelude(events, RETRY_MS)
            event_id = await publish(client, starlette_server.url, "via httpx-sse")
            sse = await events.__anext__()
            await events.aclose()
    assert (sse.event, sse.data, sse.id) == ("note", "via httpx-sse", event_id)
    assert event_id != position


# -- resume ----------------------------------------------------------------------------------


@pytest.mark.parametrize("via", ["header", "query"])
async def test_reconnect_with_last_event_id_gets_exactly_the_missed_events_then_live_ones(
    starlette_server: ServerProcess, client: httpx.AsyncClient, via: str
) -> None:
    base = starlette_server.url
    async with client.stream("GET", f"{base}/events") as response:
        reader = EventReader(response)
        await reader.connected()
        seen_ids = [await publish(client, base, f"seen {n}") for n in range(3)]
        seen = await reader.events(3)
    assert [(e.data, e.last_event_id) for e in seen] == [
        (f"seen {n}", seen_ids[n]) for n in range(3)
    ]
    last_event_id = seen[-1].last_event_id

    missed_ids = [await publish(client, base, f"missed {n}") for n in range(2)]

    if via == "header":
        resume = client.stream("GET", f"{base}/events", headers={"last-event-id": last_event_id})
    else:
        resume = client.stream("GET", f"{base}/events", params={"lastEventId": last_event_id})
    async with resume as response:
        reader = EventReader(response)
        await reader.connected()
        replayed = await reader.events(2)
        live_id = await publish(client, base, "live")
        live = await reader.events(1)
        await publish(client, base, "after")  # anything extra would arrive before this one
        after = await reader.events(1)
    assert [(e.type, e.data, e.last_event_id) for e in replayed + live] == [
        ("note", "missed 0", missed_ids[0]),
        ("note", "missed 1", missed_ids[1]),
        ("note", "live", live_id),
    ]
    assert after[0].data == "after"


async def test_a_client_cut_before_its_first_event_resumes_from_its_connect_position(
    starlette_server: ServerProcess, client: httpx.AsyncClient
) -> None:
    """A quiet client cut by a proxy still has an id (the prelude's): nothing published
    while it is away is lost, and it gets no ``reset``."""
    base = starlette_server.url
    async with client.stream("GET", f"{base}/events") as response:
        reader = EventReader(response)
        await reader.connected()
        position = await reader.position()

    missed_id = await publish(client, base, "missed while away")
    headers = {"last-event-id": position}
    async with client.stream("GET", f"{base}/events", headers=headers) as response:
        reader = EventReader(response)
        await reader.connected()
        [missed] = await reader.events(1)
        live_id = await publish(client, base, "live")
        [live] = await reader.events(1)
    assert missed == ParsedEvent("note", "missed while away", missed_id, RETRY_MS)
    assert live == ParsedEvent("note", "live", live_id, RETRY_MS)


async def test_reconnect_with_the_newest_id_replays_nothing(
    starlette_server: ServerProcess, client: httpx.AsyncClient
) -> None:
    base = starlette_server.url
    newest = await publish(client, base, "newest")
    headers = {"last-event-id": newest}
    async with client.stream("GET", f"{base}/events", headers=headers) as response:
        reader = EventReader(response)
        await reader.connected()
        live_id = await publish(client, base, "live")
        assert await reader.events(1) == [ParsedEvent("note", "live", live_id, RETRY_MS)]


#: An id as an earlier process (another position secret) handed out: well-formed, not ours.
EARLIER_PROCESS_ID = PositionCodec(secrets.token_bytes(32)).token(None, 7)


@pytest.mark.parametrize(
    "unknown", ["no-such-id", EARLIER_PROCESS_ID], ids=["garbage", "earlier-process"]
)
async def test_unknown_last_event_id_gets_a_reset_event_then_live_ones(
    starlette_server: ServerProcess, client: httpx.AsyncClient, unknown: str
) -> None:
    base = starlette_server.url
    newest = await publish(client, base, "newest")
    headers = {"last-event-id": unknown}
    async with client.stream("GET", f"{base}/events", headers=headers) as response:
        reader = EventReader(response)
        await reader.connected()
        [reset] = await reader.events(1)
        live_id = await publish(client, base, "live")
        [live] = await reader.events(1)
    assert reset.type == "reset"
    assert json.loads(reset.data) == {"lastEventId": unknown, "reason": "not-in-history"}
    assert reset.last_event_id == newest  # the client moves to the newest id, then reloads
    assert (live.data, live.last_event_id) == ("live", live_id)


# -- disconnect detection --------------------------------------------------------------------


async def leave_by_closing(base: str) -> None:
    """A client that reads the prelude and then closes its response (a FIN)."""
    async with (
        httpx.AsyncClient(timeout=STEP) as http,
        http.stream("GET", f"{base}/events") as response,
    ):
        # Keep the reader: a collected ``aiter_bytes`` generator would close the response.
        reader = EventReader(response)
        await reader.connected()
        assert await active_connections(http, base) == 1


async def leave_by_resetting(base: str) -> None:
    """A client that reads the prelude and then vanishes with a TCP RST (SO_LINGER 0)."""
    port = int(base.rsplit(":", 1)[1])
    with anyio.fail_after(STEP):
        stream = await anyio.connect_tcp("127.0.0.1", port)
        async with stream:
            raw: socket.socket = stream.extra(SocketAttribute.raw_socket)
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            await stream.send(b"GET /events HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
            received = b""
            while RETRY_PRELUDE not in received:
                received += await stream.receive()
            async with httpx.AsyncClient(timeout=STEP) as http:
                assert await active_connections(http, base) == 1


@pytest.mark.parametrize("leave", [leave_by_closing, leave_by_resetting], ids=["fin", "rst"])
async def test_client_that_goes_away_is_removed_even_when_nothing_is_sent(
    starlette_server: ServerProcess,
    client: httpx.AsyncClient,
    leave: Callable[[str], Awaitable[None]],
) -> None:
    """Heartbeats are off and nothing is published: only the server noticing the closed
    socket (ASGI ``http.disconnect``) can remove the connection."""
    base = starlette_server.url
    await wait_active_connections(client, base, 0)  # what earlier tests left has gone
    await leave(base)
    await wait_active_connections(client, base, 0, within=3.0)


# -- graceful shutdown -----------------------------------------------------------------------


async def read_until_shutdown(url: str, connected: anyio.Event, tails: list[bytes]) -> None:
    """Connect, report it, then read to the end of the stream: keep what came after."""
    async with (
        httpx.AsyncClient(timeout=STEP * 2) as http,
        http.stream("GET", url) as response,
    ):
        reader = EventReader(response)
        await reader.connected()
        connected.set()
        with anyio.fail_after(STEP * 2):
            tails.append(await reader.until_end())


def assert_goodbye(tail: bytes) -> None:
    """The stream's last bytes: a final ``retry:`` within the jitter range, nothing else."""
    parser = EventStreamParser()
    assert parser.feed(tail) == [], tail  # no event dispatched, only the goodbye frame
    assert parser.retry is not None, tail
    assert 1000 <= parser.retry <= 5000, tail  # Broadcaster's default reconnect_jitter
    assert tail.endswith(b"\n\n"), tail


@pytest.mark.parametrize("factory", ["raw_app", "starlette_app"])
@pytest.mark.parametrize("server_name", SERVERS)
async def test_sigint_sends_every_client_a_final_retry_ends_the_streams_and_exits(
    server_name: str, factory: str
) -> None:
    path = "/" if factory == "raw_app" else "/events"
    with serve_app(server_name, factory, graceful=True) as server:
        tails: list[bytes] = []
        async with anyio.create_task_group() as clients:
            for _ in range(2):
                connected = anyio.Event()
                clients.start_soon(read_until_shutdown, server.url + path, connected, tails)
                with anyio.fail_after(STEP):
                    await connected.wait()
            server.interrupt()
        code = await anyio.to_thread.run_sync(server.wait_exit)
        assert not server.killed, f"no exit {STOP_TIMEOUT} s after SIGINT:\n{server.output()}"
        assert code in CLEAN_EXIT, server.output()
    assert len(tails) == 2
    for tail in tails:
        assert_goodbye(tail)


# -- the demo script -------------------------------------------------------------------------


async def demo_ctrl_c(demo: ServerProcess) -> tuple[bytes, int]:
    """Hold a stream open on the demo, press Ctrl+C; the stream's tail and the exit code."""
    async with (
        httpx.AsyncClient(timeout=STEP) as http,
        http.stream("GET", f"{demo.url}/events", params={"tenant": "acme"}) as response,
    ):
        reader = EventReader(response)
        await reader.connected(retry=1000)
        posted = await http.post(f"{demo.url}/orders", json={"customer": "ana", "tenant": "acme"})
        assert posted.status_code == 201
        [created] = await reader.events(1)
        assert created.type == "order-created"
        demo.interrupt()
        tail = await reader.until_end()
    return tail, await anyio.to_thread.run_sync(demo.wait_exit)


async def test_demo_script_ends_streams_and_exits_on_ctrl_c() -> None:
    with serve_demo() as demo:
        tail, code = await demo_ctrl_c(demo)
        assert not demo.killed, demo.output()
        assert code in CLEAN_EXIT, demo.output()
    assert_goodbye(tail)


async def test_demo_script_exits_quietly_on_ctrl_c() -> None:
    with serve_demo() as demo:
        await demo_ctrl_c(demo)
        output = demo.output()
    assert "Traceback" not in output, output
