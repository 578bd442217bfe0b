"""Bad requests under real servers: each gets a clear answer, and none disturbs the log
(no traceback, no ERROR line) or the clients already streaming.

Requests are written byte by byte on raw sockets, as an attacker or a broken client would
send them; the server and app are the plain command serving ``tests.apps:starlette_app``.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
from servers import SERVERS, ServerProcess, serve_app
from sockets import Crowd, open_stream, publish

ENV = {"SSEBUS_TEST_HEARTBEAT": "off"}


@pytest.fixture(scope="module", params=SERVERS)
def server(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    with serve_app(request.param, "starlette_app", env=ENV) as process:
        yield process


@pytest.fixture
def watched(server: ServerProcess) -> Iterator[ServerProcess]:
    """The server, with a healthy stream open: after the test it must still be served,
    and the log the test caused must hold no traceback and no ERROR line."""
    before = len(server.output())
    crowd = Crowd([open_stream(server.port, "/events")])
    yield server
    publish(server.port, "still served")
    deadline = time.monotonic() + 5
    while b"still served" not in crowd.tails[0] and time.monotonic() < deadline:
        time.sleep(0.02)
    tail = crowd.tails[0]
    crowd.close()
    log = server.output()[before:]
    assert b"still served" in tail, "a bad request disturbed a healthy stream"
    assert "Traceback" not in log, log
    assert not [line for line in log.splitlines() if "ERROR" in line], log


def exchange(port: int, request: bytes, *, read_for: float = 1.0) -> bytes:
    """Send ``request`` as is; what the server answers within ``read_for`` seconds."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        sock.settimeout(read_for)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
                if b"\r\n\r\n" in answer and not answer.startswith(b"HTTP/1.1 200"):
                    break  # a refusal: its head (and short body) is all there is
        except TimeoutError:
            pass
    return answer


def get(path: str, *headers: bytes) -> bytes:
    lines = [f"GET {path} HTTP/1.1".encode(), b"host: 127.0.0.1", *headers, b"", b""]
    return b"\r\n".join(lines)


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_a_method_other_than_get_or_head_is_told_which_are_allowed(
    watched: ServerProcess, method: str
) -> None:
    answer = exchange(
        watched.port, f"{method} /events HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n".encode()
    )
    assert answer.startswith(b"HTTP/1.1 405"), answer[:200]
    assert b"allow: get, head" in answer.lower(), answer


def test_head_answers_the_stream_headers_and_no_body(watched: ServerProcess) -> None:
    answer = exchange(watched.port, b"HEAD /events HTTP/1.1\r\nhost: x\r\n\r\n", read_for=0.5)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert b"text/event-stream" in answer
    _, end_of_head, body = answer.partition(b"\r\n\r\n")
    assert end_of_head
    assert body == b""


@pytest.mark.parametrize(
    "last_event_id",
    [
        b"not-a-position",
        b"a" * 8000,
        b"\xff\xfe\x80 not utf-8",
        b"yK3vQ0s9cW1tN8bE2aI",  # the shape of an id, but not one this server made
    ],
    ids=["garbage", "8k-long", "not-utf8", "forged"],
)
def test_a_last_event_id_this_server_never_gave_resets_the_client(
    watched: ServerProcess, last_event_id: bytes
) -> None:
    answer = exchange(watched.port, get("/events", b"last-event-id: " + last_event_id))
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert b"event: reset" in answer, answer[-500:]


@pytest.mark.parametrize("query", ["lastEventId=%ff%00%0a", "lastEventId=", "lastEventId"])
def test_a_bad_last_event_id_in_the_query_is_no_error(watched: ServerProcess, query: str) -> None:
    answer = exchange(watched.port, get(f"/events?{query}"))
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert b"retry: " in answer


def test_an_authorize_hook_that_raises_answers_500_in_one_log_line(
    server: ServerProcess,
) -> None:
    before = len(server.output())
    answer = exchange(server.port, get("/events?tenant="))  # the test hook raises on it
    assert answer.startswith(b"HTTP/1.1 500"), answer[:200]
    time.sleep(0.2)
    log = server.output()[before:]
    errors = [line for line in log.splitlines() if "ERROR" in line]
    assert errors, log  # one line (two under daphne, whose own logging repeats it)
    said = "authorize hook failed (ValueError('tenant: empty')); refused the request with 500"
    assert all(line.endswith(said) for line in errors), log
    assert "Traceback" not in log, log


def test_a_client_that_never_finishes_its_headers_disturbs_no_one(watched: ServerProcess) -> None:
    with socket.create_connection(("127.0.0.1", watched.port), timeout=5) as slow:
        slow.sendall(b"GET /events HTTP/1.1\r\nhost: 127.0.0.1\r\nx-slow: ")
        time.sleep(0.5)
        answer = exchange(watched.port, b"HEAD /events HTTP/1.1\r\nhost: x\r\n\r\n", read_for=0.5)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]


def test_a_request_that_is_not_http_is_answered_by_the_server_not_the_app(
    watched: ServerProcess,
) -> None:
    answer = exchange(watched.port, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\0" * 64)
    assert not answer or answer.startswith(b"HTTP/1.1 400"), answer[:200]
