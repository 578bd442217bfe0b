"""Stopping under a real server, started the way users start it (no flags, no launcher).

Servers wait for open responses to finish before they shut down, and an event stream never
finishes by itself. Asked to stop (SIGTERM from an orchestrator, SIGINT from Ctrl+C), the
server process must exit promptly; every client must get the final jittered ``retry:`` and
a properly ended response; and the log must hold no ERROR line and no traceback.
"""

from __future__ import annotations

import os
import re
import signal
import time

import pytest
from servers import LIFECYCLE_SERVERS, serve_app
from sockets import open_stream, read_to_the_end

#: Broadcaster.shutdown_timeout's default, plus the one second the issue allows.
EXIT_WITHIN = 5.0 + 1.0
CLIENTS = 5


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("factory", ["raw_app", "starlette_app"])
@pytest.mark.parametrize("server", LIFECYCLE_SERVERS)
def test_the_plain_server_command_stops_at_once_and_every_client_gets_its_goodbye(
    server: str, factory: str, signum: signal.Signals
) -> None:
    path = "/" if factory == "raw_app" else "/events"
    with serve_app(server, factory) as process:
        clients = [open_stream(process.port, path) for _ in range(CLIENTS)]
        asked = time.monotonic()
        if signum == signal.SIGINT:  # Ctrl+C: the terminal signals the whole process group
            os.killpg(process.process.pid, signum)
        else:  # an orchestrator signals the main process (gunicorn's master, say)
            process.process.send_signal(signum)
        received = [read_to_the_end(client) for client in clients]
        code = process.wait_exit(timeout=EXIT_WITHIN + 5)
        took = time.monotonic() - asked
        log = process.output()
    assert not process.killed, f"{server} did not exit after {signum.name}:\n{log}"
    assert took <= EXIT_WITHIN, f"{server} took {took:.1f} s to exit:\n{log}"
    for data in received:
        assert b": server shutting down" in data, data[-300:]
        assert re.search(rb"retry: \d+", data.split(b": server shutting down")[-1]), data[-300:]
        assert data.endswith(b"0\r\n\r\n"), f"the response was cut, not ended: {data[-100:]!r}"
    assert "Traceback" not in log, log
    assert not [line for line in log.splitlines() if "ERROR" in line], log
    assert code is not None
