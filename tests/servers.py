"""Run an ASGI app (or the demo script) under a real server in a subprocess, for tests.

Not a test module. :func:`serve_app` serves a factory of ``tests/apps.py`` on a free
127.0.0.1 port, :func:`serve_demo` runs ``examples/orders_app.py``; both wait (bounded)
until the port accepts connections, yield a :class:`ServerProcess` and, on exit, stop the
server with SIGINT and assert that it exits within ``STOP_TIMEOUT`` seconds (killing its
whole process group if it does not, so nothing outlives the test).

:func:`httpx_sse_prelude` (and :func:`httpx_sse_prelude_sync`) read the start of a fresh
stream as httpx-sse yields it.

Two ways to serve an app:

* ``graceful=False``: the server's own command line, as most deployments run it
  (``uvicorn --factory tests.apps:starlette_app``, ``hypercorn 'tests.apps:starlette_app()'``).
  Neither ends an open stream on SIGINT by itself, so stop these only with no client left.
* ``graceful=True``: ``python tests/apps.py SERVER FACTORY``, which serves programmatically
  and closes the broadcaster as soon as the server is asked to stop (see ``tests/apps.py``).
"""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager, suppress
from functools import partial
from pathlib import Path
from typing import IO

from httpx_sse import ServerSentEvent as HttpxSseEvent

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "examples" / "orders_app.py"
APPS = ROOT / "tests" / "apps.py"

#: The servers every live test runs against.
SERVERS = ("uvicorn", "hypercorn", "hypercorn-trio", "daphne", "granian")
#: Those, and the servers whose lifecycle tests (stopping) also run: gunicorn with uvicorn's
#: worker (a master process and one worker).
LIFECYCLE_SERVERS = (*SERVERS, "gunicorn")
#: Servers that send no ASGI lifespan: the endpoint starts its broadcaster at the first
#: request (``tests/test_lifespanless.py``).
LIFESPANLESS_SERVERS = ("daphne",)
#: Seconds a server may take to start accepting connections (imports included).
START_TIMEOUT = 20.0
#: Seconds a server may take to exit after SIGINT.
STOP_TIMEOUT = 5.0
#: Exit statuses of a clean stop: uvicorn re-raises the signal it handled once it has shut
#: down, so a process may end "killed by SIGINT/SIGTERM" after a complete graceful shutdown.
CLEAN_EXIT = (0, -signal.SIGINT, 128 + signal.SIGINT, -signal.SIGTERM, 128 + signal.SIGTERM)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def answers_http(port: int) -> bool:
    """True if something on ``port`` answers ``HEAD /`` with an HTTP status line.

    A bare TCP connect is not proof: while nothing listens on a port of the ephemeral range,
    Linux may pick that very port as the probe's source and connect the socket to itself.
    """
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
            if sock.getsockname() == sock.getpeername():
                return False
            sock.sendall(b"HEAD / HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n")
            return sock.recv(16).startswith(b"HTTP/1.")
    except OSError:
        return False


class ServerProcess:
    """A server subprocess: its base ``url``, its output, and a bounded SIGINT stop."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, log: IO[bytes]) -> None:
        self.process = process
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self._log = log
        #: True if the process had to be killed because it ignored SIGINT.
        self.killed = False

    def output(self) -> str:
        """Everything the server wrote to stdout and stderr so far."""
        self._log.flush()
        self._log.seek(0)
        return self._log.read().decode("utf-8", errors="replace")

    def wait_until_accepting(self, timeout: float = START_TIMEOUT) -> None:
        """Return once the server answers HTTP; fail if the process dies or times out."""
        deadline = time.monotonic() + timeout
        while True:
            code = self.process.poll()
            if code is not None:
                raise AssertionError(
                    f"server exited with {code} before accepting connections:\n{self.output()}"
                )
            if answers_http(self.port):
                return
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"server did not accept connections within {timeout} s:\n{self.output()}"
                )
            time.sleep(0.05)

    def interrupt(self) -> None:
        """Send SIGINT to the server's process group, as Ctrl+C in a terminal does.

        Not to the main process alone: gunicorn's master then asks its workers for a quick
        shutdown with SIGQUIT, which uvicorn's worker ignores until the master kills it
        after ``graceful_timeout`` (30 s), with or without ssebus (see the README).
        """
        if self.process.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGINT)

    def wait_exit(self, timeout: float = STOP_TIMEOUT) -> int:
        """Wait for the process to exit; kill its process group after ``timeout`` seconds."""
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.killed = True
            self.kill()
            return self.process.wait(timeout=STOP_TIMEOUT)

    def kill(self) -> None:
        """SIGKILL the server and anything it started (it leads its own process group)."""
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)

    def stop(self) -> int:
        """SIGINT, then wait for the exit (bounded); return the exit status."""
        self.interrupt()
        return self.wait_exit()

    def assert_stopped_cleanly(self, code: int) -> None:
        assert not self.killed, (
            f"server ignored SIGINT for {STOP_TIMEOUT} s and was killed:\n{self.output()}"
        )
        assert code in CLEAN_EXIT, f"server exited with {code}:\n{self.output()}"


@contextmanager
def run_server(
    command: Sequence[str],
    port: int,
    *,
    env: dict[str, str] | None = None,
    probe: bool = True,
    fd_limit: int | None = None,
) -> Iterator[ServerProcess]:
    """Start ``command`` (which must listen on ``port``), yield it once it accepts (at once
    with ``probe=False``: no request reaches the app before the test's own), stop it.

    ``fd_limit`` lowers the server's soft ``RLIMIT_NOFILE`` (as ``ulimit -n`` would) before it
    starts. The stop is SIGINT and a bounded wait; the test fails if the server has to be
    killed or exits with an unclean status (unless the test itself already failed).
    """
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            list(command),
            cwd=ROOT,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=None if fd_limit is None else partial(limit_fds, fd_limit),
        )
        server = ServerProcess(process, port, log)
        try:
            if probe:
                server.wait_until_accepting()
            yield server
        finally:
            code = server.stop() if process.returncode is None else process.returncode
            server.kill()  # anything the server left behind in its process group
        server.assert_stopped_cleanly(code)


def limit_fds(soft: int) -> None:
    """Set this process's soft limit of open files to ``soft`` (in a child, before exec)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def uvicorn_command(factory: str, port: int, *options: str) -> list[str]:
    """``uvicorn --factory`` serving ``module:function`` on 127.0.0.1:``port``."""
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        factory,
        *options,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]


def app_command(
    server: str, factory: str, port: int, *, graceful: bool, workers: int | None = None
) -> list[str]:
    """The command line that serves ``tests.apps:<factory>`` (or ``module:factory``) with
    ``server`` on ``port``; ``workers=N`` asks the server for N worker processes (uvicorn,
    gunicorn, hypercorn)."""
    if server not in LIFECYCLE_SERVERS:
        raise ValueError(f"unknown server {server!r}; one of {LIFECYCLE_SERVERS}")
    module, _, factory = factory.rpartition(":")
    module = module or "tests.apps"
    if server == "daphne":
        # No launcher: daphne's own command is how it runs, and it stops the streams
        # itself (SseEndpoint's signal chain), so it is the graceful way too.
        return [
            sys.executable,
            "-m",
            "daphne",
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--verbosity",  # warnings and up, no access log: as uvicorn's --log-level warning
            "0",
            f"{module}:instances.{factory}",
        ]
    if graceful and server != "granian":  # granian's own command already ends every stream
        return [sys.executable, str(APPS), server, factory, "--port", str(port)]
    if server == "uvicorn":
        options = () if workers is None else ("--workers", str(workers))
        return uvicorn_command(f"{module}:{factory}", port, *options)
    if server == "gunicorn":
        return [
            sys.executable,
            "-m",
            "gunicorn",
            "--worker-class",
            "uvicorn.workers.UvicornWorker",
            "--workers",
            str(workers or 1),
            "--bind",
            f"127.0.0.1:{port}",
            f"{module}:{factory}()",
        ]
    if server == "granian":
        return [
            sys.executable,
            "-m",
            "granian",
            "--interface",
            "asgi",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--factory",
            f"{module}:{factory}",
        ]
    # --workers 0 by default: serve in this process rather than in a spawned worker, so
    # SIGINT reaches the server directly and a kill leaves no orphan behind.
    return [
        sys.executable,
        "-m",
        "hypercorn",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers or 0),
        "--worker-class",
        "trio" if server == "hypercorn-trio" else "asyncio",
        f"{module}:{factory}()",
    ]


@contextmanager
def serve_app(
    server: str,
    factory: str,
    *,
    graceful: bool = False,
    env: dict[str, str] | None = None,
    workers: int | None = None,
    probe: bool = True,
    fd_limit: int | None = None,
) -> Iterator[ServerProcess]:
    """Serve ``tests.apps.<factory>`` with ``server`` on a free port; see the module doc."""
    port = free_port()
    command = app_command(server, factory, port, graceful=graceful, workers=workers)
    with run_server(command, port, env=env, probe=probe, fd_limit=fd_limit) as s:
        yield s


@contextmanager
def serve_demo(*args: str) -> Iterator[ServerProcess]:
    """Run ``examples/orders_app.py`` (with extra ``args``) on a free port."""
    port = free_port()
    with run_server([sys.executable, str(DEMO), "--port", str(port), *args], port) as s:
        yield s


# -- the start of a fresh stream, as httpx-sse reads it ------------------------------------


def check_httpx_sse_prelude(retry_frame: HttpxSseEvent, id_frame: HttpxSseEvent, retry: int) -> str:
    """Check the two dispatches httpx-sse makes of a fresh stream's prelude; its position id.

    Every stream starts with ``retry: N`` and, for a client without ``Last-Event-ID``, an
    ``id: <token>`` alone: ``EventSource`` dispatches neither (no data), httpx-sse yields each
    as a ``message`` with empty data. The id is the client's position: resuming from it
    misses nothing published after the connection was registered.
    """
    assert (retry_frame.event, retry_frame.data, retry_frame.id, retry_frame.retry) == (
        "message",
        "",
        "",
        retry,
    ), retry_frame
    assert (id_frame.event, id_frame.data, id_frame.retry) == ("message", "", None), id_frame
    assert id_frame.id, id_frame
    return id_frame.id


async def httpx_sse_prelude(events: AsyncIterator[HttpxSseEvent], retry: int) -> str:
    """Read a fresh stream's prelude from ``aiter_sse()``; its position id. Once it is read
    the connection is registered: anything published from then on reaches it."""
    retry_frame = await events.__anext__()
    id_frame = await events.__anext__()
    return check_httpx_sse_prelude(retry_frame, id_frame, retry)


def httpx_sse_prelude_sync(events: Iterator[HttpxSseEvent], retry: int) -> str:
    """:func:`httpx_sse_prelude` for ``iter_sse()``."""
    retry_frame = next(events)
    id_frame = next(events)
    return check_httpx_sse_prelude(retry_frame, id_frame, retry)
