"""Tricky payloads reach real HTTP clients intact: httpx + httpx-sse against a live uvicorn.

Each payload is broadcast as the data of one event through the Starlette test app
(``POST /publish``) and read back over a real socket. The wire format has a single line
separator, so CR and CRLF inside data arrive as LF; everything else (U+2028, U+0085, NUL,
leading spaces, empty data, trailing newlines, text that looks like SSE fields, 64 KiB) is
expected back unchanged. The same stream read as raw bytes and interpreted by
``ssebus.testing.parse_events`` (the WHATWG algorithm, as a browser runs it) must agree.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator

import anyio
import httpx
import pytest
from httpx_sse import ServerSentEvent as HttpxSseEvent
from httpx_sse import aconnect_sse, connect_sse
from servers import ServerProcess, httpx_sse_prelude, httpx_sse_prelude_sync, serve_app

from ssebus.testing import EventStreamParser, ParsedEvent, parse_events

#: Seconds any single step may take.
STEP = 5.0
RETRY_MS = 3000

PAYLOADS: dict[str, str] = {
    "plain": "hello",
    "multi-line-lf": "line one\nline two\nline three",
    "multi-line-crlf": "line one\r\nline two\r\nline three",
    "multi-line-cr": "line one\rline two\rline three",
    "mixed-line-ends": "a\nb\r\nc\rd",
    "unicode-and-emoji": "héllo wörld ✓ 中文 Ελληνικά 😀👩‍👩‍👧 \U0001f680",
    "u2028-u2029-nel-stay-in-line": "before\u2028between\u2029and\x85after",
    "leading-spaces": "   three leading spaces",
    "leading-space-on-every-line": " a\n  b\n   c",
    "empty": "",
    "trailing-newline": "ends with a newline\n",
    "only-newlines": "\n\n",
    "blank-line-inside": "above\n\nbelow",
    "looks-like-fields": "data: injected\n\nevent: evil\nid: 666\nretry: 1\n: comment",
    "colons-and-tabs": "key:value\t: tab\tseparated",
    "nul-and-controls": "nul\x00bell\x07esc\x1b",
    "json": '{"orderId":"ord-1","note":"a \\"quoted\\" word"}',
    "64kib-one-line": ("0123456789abcdef" * 4096),
    "64kib-multibyte-many-lines": ("ünïcødé 😀 text, line after line\n" * 1700).rstrip("\n"),
}


def on_the_wire(data: str) -> str:
    """What a client must see: CR and CRLF become LF, nothing else changes."""
    return re.sub(r"\r\n|\r", "\n", data)


def test_the_big_payloads_are_at_least_64_kib() -> None:
    assert len(PAYLOADS["64kib-one-line"].encode()) >= 64 * 1024
    assert len(PAYLOADS["64kib-multibyte-many-lines"].encode()) >= 64 * 1024


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    """The Starlette test app under uvicorn, heartbeats off: only published events flow."""
    with serve_app("uvicorn", "starlette_app", env={"SSEBUS_TEST_HEARTBEAT": "off"}) as live:
        yield live


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=STEP) as http:
        yield http


async def publish(client: httpx.AsyncClient, base: str, data: str) -> str:
    response = await client.post(f"{base}/publish", json={"data": data, "event": "note"})
    response.raise_for_status()
    event_id = response.json()["id"]
    assert isinstance(event_id, str)
    return event_id


@pytest.mark.anyio
@pytest.mark.parametrize("name", list(PAYLOADS))
async def test_httpx_sse_receives_the_payload_intact(
    server: ServerProcess, client: httpx.AsyncClient, name: str
) -> None:
    payload = PAYLOADS[name]
    with anyio.fail_after(STEP):
        async with aconnect_sse(client, "GET", f"{server.url}/events") as source:
            events = source.aiter_sse()
            await httpx_sse_prelude(events, RETRY_MS)  # retry, then the position's id
            event_id = await publish(client, server.url, payload)
            received = await events.__anext__()
            await events.aclose()
    assert received.event == "note"
    assert received.id == event_id
    assert received.data == on_the_wire(payload)


async def read_httpx_sse_until(
    source_events: AsyncIterator[HttpxSseEvent], count: int
) -> list[HttpxSseEvent]:
    return [await source_events.__anext__() for _ in range(count)]


@pytest.mark.anyio
async def test_raw_bytes_parsed_by_the_spec_parser_match_httpx_sse(
    server: ServerProcess, client: httpx.AsyncClient
) -> None:
    """Two clients on the same broadcast: one via httpx-sse, one raw through parse_events."""
    base = server.url
    async with (
        aconnect_sse(client, "GET", f"{base}/events") as source,
        client.stream("GET", f"{base}/events") as raw_response,
    ):
        events = source.aiter_sse()
        with anyio.fail_after(STEP):
            await httpx_sse_prelude(events, RETRY_MS)  # retry and id: both are registered now
            raw_chunks = raw_response.aiter_bytes()
            first = await raw_chunks.__anext__()
        assert first.startswith(b"retry: 3000\n\n")
        ids = [await publish(client, base, payload) for payload in PAYLOADS.values()]
        with anyio.fail_after(STEP):
            via_httpx_sse = await read_httpx_sse_until(events, len(PAYLOADS))
            rest = bytearray()
            parser = EventStreamParser()
            parser.feed(first)
            dispatched = 0
            async for chunk in raw_chunks:
                rest += chunk
                dispatched += len(parser.feed(chunk))
                if dispatched >= len(PAYLOADS):
                    break
        await events.aclose()

    stream = first + bytes(rest)
    assert re.match(rb"retry: 3000\n\nid: [A-Za-z0-9_-]+\n\n", stream), stream[:64]
    via_spec = parse_events(stream)
    expected = [
        ParsedEvent("note", on_the_wire(payload), event_id, RETRY_MS)
        for payload, event_id in zip(PAYLOADS.values(), ids, strict=True)
    ]
    assert via_spec == expected
    assert [(e.event, e.data, e.id) for e in via_httpx_sse] == [
        (e.type, e.data, e.last_event_id) for e in via_spec
    ]


def test_the_sync_httpx_sse_api_receives_the_payloads_intact(server: ServerProcess) -> None:
    base = server.url
    with (
        httpx.Client(timeout=STEP) as http,
        connect_sse(http, "GET", f"{base}/events") as source,
    ):
        events = source.iter_sse()
        httpx_sse_prelude_sync(events, RETRY_MS)
        received = []
        for payload in PAYLOADS.values():
            posted = http.post(f"{base}/publish", json={"data": payload, "event": "note"})
            posted.raise_for_status()
            sse = next(events)
            received.append((sse.id, sse.data))
            assert sse.id == posted.json()["id"]
    assert [data for _, data in received] == [on_the_wire(p) for p in PAYLOADS.values()]
