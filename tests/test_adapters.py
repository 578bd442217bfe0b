"""Each framework adapter under each real server: the stream at ``/events`` (no redirect)
delivers, resumes from Last-Event-ID (header or query string) and stops cleanly on SIGTERM.

One server process per pair; the apps are ``tests/framework_apps.py``.
"""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Iterator

import httpx
import pytest
from httpx_sse import EventSource
from httpx_sse import ServerSentEvent as HttpxSseEvent
from servers import (
    CLEAN_EXIT,
    LIFESPANLESS_SERVERS,
    SERVERS,
    ServerProcess,
    httpx_sse_prelude_sync,
    serve_app,
)
from sockets import open_stream, read_to_the_end

FRAMEWORKS = ("asgi", "starlette", "fastapi", "litestar", "quart", "django")
#: Quart and Django run on asyncio only: hypercorn's trio worker cannot serve them at all.
ASYNCIO_ONLY = ("quart", "django")
PAIRS = [
    (framework, server)
    for framework in FRAMEWORKS
    for server in SERVERS
    if not (server == "hypercorn-trio" and framework in ASYNCIO_ONLY)
]
#: Broadcaster.shutdown_timeout's default, plus one second.
EXIT_WITHIN = 6.0


def noted(events: Iterator[HttpxSseEvent]) -> HttpxSseEvent:
    """The next ``noted`` event (skipping the position-only frames of a prelude)."""
    for event in events:
        if event.event == "noted":
            return event
    raise AssertionError("the stream ended before a noted event")


def publish(client: httpx.Client, text: str) -> None:
    response = client.post("/publish", params={"text": text})
    assert response.status_code == 204, response.text


def resumed(client: httpx.Client, url: str, headers: dict[str, str]) -> HttpxSseEvent:
    """The first ``noted`` event of a stream opened at ``url`` with ``headers``."""
    with client.stream("GET", url, headers=headers) as response:
        assert response.status_code == 200
        return noted(EventSource(response).iter_sse())


@pytest.mark.parametrize(("framework", "server"), PAIRS)
def test_the_adapter_delivers_resumes_and_stops_cleanly_under_the_server(
    framework: str, server: str
) -> None:
    with serve_app(server, f"tests.framework_apps:{framework}_app") as process:
        base = process.url
        with httpx.Client(base_url=base, timeout=10) as client:
            with client.stream("GET", "/events?topic=x") as response:
                assert response.status_code == 200, response.read()
                assert response.headers["content-type"].startswith("text/event-stream")
                events = EventSource(response).iter_sse()
                httpx_sse_prelude_sync(events, 3000)
                publish(client, "one")
                first = noted(events)
                publish(client, "two")
                second = noted(events)
            assert (first.data, second.data) == ('{"text":"one"}', '{"text":"two"}')
            by_header = resumed(client, "/events", {"last-event-id": first.id})
            by_query = resumed(client, f"/events?lastEventId={first.id}", {})
            assert (by_header.id, by_query.id) == (second.id, second.id)
        log = stops_cleanly_on_sigterm(process)
    # The adapter wires the app's lifespan: only under a server that sends none does the
    # endpoint start the broadcaster itself.
    started_lazily = "started the Broadcaster at the first request" in log
    assert started_lazily == (server in LIFESPANLESS_SERVERS), log


def stops_cleanly_on_sigterm(process: ServerProcess) -> str:
    """SIGTERM: the process exits within EXIT_WITHIN s, the open stream gets a ``retry:``
    and a properly ended body, and the log holds no traceback; returns the log."""
    client = open_stream(process.port, "/events")
    time.sleep(0.2)  # registered: daphne and granian answer the head before the app runs
    asked = time.monotonic()
    process.process.send_signal(signal.SIGTERM)
    received = read_to_the_end(client)
    code = process.wait_exit(timeout=EXIT_WITHIN + 5)
    took = time.monotonic() - asked
    log = process.output()
    assert not process.killed, f"killed after {took:.1f} s:\n{log}"
    assert took <= EXIT_WITHIN, f"exited after {took:.1f} s:\n{log}"
    assert code in CLEAN_EXIT, f"exit status {code}:\n{log}"
    goodbye = received.split(b": server shutting down")[-1]
    assert re.search(rb"retry: \d+", goodbye), received[-300:]
    assert received.endswith(b"0\r\n\r\n"), f"cut, not ended: {received[-100:]!r}\n{log}"
    assert "Traceback" not in log, log
    return log
