"""Clients that stopped reading, under real servers: evicting one frees what it held, and
none of them holds a server's shutdown back.

A stalled client leaves unsent bytes in the server's transport, which a server flushes
before it closes the socket: without help the socket, its buffers and the server's
graceful shutdown wait for a client that never reads (``ssebus._sever`` resets such a
connection once its stream is cut). Stalled clients here subscribe to a tenant that gets
megabytes, healthy ones to a quiet tenant, so only the stalled fill their buffers.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import time

import pytest
from servers import LIFECYCLE_SERVERS, serve_app, serve_demo
from sockets import (
    Crowd,
    create_order,
    open_stream,
    publish,
    rss_mib,
    serving_pid,
    sockets_of,
)

WRITE_TIMEOUT = 2.0
SHUTDOWN_TIMEOUT = 2.0
ENV = {
    "SSEBUS_TEST_HEARTBEAT": "off",
    "SSEBUS_TEST_WRITE_TIMEOUT": str(WRITE_TIMEOUT),
    "SSEBUS_TEST_SHUTDOWN_TIMEOUT": str(SHUTDOWN_TIMEOUT),
}
HEALTHY = "/events?tenant=quiet"
STALLED = "/events?tenant=heavy"
#: What the stalled clients' tenant gets: 4.8 MB, more than any socket's buffers take,
#: and more than a connection may queue (``max_queue_bytes``, 4 MiB).
HEAVY_EVENTS, HEAVY_SIZE = 300, 16_000
#: Seconds past ``shutdown_timeout`` a server may take to exit. The target is 1 s: on a quiet
#: machine these servers take 0.15-0.45 s (cutting and resetting the stalled, the server's
#: own shutdown); with other test suites busy on both cores gunicorn has taken 1.1 s.
EXIT_SLACK = 1.5
#: The demo's broadcaster keeps the default.
DEMO_SHUTDOWN_TIMEOUT = 5.0


def flood_the_stalled(port: int) -> None:
    for _ in range(HEAVY_EVENTS):
        publish(port, "x" * HEAVY_SIZE, tenant="heavy")


def how_it_ends(sock: socket.socket) -> str:
    """Read a stalled client's socket to its end: "reset", "closed", or "open" (timeout)."""
    sock.settimeout(5)
    try:
        while sock.recv(1 << 20):
            pass
    except ConnectionResetError:
        return "reset"
    except TimeoutError:
        return "open"
    finally:
        sock.close()
    return "closed"


def errors_in(log: str) -> list[str]:
    return [line for line in log.splitlines() if "ERROR" in line or "Traceback" in line]


#: daphne (Twisted) applies no backpressure to the app: ``send`` never waits, so a client
#: that stops reading is never noticed and what it is sent piles up in daphne's buffers.
NO_BACKPRESSURE = pytest.mark.xfail(
    strict=True, reason="daphne never makes send wait: a stalled client cannot be seen"
)


#: granian closes the evicted clients' sockets, but its resident memory stays about 15 MiB
#: up (37 -> 52 MiB here) after they are gone: not explained yet.
MEMORY_KEPT = pytest.mark.xfail(
    strict=True, reason="granian's RSS stays ~15 MiB up after the evicted sockets close"
)
KNOWN = {"daphne": NO_BACKPRESSURE, "granian": MEMORY_KEPT}


@pytest.mark.parametrize(
    "server",
    [pytest.param(s, marks=KNOWN[s]) if s in KNOWN else s for s in LIFECYCLE_SERVERS],
)
def test_evicting_twenty_stalled_clients_frees_their_sockets_and_memory(server: str) -> None:
    with serve_app(server, "starlette_app", env=ENV) as process:
        crowd = Crowd(open_stream(process.port, HEALTHY) for _ in range(5))
        stalled = [open_stream(process.port, STALLED, stalled=True) for _ in range(20)]
        pid = serving_pid(process.process.pid)
        time.sleep(0.5)  # every stream registered
        sockets_before, rss_before = sockets_of(pid), rss_mib(pid)
        flood_the_stalled(process.port)
        flooded = time.monotonic()
        deadline = flooded + 2 * WRITE_TIMEOUT
        while sockets_of(pid) > sockets_before - 20 and time.monotonic() < deadline:
            time.sleep(0.1)
        took = time.monotonic() - flooded
        sockets_after, rss_after = sockets_of(pid), rss_mib(pid)
        publish(process.port, "still here", tenant="quiet")
        time.sleep(0.5)
        tails = list(crowd.tails)
        crowd.close()
        log = process.output()
    assert sockets_after <= sockets_before - 20, (
        f"{sockets_before - sockets_after} of 20 sockets closed after {took:.1f} s:\n{log}"
    )
    assert rss_after <= rss_before + 10, f"RSS {rss_before:.0f} -> {rss_after:.0f} MiB"
    for sock in stalled:  # the client learns at once that its connection is gone
        assert how_it_ends(sock) in ("reset", "closed")
    assert all(b"still here" in tail for tail in tails), "a healthy client noticed"
    assert not errors_in(log), log


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("server", LIFECYCLE_SERVERS)
def test_a_thousand_streams_twenty_of_them_stalled_stop_within_the_shutdown_timeout(
    server: str, signum: signal.Signals
) -> None:
    with serve_app(server, "starlette_app", env=ENV) as process:
        crowd = Crowd(open_stream(process.port, HEALTHY) for _ in range(980))
        stalled = [open_stream(process.port, STALLED, stalled=True) for _ in range(20)]
        time.sleep(0.5)
        flood_the_stalled(process.port)
        asked = time.monotonic()
        if signum == signal.SIGINT:  # Ctrl+C: the terminal signals the whole process group
            os.killpg(process.process.pid, signum)
        else:  # an orchestrator signals the main process
            process.process.send_signal(signum)
        process.wait_exit(timeout=SHUTDOWN_TIMEOUT + 10)
        took = time.monotonic() - asked
        crowd.wait_ended(timeout=5)
        tails, ended = list(crowd.tails), list(crowd.ended)
        crowd.close()
        for sock in stalled:
            sock.close()
        log = process.output()
    assert not process.killed, f"{server} did not exit after {signum.name}:\n{log[-3000:]}"
    assert took <= SHUTDOWN_TIMEOUT + EXIT_SLACK, f"{server} took {took:.1f} s to exit"
    assert all(ended), f"{ended.count(False)} healthy streams never ended"
    for tail in tails:
        goodbye = tail.split(b": server shutting down")
        assert len(goodbye) > 1, tail[-300:]
        assert re.search(rb"retry: \d+", goodbye[-1]), tail[-300:]
        assert tail.endswith(b"0\r\n\r\n"), f"the response was cut, not ended: {tail[-100:]!r}"
    assert not errors_in(log), log[-3000:]
    assert len(log.splitlines()) < 100, f"{len(log.splitlines())} log lines:\n{log[-3000:]}"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_the_demo_launcher_stops_promptly_with_a_client_that_stopped_reading(
    signum: signal.Signals,
) -> None:
    with serve_demo() as process:
        healthy = Crowd([open_stream(process.port, "/events?tenant=acme")])
        stalled = open_stream(process.port, "/events?tenant=acme", stalled=True)
        time.sleep(0.3)
        for _ in range(HEAVY_EVENTS):  # 4.8 MB of orders: more than any buffer takes
            create_order(process.port, customer="x" * HEAVY_SIZE)
        asked = time.monotonic()
        os.killpg(process.process.pid, signum)
        process.wait_exit(timeout=DEMO_SHUTDOWN_TIMEOUT + 10)
        took = time.monotonic() - asked
        healthy.close()
        stalled.close()
        log = process.output()
    assert not process.killed, f"the demo did not exit after {signum.name}:\n{log[-3000:]}"
    assert took <= DEMO_SHUTDOWN_TIMEOUT + 1, f"the demo took {took:.1f} s to exit"
    assert not errors_in(log), log[-3000:]
