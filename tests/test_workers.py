"""Several worker processes, one address: an in-memory bus per process is said out loud.

``uvicorn --workers 2``, ``gunicorn -w 2`` and ``hypercorn --workers 2`` run the app once per
worker process. With ``InMemoryEventBus`` an event published in one worker reaches only that
worker's clients, so each worker whose endpoint has an in-memory bus registers the address
it serves (``ssebus._workers``) and warns, naming the fix, when another live process with an
in-memory bus serves the same address. One worker, or two servers on two ports, never warn;
with ``RedisEventBus`` nothing warns and every client of every worker gets every event.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from redis_support import REDIS_URL, delete_bus, raw_client
from servers import ROOT, ServerProcess, serve_app

from ssebus._workers import WorkerCheck, listening_addresses

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the check reads /proc: Linux only"
)
pytestmark = linux_only

#: How long a worker may take to start and register.
WITHIN = 20.0


def registrations(log: str, port: int) -> list[str]:
    """The log lines of processes that registered as serving 127.0.0.1:``port``."""
    return re.findall(rf"pid \d+ serves 127\.0\.0\.1:{port} with its own InMemoryEventBus", log)


def warnings_in(log: str) -> list[str]:
    return [line for line in log.splitlines() if "each with its own InMemoryEventBus" in line]


def wait_for(server: ServerProcess, condition: str, test: object) -> str:
    """The server's log once ``test(log)`` holds; fail with the log after ``WITHIN`` s."""
    assert callable(test)
    deadline = time.monotonic() + WITHIN
    while not test(log := server.output()):
        assert time.monotonic() < deadline, f"{condition} not within {WITHIN} s:\n{log}"
        time.sleep(0.05)
    return log


def open_stream(server: ServerProcess, path: str) -> tuple[socket.socket, str]:
    """A client that sent its GET and read the response head; the worker pid that serves it
    (``x-worker-pid``, empty when the app does not say)."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.sendall(f"GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        assert chunk, "the server closed the stream before its headers"
        head += chunk
    assert head.startswith(b"HTTP/1.1 200"), head
    found = re.search(rb"(?i)\r\nx-worker-pid: *(\d+)", head)
    return sock, found.group(1).decode() if found else ""


def post_domain(server: ServerProcess, text: str) -> str:
    """``POST /domain`` (publish a ``Noted`` on the bus); the pid of the worker that did."""
    body = json.dumps({"text": text}).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(
            b"POST /domain HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n"
            b"content-type: application/json\r\n"
            + f"content-length: {len(body)}\r\n\r\n".encode()
            + body
        )
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200"), answer
    return str(json.loads(answer.split(b"\r\n\r\n", 1)[1])["pid"])


def noted_pid(sock: socket.socket, text: str, within: float) -> str | None:
    """The pid in the ``noted`` event of ``text`` this stream receives within ``within`` s."""
    pattern = re.compile(rb'data: (\{[^\n]*"text":"' + text.encode() + rb'"[^\n]*\})')
    data = b""
    deadline = time.monotonic() + within
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        if not chunk:
            break
        data += chunk
        if found := pattern.search(data):
            return str(json.loads(found.group(1))["pid"])
    return None


def head_pid(server: ServerProcess) -> str:
    """The pid of the worker that answers a ``HEAD /events`` on a new connection."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"HEAD /events HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n")
        head = b""
        while chunk := sock.recv(4096):
            head += chunk
    found = re.search(rb"(?i)\r\nx-worker-pid: *(\d+)", head)
    assert found, head
    return found.group(1).decode()


def streams_on_two_workers(server: ServerProcess) -> list[tuple[socket.socket, str]]:
    """At least two streams on each of two worker processes (they spread as they open),
    once both workers answer (the server accepts as soon as its first worker is up)."""
    deadline = time.monotonic() + WITHIN
    while len({head_pid(server) for _ in range(4)}) < 2:
        assert time.monotonic() < deadline, f"one worker only:\n{server.output()}"
        time.sleep(0.1)
    # Which worker accepts is the kernel's choice, and a busy machine may favour one for
    # a while: keep at most 4 streams per worker, closing extras, until both have some.
    streams: list[tuple[socket.socket, str]] = []
    seen: list[str] = []
    while len(seen) < 300:
        sock, pid = open_stream(server, "/events")
        seen.append(pid)
        if sum(1 for _, p in streams if p == pid) >= 4:
            sock.close()
            time.sleep(0.01)
            continue
        streams.append((sock, pid))
        counts = Counter(p for _, p in streams)
        if len(streams) >= 8 and len(counts) == 2 and min(counts.values()) >= 2:
            return streams
    pytest.fail(f"300 streams did not spread over two workers: {Counter(seen)}")


def stop(server: ServerProcess) -> None:
    """Stop the server as an orchestrator does, with SIGTERM to its main process (gunicorn
    27's master, unlike uvicorn and hypercorn, does not act on a SIGINT sent to it alone)."""
    server.process.send_signal(signal.SIGTERM)
    server.wait_exit()


@pytest.fixture
def redis_stream(need_redis: None) -> Iterator[str]:
    """A fresh Redis bus name for the servers under test; its keys are deleted afterwards."""
    name = f"ssebus-test-workers-{uuid.uuid4().hex}"
    yield name

    async def delete() -> None:
        async with raw_client(REDIS_URL) as redis:
            await delete_bus(redis, name)

    anyio.run(delete)


# -- real servers ---------------------------------------------------------------------------


@pytest.mark.parametrize("server", ["uvicorn", "gunicorn", "hypercorn"])
def test_two_workers_with_in_memory_buses_warn_at_startup_naming_redis(server: str) -> None:
    # No request at all (not even the usual probe): the warning comes at lifespan startup.
    with serve_app(server, "raw_app", workers=2, probe=False) as process:
        wait_for(process, "2 registrations", lambda log: len(registrations(log, process.port)) == 2)
        log = wait_for(process, "a warning", warnings_in)
        process.wait_until_accepting()  # started, so that the stop is a clean one
        stop(process)
    warned = warnings_in(log)
    assert len(warned) <= 2, log  # at most once per worker process
    assert re.search(rf"2 processes serve 127\.0\.0\.1:{process.port},", warned[0]), warned
    assert "RedisEventBus" in warned[0], warned
    assert "Several workers" in warned[0], warned
    assert "Traceback" not in log, log


@pytest.mark.parametrize(
    ("server", "workers"),
    [("uvicorn", None), ("gunicorn", 1), ("hypercorn", 1), ("hypercorn", None)],
    ids=["uvicorn", "gunicorn-w1", "hypercorn-workers1", "hypercorn-in-process"],
)
def test_one_worker_never_warns(server: str, workers: int | None) -> None:
    with serve_app(server, "raw_app", workers=workers) as process:
        sock, _ = open_stream(process, "/")
        log = wait_for(process, "a registration", lambda log: registrations(log, process.port))
        sock.close()
        time.sleep(0.5)  # a warning would follow the registration at once
        stop(process)
        log = process.output()
    assert len(registrations(log, process.port)) == 1, log
    assert not warnings_in(log), log
    assert "Traceback" not in log, log


def test_two_servers_on_two_ports_never_warn() -> None:
    with serve_app("uvicorn", "worker_app") as one, serve_app("uvicorn", "worker_app") as two:
        for process, port in ((one, one.port), (two, two.port)):
            sock, _ = open_stream(process, "/events")
            wait_for(process, "a registration", lambda log, port=port: registrations(log, port))
            sock.close()
        time.sleep(0.5)
        logs = one.output(), two.output()
    for log in logs:
        assert not warnings_in(log), log


def test_with_in_memory_buses_other_workers_miss_the_event_and_the_log_says_why() -> None:
    with serve_app("uvicorn", "worker_app", workers=2) as process:
        streams = streams_on_two_workers(process)
        # A mounted endpoint registers at its first request: both workers have served one.
        log = wait_for(process, "a warning", warnings_in)
        publisher = post_domain(process, "hello")
        received = [(pid, noted_pid(sock, "hello", within=1.0)) for sock, pid in streams]
        for sock, _ in streams:
            sock.close()
    assert "RedisEventBus" in warnings_in(log)[0], log
    assert received == [(pid, pid if pid == publisher else None) for pid, _ in received]


def test_with_a_redis_bus_every_client_of_every_worker_gets_the_event_and_nothing_warns(
    redis_stream: str,
) -> None:
    env = {"SSEBUS_TEST_REDIS_URL": REDIS_URL, "SSEBUS_TEST_REDIS_STREAM": redis_stream}
    with serve_app("uvicorn", "redis_worker_app", workers=2, env=env) as process:
        streams = streams_on_two_workers(process)
        post_domain(process, "hello")
        # Each worker maps the event itself: the payload names the worker that delivered it.
        received = [(pid, noted_pid(sock, "hello", within=10.0)) for sock, pid in streams]
        for sock, _ in streams:
            sock.close()
        log = process.output()
    assert received == [(pid, pid) for pid, _ in received], log
    assert not warnings_in(log), log
    assert "Traceback" not in log, log


# -- the check itself, in this process ------------------------------------------------------


def test_a_process_finds_the_sockets_it_listens_or_will_listen_on_and_no_other(
    tmp_path: Path,
) -> None:
    with (
        socket.create_server(("127.0.0.1", 0)) as listening,
        socket.socket() as bound,
        socket.socket(socket.AF_UNIX) as unix,
        socket.socket(),  # never bound
    ):
        bound.bind(("127.0.0.1", 0))
        unix.bind(str(tmp_path / "s.sock"))
        unix.listen()
        with socket.create_connection(listening.getsockname()) as client:
            found = listening_addresses()
            ports = [sock.getsockname()[1] for sock in (listening, bound, client)]
            accepted, _ = listening.accept()
            with accepted:
                again = listening_addresses()
    assert f"127.0.0.1:{ports[0]}" in found
    assert f"unix:{tmp_path / 's.sock'}" in found
    # Bound, not listening yet: uvicorn's workers each call listen() after their startup.
    assert f"127.0.0.1:{ports[1]}" in found
    assert f"127.0.0.1:{ports[2]}" not in found  # a client's connection
    assert "0.0.0.0:0" not in found  # nor the socket never bound
    assert again == found, again  # nor an accepted connection


PEER = """
import sys, pathlib
from ssebus._workers import WorkerCheck
WorkerCheck(pathlib.Path(sys.argv[1])).check()
print("registered", flush=True)
sys.stdin.read()
"""


def test_a_registration_counts_while_its_process_lives_and_is_removed_once_it_died(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "ssebus")
    with socket.create_server(("127.0.0.1", 0)) as listening:
        address = f"127.0.0.1:{listening.getsockname()[1]}"
        peer = subprocess.Popen(
            [sys.executable, "-c", PEER, str(tmp_path)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            pass_fds=[listening.fileno()],  # as a server's workers inherit its socket
        )
        try:
            assert peer.stdout is not None
            assert peer.stdout.readline() == b"registered\n"
            alive = WorkerCheck(tmp_path)
            alive.check()
            alive.close()
            said_alive = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
            caplog.clear()
        finally:
            os.kill(peer.pid, signal.SIGKILL)  # no chance to remove its registration
            peer.wait()
        entries_before = [p for p in tmp_path.rglob("*") if p.is_file()]
        after = WorkerCheck(tmp_path)
        after.check()
        entries_during = [p for p in tmp_path.rglob("*") if p.is_file()]
        after.close()
    assert len(said_alive) == 1, said_alive
    assert said_alive[0].startswith(f"2 processes serve {address}, each with its own"), said_alive
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert entries_before, "the killed peer left its entry"
    assert len(entries_during) == 1, entries_during  # this process's only
    assert not [p for p in tmp_path.rglob("*") if p.is_file()], "close() leaves no entry"


def test_the_check_skips_without_a_word_when_its_directory_is_unusable(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "ssebus")
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    with socket.create_server(("127.0.0.1", 0)):
        check = WorkerCheck(not_a_directory)
        assert check.check() is True  # done: there is nothing more to find out
        check.close()
    assert not [r for r in caplog.records if r.levelno >= logging.INFO], caplog.text
