"""Admission control: a broadcaster takes at most ``max_connections`` streams (by default
what its fd limit leaves after headroom) and ``max_connections_per_key`` per subscription
key; a newcomer past either gets ``503`` with a jittered ``Retry-After`` and
``connection: close``, streams already open never notice, and the log stays small.

In process for each rule, then once over real servers whose fd limit is lowered to 1,024:
more attempts than the limit allows leave the open streams, and the app's other routes,
unharmed.
"""

from __future__ import annotations

import logging
import re
import resource
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager

import anyio
import httpx
import pytest
from clients import GUARD, join, wait_until
from servers import SERVERS, serve_app
from trio.testing import MockClock

from ssebus import (
    Broadcaster,
    ConfigurationError,
    EventMap,
    InMemoryEventBus,
    Refusal,
    Scope,
    ServerSentEvent,
    SseBusError,
    SseEndpoint,
    Subscription,
    TooManyConnectionsError,
)
from ssebus._admission import connections_for_fd_limit
from ssebus._types import Message

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def broadcaster_of(
    guard: float | None = GUARD, **options: object
) -> AsyncIterator[Broadcaster]:
    """A running broadcaster on a fresh in-memory bus, no heartbeat, within ``guard`` s."""
    with anyio.fail_after(guard):
        async with Broadcaster(
            InMemoryEventBus(),
            EventMap(),
            heartbeat=None,
            write_timeout=None,
            **options,  # type: ignore[arg-type]
        ) as broadcaster:
            yield broadcaster


async def hold(
    stack: AsyncExitStack,
    broadcaster: Broadcaster,
    n: int,
    subscription: Subscription | None = None,
) -> None:
    """Open ``n`` connections that stay registered until ``stack`` closes."""
    for _ in range(n):
        await stack.enter_async_context(broadcaster.connect(subscription=subscription))


async def refused(
    broadcaster: Broadcaster, subscription: Subscription | None = None
) -> TooManyConnectionsError:
    """Try to connect; the refusal it must get."""
    with pytest.raises(TooManyConnectionsError) as caught:
        async with broadcaster.connect(subscription=subscription):
            pass
    return caught.value


# -- the limits --------------------------------------------------------------------------


async def test_a_connect_beyond_max_connections_is_refused_with_the_limit_named() -> None:
    async with broadcaster_of(max_connections=2) as broadcaster, AsyncExitStack() as stack:
        await hold(stack, broadcaster, 2)
        error = await refused(broadcaster)
        assert isinstance(error, SseBusError)
        assert (error.setting, error.limit, error.key) == ("max_connections", 2, None)
        assert "max_connections=2" in str(error)
        assert len(broadcaster.registry) == 2


async def test_a_slot_freed_by_a_stream_that_ended_admits_the_next_client() -> None:
    async with broadcaster_of(max_connections=1) as broadcaster:
        async with broadcaster.connect():
            await refused(broadcaster)
        async with broadcaster.connect():
            assert len(broadcaster.registry) == 1


async def test_max_connections_none_takes_every_connection() -> None:
    async with broadcaster_of(max_connections=None) as broadcaster, AsyncExitStack() as stack:
        assert broadcaster.max_connections is None
        await hold(stack, broadcaster, 300)
        assert len(broadcaster.registry) == 300


async def test_streams_already_open_never_notice_a_refusal() -> None:
    async with broadcaster_of(max_connections=2) as broadcaster, anyio.create_task_group() as tasks:
        clients = [await join(tasks, broadcaster) for _ in range(2)]
        for _ in range(50):
            await refused(broadcaster)
        broadcaster.broadcast(ServerSentEvent(data="still here", event="note"))
        await wait_until(lambda: all(b"data: still here" in c.stream for c in clients))
        assert all(c.connection is not None and not c.connection.closed for c in clients)
        await broadcaster.aclose()


async def test_max_connections_per_key_refuses_only_that_key() -> None:
    alice, bob = Subscription(key="alice"), Subscription(key="bob")
    async with (
        broadcaster_of(max_connections_per_key=2) as broadcaster,
        AsyncExitStack() as stack,
    ):
        await hold(stack, broadcaster, 2, alice)
        error = await refused(broadcaster, alice)
        assert (error.setting, error.limit, error.key) == ("max_connections_per_key", 2, "alice")
        assert "max_connections_per_key=2" in str(error)
        await hold(stack, broadcaster, 2, bob)
        assert len(broadcaster.registry) == 4


async def test_a_key_left_unset_is_the_tenant() -> None:
    acme = Subscription(tenant="acme")
    async with (
        broadcaster_of(max_connections_per_key=1) as broadcaster,
        AsyncExitStack() as stack,
    ):
        await hold(stack, broadcaster, 1, acme)
        assert (await refused(broadcaster, Subscription(tenant="acme", topics={"x"}))).key == "acme"
        # A key of its own counts apart from its tenant's.
        await hold(stack, broadcaster, 1, Subscription(tenant="acme", key="user-1"))


async def test_connections_without_key_or_tenant_are_not_limited_per_key() -> None:
    async with (
        broadcaster_of(max_connections_per_key=1) as broadcaster,
        AsyncExitStack() as stack,
    ):
        await hold(stack, broadcaster, 5)
        assert len(broadcaster.registry) == 5


async def test_a_key_whose_streams_ended_is_admitted_again() -> None:
    alice = Subscription(key="alice")
    async with broadcaster_of(max_connections_per_key=1) as broadcaster:
        for _ in range(3):
            async with broadcaster.connect(subscription=alice):
                await refused(broadcaster, alice)


def test_the_default_max_connections_leaves_a_tenth_of_the_fd_limit_at_least_64_to_the_app() -> (
    None
):
    assert connections_for_fd_limit(1024) == 922
    assert connections_for_fd_limit(10_000) == 9_000
    assert connections_for_fd_limit(256) == 192
    assert connections_for_fd_limit(64) == 1  # never below one
    assert connections_for_fd_limit(resource.RLIM_INFINITY) is None
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    broadcaster = Broadcaster(InMemoryEventBus(), EventMap())
    assert broadcaster.max_connections == connections_for_fd_limit(soft)
    assert broadcaster.max_connections_per_key is None


@pytest.mark.parametrize("setting", ["max_connections", "max_connections_per_key"])
@pytest.mark.parametrize("value", [0, -1, True, 1.5, "many"])
def test_a_limit_that_is_not_a_positive_int_is_refused_naming_it(
    setting: str, value: object
) -> None:
    with pytest.raises(ConfigurationError, match=setting) as caught:
        Broadcaster(InMemoryEventBus(), EventMap(), **{setting: value})  # type: ignore[arg-type]
    assert caught.value.setting == setting


def test_a_subscription_key_that_is_not_a_str_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="key") as caught:
        Subscription(key=42)  # type: ignore[arg-type]
    assert caught.value.setting == "key"


async def test_refusals_are_counted_in_the_metrics_and_the_hook() -> None:
    hooked: list[tuple[str, float]] = []
    async with (
        broadcaster_of(max_connections=1, metrics_hook=lambda n, v: hooked.append((n, v))) as b,
        AsyncExitStack() as stack,
    ):
        await hold(stack, b, 1)
        for _ in range(7):
            await refused(b)
        assert b.metrics().connections_refused == 7
        assert b.metrics().as_dict()["connections_refused"] == 7
        assert b.metrics().active_connections == 1
    assert hooked.count(("connections_refused", 1)) == 7


# -- the log under a flood -----------------------------------------------------------------


def ssebus_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "ssebus" and r.levelno >= logging.INFO]


async def test_a_flood_of_refusals_logs_one_warning_with_the_fix_and_no_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="ssebus")
    async with broadcaster_of(max_connections=1) as broadcaster, AsyncExitStack() as stack:
        await hold(stack, broadcaster, 1)
        for _ in range(1000):
            await refused(broadcaster)
        [warning] = ssebus_lines(caplog)
        assert warning.levelno == logging.WARNING
        message = warning.getMessage()
        assert "max_connections=1" in message
        assert "Broadcaster(max_connections=" in message
        assert not [r for r in caplog.records if r.exc_info]
        assert len(caplog.records) <= 3  # the connection's own debug line, and the warning


async def test_each_limit_gets_its_own_first_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ssebus")
    alice = Subscription(key="alice")
    async with (
        broadcaster_of(max_connections=3, max_connections_per_key=1) as broadcaster,
        AsyncExitStack() as stack,
    ):
        await hold(stack, broadcaster, 1, alice)
        for _ in range(100):
            await refused(broadcaster, alice)
        await hold(stack, broadcaster, 2)
        for _ in range(100):
            await refused(broadcaster)
        first, second = (r.getMessage() for r in ssebus_lines(caplog))
        assert "max_connections_per_key=1" in first
        assert "Broadcaster(max_connections_per_key=" in first
        assert "max_connections=3" in second


#: trio's virtual clock: time jumps ahead whenever every task waits, so ten-second log
#: intervals pass at once and exactly.
VIRTUAL_TIME = pytest.mark.parametrize(
    "anyio_backend", [pytest.param(("trio", {"clock": MockClock(autojump_threshold=0)}), id="trio")]
)


@VIRTUAL_TIME
async def test_further_refusals_are_summed_up_in_one_line_per_ten_seconds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="ssebus")
    async with (
        broadcaster_of(guard=None, max_connections=1) as broadcaster,
        AsyncExitStack() as stack,
    ):
        await hold(stack, broadcaster, 1)
        await refused(broadcaster)  # t = 0: the warning
        for _ in range(30):  # then 100 refusals at t = 0.5, 1.5, ... 29.5
            await anyio.sleep(0.5)
            for _ in range(100):
                await refused(broadcaster)
            await anyio.sleep(0.5)
        await anyio.sleep(1)  # t = 31: past the third summary
        lines = [r.getMessage() for r in ssebus_lines(caplog)]
        assert len(lines) == 4, lines  # the warning, then one line per 10 s
        assert lines[1:] == 3 * [
            "refused 1,000 more connections in the last 10 s (max_connections=1: 1,000)"
        ]
        await anyio.sleep(60)  # quiet: nothing more is said
        assert len(ssebus_lines(caplog)) == 4
        await refused(broadcaster)  # a new flood is announced again
        assert "Broadcaster(max_connections=" in ssebus_lines(caplog)[4].getMessage()
        assert not [r for r in caplog.records if r.exc_info]


# -- the endpoint's answer ------------------------------------------------------------------


async def get(endpoint: SseEndpoint, http_version: str = "1.1") -> list[Message]:
    """One GET to ``endpoint`` in process, by a client that leaves once it is answered."""
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "http_version": http_version,
        "method": "GET",
        "path": "/",
        "headers": [],
        "query_string": b"",
    }
    with anyio.fail_after(GUARD):
        await endpoint(scope, receive, send)
    return sent


def answer_of(sent: list[Message]) -> tuple[int, dict[bytes, bytes], bytes]:
    start, body = sent[0], sent[1]
    assert start["type"] == "http.response.start"
    assert body["type"] == "http.response.body"
    return start["status"], dict(start["headers"]), body["body"]


async def test_the_endpoint_answers_a_refusal_with_503_retry_after_and_connection_close() -> None:
    async with broadcaster_of(max_connections=1) as broadcaster, AsyncExitStack() as stack:
        await hold(stack, broadcaster, 1)
        status, headers, body = answer_of(await get(SseEndpoint(broadcaster)))
    assert status == 503
    assert headers[b"connection"] == b"close"
    assert headers[b"content-type"] == b"text/plain; charset=utf-8"
    assert headers[b"content-length"] == str(len(body)).encode()
    assert b"max_connections=1" in body
    assert 1 <= int(headers[b"retry-after"]) <= 5  # reconnect_jitter's 1-5 s


async def test_retry_after_is_spread_over_reconnect_jitter_so_clients_do_not_return_at_once() -> (
    None
):
    async with (
        broadcaster_of(max_connections=1, reconnect_jitter=(2000, 9000)) as broadcaster,
        AsyncExitStack() as stack,
    ):
        await hold(stack, broadcaster, 1)
        endpoint = SseEndpoint(broadcaster)
        waits = [int(answer_of(await get(endpoint))[1][b"retry-after"]) for _ in range(200)]
    assert set(waits) <= set(range(2, 10))
    assert len(set(waits)) > 3


async def test_a_refusal_over_http2_has_no_connection_header() -> None:
    # HTTP/2 forbids connection-specific headers; the server closes the stream anyway.
    async with broadcaster_of(max_connections=1) as broadcaster, AsyncExitStack() as stack:
        await hold(stack, broadcaster, 1)
        status, headers, _ = answer_of(await get(SseEndpoint(broadcaster), http_version="2"))
    assert status == 503
    assert b"connection" not in headers
    assert b"retry-after" in headers


async def test_the_endpoint_refuses_a_key_over_its_limit_naming_that_limit() -> None:
    async def as_alice(scope: Scope) -> Subscription | Refusal:
        return Subscription(key="alice")

    async with (
        broadcaster_of(max_connections_per_key=1) as broadcaster,
        AsyncExitStack() as stack,
    ):
        await hold(stack, broadcaster, 1, Subscription(key="alice"))
        status, headers, body = answer_of(await get(SseEndpoint(broadcaster, authorize=as_alice)))
    assert status == 503
    assert b"max_connections_per_key=1" in body
    assert b"alice" not in body  # the key (a user id, say) is not echoed
    assert b"retry-after" in headers


# -- over real servers, at a lowered fd limit ------------------------------------------------

#: The server's soft RLIMIT_NOFILE, and what the default leaves for streams: 1,024 less a
#: tenth (at least 64) for the app's other sockets and files.
FD_LIMIT = 1024
DEFAULT_LIMIT = 922
#: Connection attempts: more than the limit, fewer than the fds the server has.
ATTEMPTS = 1200
#: Attempts sent together: refused newcomers in flight hold fds too, within the headroom.
WAVE = 50
STEP = 5.0  # seconds any one answer may take
GET_EVENTS = b"GET /events HTTP/1.1\r\nhost: 127.0.0.1\r\naccept: text/event-stream\r\n\r\n"


def read_head(sock: socket.socket) -> bytes:
    """The response head and whatever followed it in the same reads."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def read_refusal(sock: socket.socket, data: bytes) -> bytes:
    """The whole refusal: its head and its ``content-length`` of body."""
    length = int(headers_of(data).get("content-length", "0"))
    while len(data.split(b"\r\n\r\n", 1)[1]) < length and (chunk := sock.recv(4096)):
        data += chunk
    return data


def headers_of(head: bytes) -> dict[str, str]:
    lines = head.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")[1:]
    return {name.lower(): value.strip() for name, value in (line.split(":", 1) for line in lines)}


@pytest.fixture
def client_fds() -> Iterator[None]:
    """This process needs a socket per attempt: make sure its own limit allows them."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = ATTEMPTS + 200
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip(f"the test needs {wanted} open files; the hard limit is {hard}")
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


#: granian takes at most ``--backpressure`` requests at once per worker (1,024 by default)
#: and leaves the rest unread in its backlog, so past that no request reaches the app to be
#: answered; raise it above ``max_connections`` (README: "Limits").
BACKPRESSURE = pytest.mark.xfail(
    strict=True, reason="granian stops reading requests past --backpressure (1,024)"
)


@pytest.mark.parametrize(
    "server", [pytest.param(s, marks=BACKPRESSURE) if s == "granian" else s for s in SERVERS]
)
@pytest.mark.usefixtures("client_fds")
def test_past_the_default_limit_newcomers_get_503_and_open_streams_and_routes_carry_on(
    server: str,
) -> None:
    env = {"SSEBUS_TEST_HEARTBEAT": "off"}
    with serve_app(server, "starlette_app", env=env, fd_limit=FD_LIMIT) as process:
        logged_before = len(process.output().splitlines())
        streams: list[tuple[socket.socket, bytes]] = []
        refusals: list[bytes] = []
        wave: list[socket.socket] = []
        try:
            for first in range(0, ATTEMPTS, WAVE):  # newcomers arrive together, not in turn
                wave = [
                    socket.create_connection(("127.0.0.1", process.port), timeout=STEP)
                    for _ in range(min(WAVE, ATTEMPTS - first))
                ]
                for sock in wave:
                    sock.sendall(GET_EVENTS)
                for attempt, sock in enumerate(wave, first + 1):
                    try:
                        head = read_head(sock)
                    except TimeoutError:
                        raise AssertionError(
                            f"attempt {attempt} got no answer within {STEP} s with "
                            f"{len(streams)} streams open: the server is starved\n"
                            + "\n".join(process.output().splitlines()[-20:])
                        ) from None
                    if head.startswith(b"HTTP/1.1 200"):
                        streams.append((sock, head))
                        continue
                    with sock:  # it says connection: close (daphne keeps it open regardless)
                        refusals.append(read_refusal(sock, head))

            assert len(streams) == DEFAULT_LIMIT
            assert len(refusals) == ATTEMPTS - DEFAULT_LIMIT
            for answer in refusals:
                assert answer.startswith(b"HTTP/1.1 503"), answer
                headers = headers_of(answer)
                assert 1 <= int(headers["retry-after"]) <= 5, headers
                assert headers["connection"] == "close", headers
                assert f"max_connections={DEFAULT_LIMIT:,}".encode() in answer, answer

            # The app's other routes answer, and every open stream gets the next event.
            with httpx.Client(base_url=process.url, timeout=STEP) as http:
                published = http.post("/publish", json={"data": "still here"})
                assert published.status_code == 200
                metrics = http.get("/metrics").json()
            assert metrics["active_connections"] == DEFAULT_LIMIT
            assert metrics["connections_refused"] == ATTEMPTS - DEFAULT_LIMIT
            for sock, received in streams:
                while b"data: still here" not in received:
                    chunk = sock.recv(4096)
                    assert chunk, f"a stream ended: {received!r}"
                    received += chunk

            added = process.output().splitlines()[logged_before:]
        finally:
            for sock in [*wave, *(sock for sock, _ in streams)]:
                sock.close()
    assert len(added) < 100, added
    assert not [line for line in added if "Traceback" in line or "ERROR" in line], added
    assert [line for line in added if "max_connections=" in line], added
    assert not re.search(r"Too many open files", "\n".join(added)), added
