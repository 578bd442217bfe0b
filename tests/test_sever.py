"""Resetting a stalled client's connection from inside the process (``ssebus._sever``).

Real sockets on 127.0.0.1 and ::1: the server side holds unsent bytes for a client that
does not read, as a server's transport does for a stalled stream. ASGI scopes are built
from the sockets' own addresses, as servers build them.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import anyio
import pytest

from ssebus._sever import sever

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(sys.platform != "linux", reason="severing reads Linux's /proc"),
]


@contextmanager
def stalled_pair(
    family: socket.AddressFamily, host: str
) -> Iterator[tuple[socket.socket, socket.socket]]:
    """(server side, client side) of a connection whose client never reads, with the
    server's send buffer full."""
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.bind((host, 0))
    listener.listen()
    client = socket.socket(family, socket.SOCK_STREAM)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.connect(listener.getsockname()[:2])
    accepted, _ = listener.accept()
    listener.close()
    accepted.setblocking(False)
    try:
        while True:
            accepted.send(b"x" * 65536)
    except BlockingIOError:
        pass  # full: the kernel holds what the client does not take
    try:
        yield accepted, client
    finally:
        accepted.close()
        client.close()


def scope_of(accepted: socket.socket, http_version: str = "1.1") -> dict[str, object]:
    return {
        "type": "http",
        "http_version": http_version,
        "client": accepted.getpeername()[:2],
        "server": accepted.getsockname()[:2],
    }


def reset_seen_by(client: socket.socket) -> bool:
    client.settimeout(5)
    try:
        while client.recv(1 << 20):
            pass
    except ConnectionResetError:
        return True
    return False


def established(sock: socket.socket) -> bool:
    """The socket's TCP state is still ESTABLISHED (``tcpi_state``, TCP_INFO's first byte)."""
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] == 1


def ipv6_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.parametrize(
    ("family", "host"),
    [
        (socket.AF_INET, "127.0.0.1"),
        pytest.param(
            socket.AF_INET6,
            "::1",
            marks=pytest.mark.skipif(not ipv6_available(), reason="no IPv6 loopback here"),
        ),
    ],
    ids=["ipv4", "ipv6"],
)
async def test_a_stalled_connection_is_reset_and_its_unsent_bytes_dropped(
    family: socket.AddressFamily, host: str
) -> None:
    with stalled_pair(family, host) as (accepted, client):
        assert established(accepted)
        assert await sever(scope_of(accepted))
        assert not established(accepted)
        with pytest.raises(BrokenPipeError):  # the server's next write fails: it closes
            accepted.send(b"more")
        accepted.close()  # SO_LINGER 0: a reset, not a flush
        assert reset_seen_by(client)


async def test_an_ipv4_client_of_a_dual_stack_server_is_found_by_its_mapped_address() -> None:
    listener = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    listener.bind(("::", 0))
    listener.listen()
    client = socket.create_connection(("127.0.0.1", listener.getsockname()[1]))
    accepted, _ = listener.accept()
    listener.close()
    with accepted, client:
        assert accepted.getpeername()[0] == "::ffff:127.0.0.1"
        assert await sever(scope_of(accepted))
        assert client.recv(10) == b""  # nothing was pending: an orderly end


async def test_many_stalled_connections_cut_at_once_are_each_reset() -> None:
    with (
        stalled_pair(socket.AF_INET, "127.0.0.1") as one,
        stalled_pair(socket.AF_INET, "127.0.0.1") as two,
        stalled_pair(socket.AF_INET, "127.0.0.1") as three,
    ):
        results: list[bool] = []

        async def cut(accepted: socket.socket) -> None:
            results.append(await sever(scope_of(accepted)))

        async with anyio.create_task_group() as tasks:
            for accepted, _ in (one, two, three):
                tasks.start_soon(cut, accepted)
        assert results == [True, True, True]
        for accepted, client in (one, two, three):
            accepted.close()
            assert reset_seen_by(client)


async def test_an_http2_connection_is_never_touched_it_carries_other_streams() -> None:
    with stalled_pair(socket.AF_INET, "127.0.0.1") as (accepted, _):
        assert not await sever(scope_of(accepted, http_version="2"))
        assert established(accepted)


async def test_a_request_whose_addresses_match_no_socket_of_this_process_touches_nothing() -> None:
    with stalled_pair(socket.AF_INET, "127.0.0.1") as (accepted, _):
        forwarded = {**scope_of(accepted), "client": ("203.0.113.7", 0)}  # a proxy's header
        assert not await sever(forwarded)
        assert not await sever({**scope_of(accepted), "client": None})
        assert established(accepted)
