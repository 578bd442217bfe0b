"""``SseTestClient``: open event streams on an ASGI app in process, for tests.

An endless response is why testing a stream is awkward: httpx's ``ASGITransport`` waits
for a body that never ends, and a test that forgets to disconnect hangs. This client runs
the app's lifespan, opens streams as tasks of its own task group, reads events until a
count, a predicate or a timeout, and on leaving disconnects every stream (``http.disconnect``)
and shuts the app down, on asyncio and trio alike.
"""

from __future__ import annotations

import json as jsonlib
import math
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from typing_extensions import Self

from ._parser import EventStreamParser, ParsedEvent
from ._types import Message, Scope

__all__ = ["Response", "SseTestClient", "StreamEnded", "TestStream"]

ASGIApp = Callable[..., Any]
Headers = Mapping[str, str] | None


class StreamEnded(Exception):
    """The server ended the stream before the events a test waited for arrived."""


@dataclass(frozen=True)
class Response:
    """A whole (non-streaming) response."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return jsonlib.loads(self.body)


class TestStream:
    """One open event stream: its status and headers, and the events as they arrive."""

    __test__ = False  # not a pytest test class, whatever its name

    def __init__(self, status: int, headers: dict[str, str], timeout: float) -> None:
        self.status = status
        self.headers = headers
        self.timeout = timeout
        #: Every event dispatched so far, in order (also those already returned).
        self.events: list[ParsedEvent] = []
        self._parser = EventStreamParser()
        self._sender: MemoryObjectSendStream[ParsedEvent]
        self._receiver: MemoryObjectReceiveStream[ParsedEvent]
        self._sender, self._receiver = anyio.create_memory_object_stream(math.inf)

    @property
    def last_event_id(self) -> str:
        """The id a reconnecting ``EventSource`` would send: also set by an ``id:`` alone."""
        return self._parser.last_event_id

    @property
    def retry(self) -> int | None:
        """The reconnection delay the server set, in ms."""
        return self._parser.retry

    async def next(self, *, within: float | None = None) -> ParsedEvent:
        """The next event; ``TimeoutError`` if none comes ``within`` seconds (default: the
        client's ``timeout``), ``StreamEnded`` if the stream ends first."""
        return (await self.take(1, within=within))[0]

    async def take(self, count: int, *, within: float | None = None) -> list[ParsedEvent]:
        """The next ``count`` events, all of them ``within`` seconds."""
        return await self._read(lambda taken: len(taken) >= count, within)

    async def until(
        self, predicate: Callable[[ParsedEvent], bool], *, within: float | None = None
    ) -> list[ParsedEvent]:
        """Events up to and including the first for which ``predicate`` is true."""
        return await self._read(lambda taken: predicate(taken[-1]), within)

    async def _read(
        self, enough: Callable[[list[ParsedEvent]], bool], within: float | None
    ) -> list[ParsedEvent]:
        limit = self.timeout if within is None else within
        taken: list[ParsedEvent] = []
        try:
            with anyio.fail_after(limit):
                async for event in self._receiver:
                    taken.append(event)
                    if enough(taken):
                        return taken
        except TimeoutError:
            raise TimeoutError(
                f"{len(taken)} event(s) arrived within {limit} s, not enough: {taken!r}"
            ) from None
        raise StreamEnded(f"the stream ended after {len(taken)} more event(s): {taken!r}")

    def _feed(self, body: bytes) -> None:
        for event in self._parser.feed(body):
            self.events.append(event)
            self._sender.send_nowait(event)

    def _end(self) -> None:
        self._parser.close()
        self._sender.close()


class SseTestClient:
    """Runs an ASGI app in process: ``async with SseTestClient(app) as client`` starts its
    lifespan (if it has one); ``client.stream(path)`` opens an event stream and
    ``client.request(...)`` makes an ordinary request. Leaving disconnects every stream and
    shuts the app down. ``timeout`` bounds every wait (seconds)."""

    __test__ = False

    def __init__(
        self, app: ASGIApp, *, lifespan: bool = True, timeout: float = 5.0, headers: Headers = None
    ) -> None:
        self.app = app
        self.timeout = timeout
        self.headers = dict(headers or {})
        self._use_lifespan = lifespan
        self._tasks: anyio.abc.TaskGroup | None = None
        self._lifespan_done: anyio.Event | None = None
        self._shutdown: anyio.Event | None = None
        self._lifespan_messages: list[Message] = []

    async def __aenter__(self) -> Self:
        self._tasks = await anyio.create_task_group().__aenter__()
        if self._use_lifespan:
            try:
                await self._start_lifespan()
            except BaseException as exc:
                await self._tasks.__aexit__(type(exc), exc, exc.__traceback__)
                raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._tasks is not None
        if self._shutdown is not None:
            self._shutdown.set()
            assert self._lifespan_done is not None
            with anyio.move_on_after(self.timeout):
                await self._lifespan_done.wait()
        self._tasks.cancel_scope.cancel()
        return await self._tasks.__aexit__(exc_type, exc, tb)

    async def _start_lifespan(self) -> None:
        assert self._tasks is not None
        started, self._shutdown, self._lifespan_done = anyio.Event(), anyio.Event(), anyio.Event()
        outcome: list[Message] = []

        async def receive() -> Message:
            if not outcome:
                return {"type": "lifespan.startup"}
            assert self._shutdown is not None
            await self._shutdown.wait()
            return {"type": "lifespan.shutdown"}

        async def send(message: Message) -> None:
            self._lifespan_messages.append(message)
            if message["type"].startswith("lifespan.startup"):
                outcome.append(message)
                started.set()

        async def run() -> None:
            try:
                await self.app({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
            except Exception:
                if not outcome:  # an app without lifespan support may raise on the scope
                    outcome.append({"type": "lifespan.unsupported"})
                else:
                    raise
            finally:
                if not outcome:
                    outcome.append({"type": "lifespan.unsupported"})
                started.set()
                assert self._lifespan_done is not None
                self._lifespan_done.set()

        self._tasks.start_soon(run)
        with anyio.fail_after(self.timeout):
            await started.wait()
        if outcome[0]["type"] == "lifespan.startup.failed":
            raise RuntimeError(f"the app's lifespan startup failed: {outcome[0].get('message')}")

    def _scope(self, method: str, path: str, headers: Headers) -> Scope:
        url = urlsplit(path)
        merged = {**self.headers, **(headers or {})}
        return {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": url.path or "/",
            "raw_path": (url.path or "/").encode(),
            "query_string": url.query.encode(),
            "root_path": "",
            "headers": [(k.lower().encode(), v.encode()) for k, v in merged.items()],
            "client": ("127.0.0.1", 50000),
            "server": ("testserver", 80),
        }

    @asynccontextmanager
    async def stream(
        self, path: str, *, headers: Headers = None, last_event_id: str | None = None
    ) -> AsyncIterator[TestStream]:
        """Open ``GET path`` as an event stream; disconnect it on leaving."""
        assert self._tasks is not None, "use SseTestClient in `async with`"
        extra = dict(headers or {})
        extra.setdefault("accept", "text/event-stream")
        if last_event_id is not None:
            extra["last-event-id"] = last_event_id
        scope = self._scope("GET", path, extra)
        started = anyio.Event()
        finished = anyio.Event()
        disconnect = anyio.Event()
        state: dict[str, Any] = {}
        body_sent = False

        async def receive() -> Message:
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await disconnect.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = {
                    bytes(k).decode("latin-1"): bytes(v).decode("latin-1")
                    for k, v in message.get("headers", [])
                }
                state["stream"] = TestStream(message["status"], headers, self.timeout)
                started.set()
            elif message["type"] == "http.response.body":
                stream: TestStream = state["stream"]
                stream._feed(bytes(message.get("body", b"")))
                if not message.get("more_body", False):
                    stream._end()

        async def run() -> None:
            try:
                await self.app(scope, receive, send)
            except Exception as exc:
                state["error"] = exc
            finally:
                if "stream" in state:
                    state["stream"]._end()
                started.set()
                finished.set()

        self._tasks.start_soon(run)
        with anyio.fail_after(self.timeout):
            await started.wait()
        if "stream" not in state:
            error = state.get("error")
            raise RuntimeError(f"the app answered {path} with no response: {error!r}") from error
        try:
            yield state["stream"]
        finally:
            disconnect.set()
            with anyio.move_on_after(self.timeout, shield=True):
                await finished.wait()

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        body: bytes = b"",
        headers: Headers = None,
    ) -> Response:
        """An ordinary request, read to its end (within ``timeout``)."""
        extra = dict(headers or {})
        if json is not None:
            body = jsonlib.dumps(json).encode()
            extra.setdefault("content-type", "application/json")
        extra.setdefault("content-length", str(len(body)))
        scope = self._scope(method.upper(), path, extra)
        sent = False
        status = 0
        response_headers: dict[str, str] = {}
        chunks: list[bytes] = []
        done = anyio.Event()

        async def receive() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await done.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                response_headers.update(
                    (bytes(k).decode("latin-1"), bytes(v).decode("latin-1"))
                    for k, v in message.get("headers", [])
                )
            elif message["type"] == "http.response.body":
                chunks.append(bytes(message.get("body", b"")))
                if not message.get("more_body", False):
                    done.set()

        try:
            with anyio.fail_after(self.timeout):
                await self.app(scope, receive, send)
        finally:
            done.set()
        return Response(status, response_headers, b"".join(chunks))
