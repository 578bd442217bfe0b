"""A websocket upgrade, or any scope ``SseEndpoint`` does not serve, is refused cleanly.

Over real servers (uvicorn answers the refusal with an HTTP 403 itself; Hypercorn offers
the ``websocket.http.response`` extension, so the endpoint answers 403 through it) and in
process for each branch: nothing raised, no traceback, no ERROR line, however many times.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator

import anyio
import pytest
from servers import SERVERS, ServerProcess, answers_http, serve_app

from ssebus import Broadcaster, EventMap, InMemoryEventBus, SseEndpoint
from ssebus._types import Message

#: Upgrade requests each live test sends: a log line each would show as a flood.
UPGRADES = 5
UPGRADE = (
    b"GET / HTTP/1.1\r\n"
    b"host: 127.0.0.1\r\n"
    b"connection: Upgrade\r\n"
    b"upgrade: websocket\r\n"
    b"sec-websocket-version: 13\r\n"
    b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"\r\n"
)


def websocket_upgrade(port: int) -> bytes:
    """Send a websocket upgrade request to ``port``; the response head the server answers."""
    with socket.create_connection(("127.0.0.1", port), timeout=5.0) as sock:
        sock.sendall(UPGRADE)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                break
            head += chunk
        return head


@pytest.fixture(scope="module", params=SERVERS)
def raw_server(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    with serve_app(str(request.param), "raw_app") as server:
        yield server


def test_a_websocket_upgrade_is_refused_with_403_and_no_traceback(
    raw_server: ServerProcess,
) -> None:
    before = raw_server.output().splitlines()
    for _ in range(UPGRADES):
        head = websocket_upgrade(raw_server.port)
        status = head.split(b"\r\n", 1)[0]
        assert status.startswith(b"HTTP/1.1 403"), head
    assert answers_http(raw_server.port)  # the server carries on
    added = raw_server.output().splitlines()[len(before) :]
    assert not [line for line in added if "ERROR" in line or "Traceback" in line], added
    assert len(added) <= UPGRADES, added


# -- each branch, in process ---------------------------------------------------------------


def endpoint() -> SseEndpoint:
    return SseEndpoint(Broadcaster(InMemoryEventBus(), EventMap()))


class Peer:
    """An ASGI server's side of one websocket scope: what it receives, what it was sent."""

    def __init__(self, *incoming: Message) -> None:
        self.incoming = list(incoming)
        self.sent: list[Message] = []

    async def receive(self) -> Message:
        if self.incoming:
            return self.incoming.pop(0)
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    async def send(self, message: Message) -> None:
        self.sent.append(message)


def websocket_scope(*extensions: str) -> dict[str, object]:
    return {
        "type": "websocket",
        "path": "/",
        "headers": [],
        "extensions": {name: {} for name in extensions},
    }


def no_trouble(caplog: pytest.LogCaptureFixture) -> None:
    noisy = [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert not noisy, [r.getMessage() for r in noisy]


@pytest.mark.anyio
async def test_without_the_http_response_extension_the_connect_is_closed_with_1008(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    peer = Peer({"type": "websocket.connect"})
    with anyio.fail_after(5):
        await endpoint()(websocket_scope(), peer.receive, peer.send)
    assert peer.sent == [{"type": "websocket.close", "code": 1008, "reason": ""}]
    no_trouble(caplog)
    assert len([r for r in caplog.records if r.name == "ssebus"]) <= 1


@pytest.mark.anyio
async def test_with_the_http_response_extension_the_connect_gets_a_403(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    peer = Peer({"type": "websocket.connect"})
    with anyio.fail_after(5):
        await endpoint()(websocket_scope("websocket.http.response"), peer.receive, peer.send)
    start, body = peer.sent
    assert start["type"] == "websocket.http.response.start"
    assert start["status"] == 403
    assert (b"content-length", str(len(body["body"])).encode()) in start["headers"]
    assert body["type"] == "websocket.http.response.body"
    assert body["body"].startswith(b"SseEndpoint serves Server-Sent Events")
    assert not body.get("more_body", False)
    no_trouble(caplog)


@pytest.mark.anyio
async def test_a_websocket_gone_before_its_connect_is_sent_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    peer = Peer({"type": "websocket.disconnect", "code": 1006})
    with anyio.fail_after(5):
        await endpoint()(websocket_scope(), peer.receive, peer.send)
    assert peer.sent == []
    no_trouble(caplog)


@pytest.mark.anyio
async def test_a_websocket_that_cannot_be_sent_the_refusal_raises_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def gone(message: Message) -> None:
        raise OSError("the client went away")

    peer = Peer({"type": "websocket.connect"})
    with anyio.fail_after(5):
        await endpoint()(websocket_scope(), peer.receive, gone)
    no_trouble(caplog)


@pytest.mark.anyio
async def test_an_unknown_scope_type_is_ignored_without_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    peer = Peer()
    with anyio.fail_after(5):
        await endpoint()({"type": "webtransport"}, peer.receive, peer.send)
    assert peer.sent == []
    no_trouble(caplog)
