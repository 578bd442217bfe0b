"""``ssebus.testing.SseTestClient``: a test opens a stream on its own app in process, reads
events until a count, a predicate or a timeout, and leaves without hanging."""

from __future__ import annotations

import anyio
import pytest
from apps import broadcaster_of, raw_app, starlette_app

from ssebus import ServerSentEvent
from ssebus.testing import SseTestClient, StreamEnded

pytestmark = pytest.mark.anyio


async def test_a_stream_receives_what_the_app_publishes_and_leaving_disconnects_it() -> None:
    with anyio.fail_after(10):  # leaving must neither hang nor wait for the timeout
        async with SseTestClient(starlette_app()) as client:
            async with client.stream("/events") as stream:
                assert stream.status == 200
                assert stream.headers["content-type"].startswith("text/event-stream")
                published = await client.request("POST", "/publish", json={"data": "hello"})
                event = await stream.next()
                assert (event.type, event.data) == ("note", "hello")
                assert event.last_event_id == published.json()["id"]
            assert (await client.request("GET", "/metrics")).json()["active_connections"] == 0


async def test_take_and_until_read_a_count_of_events_or_up_to_a_match() -> None:
    async with SseTestClient(starlette_app()) as client, client.stream("/events") as stream:
        for text in ("a", "b", "c", "d"):
            await client.request("POST", "/publish", json={"data": text})
        assert [event.data for event in await stream.take(2)] == ["a", "b"]
        assert [event.data for event in await stream.until(lambda e: e.data == "d")] == ["c", "d"]
        assert [event.data for event in stream.events] == ["a", "b", "c", "d"]


async def test_waiting_for_events_that_never_come_fails_with_what_did_arrive() -> None:
    async with SseTestClient(starlette_app()) as client, client.stream("/events") as stream:
        await client.request("POST", "/publish", json={"data": "only one"})
        with pytest.raises(TimeoutError, match="1 event"):
            await stream.take(2, within=0.3)


async def test_a_stream_the_server_ends_raises_stream_ended() -> None:
    app = starlette_app()
    async with SseTestClient(app) as client, client.stream("/events") as stream:
        await app.state.broadcaster.aclose()  # the goodbye, then the end of the body
        with pytest.raises(StreamEnded):
            await stream.next()
        assert stream.retry is not None


async def test_a_client_resumes_from_the_last_event_id_it_saw() -> None:
    async with SseTestClient(starlette_app()) as client:
        async with client.stream("/events") as stream:
            position = stream.last_event_id  # the id alone every fresh stream starts with
        assert position
        await client.request("POST", "/publish", json={"data": "missed"})
        async with client.stream("/events", last_event_id=position) as resumed:
            assert (await resumed.next()).data == "missed"


async def test_an_endpoint_served_alone_runs_its_lifespan_and_a_fresh_app_per_test_works() -> None:
    for _ in range(2):  # one app after the other, as one test after another would
        app = raw_app()
        broadcaster = broadcaster_of(app)
        async with SseTestClient(app) as client, client.stream("/") as stream:
            assert stream.status == 200
            broadcaster.broadcast(ServerSentEvent(data="x"))
            assert (await stream.next()).data == "x"
        assert broadcaster.metrics().active_connections == 0


async def test_a_refused_stream_shows_its_status() -> None:
    async with SseTestClient(starlette_app()) as client:
        async with client.stream("/events?tenant=") as stream:  # the test hook raises
            assert stream.status == 500
