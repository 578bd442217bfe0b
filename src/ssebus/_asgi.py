"""``SseEndpoint``: a plain ASGI app that streams a broadcaster to one client per request."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from functools import partial
from urllib.parse import parse_qs

import anyio

from ._connection import SseConnection
from ._exceptions import ClosedError, ConfigurationError, TooManyConnectionsError
from ._lazy import LazyStart, why_not
from ._protocols import SseBroadcaster
from ._sever import sever
from ._shutdown import SignalChain
from ._subscription import Subscription
from ._types import Message, Receive, Scope, Send
from ._workers import WorkerCheck

__all__ = ["Authorize", "Refusal", "SseEndpoint"]

logger = logging.getLogger("ssebus")

SSE_HEADERS: list[tuple[bytes, bytes]] = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-store"),
    (b"x-accel-buffering", b"no"),
]


@dataclass(frozen=True, slots=True)
class Refusal:
    """An authorization hook's "no": the HTTP status, a short reason for the body, and
    extra response headers (e.g. ``[("www-authenticate", 'Bearer realm="orders"')]``; a
    ``content-type`` given here replaces the default ``text/plain``)."""

    status: int = 403
    reason: str = "Forbidden"
    headers: Sequence[tuple[str, str]] = ()

    def __post_init__(self) -> None:
        if isinstance(self.status, bool) or not isinstance(self.status, int):
            raise ConfigurationError("status", self.status, "must be an int HTTP status")
        if not 400 <= self.status <= 599:
            raise ConfigurationError("status", self.status, "a refusal is a 4xx or 5xx status")
        object.__setattr__(self, "headers", tuple(self.headers))
        for header in self.headers:
            if (
                not isinstance(header, tuple)
                or len(header) != 2
                or not all(isinstance(part, str) for part in header)
            ):
                raise ConfigurationError("headers", header, "each header is a (name, value) of str")
            if header[0].lower() == "content-length":
                raise ConfigurationError("headers", header, "content-length is set from the reason")
            if any(c in part for part in header for c in "\r\n\0"):
                raise ConfigurationError("headers", header, "must not contain CR, LF or NUL")


#: Sees the request's ASGI scope; returns a ``Subscription`` (or None: every event without
#: a tenant) to accept it, or a ``Refusal``.
Authorize = Callable[[Scope], Awaitable[Subscription | Refusal | None]]


class SseEndpoint:
    """Serves ``broadcaster`` as ``text/event-stream``; mount it on any ASGI router.

    Each GET registers a connection that resumes from ``Last-Event-ID`` (the header, or the
    ``last_event_id_param`` query parameter for clients that cannot set headers), starts
    with ``retry:`` and then streams live frames until the client goes away, a write fails,
    or the broadcaster shuts down. HEAD answers the headers only; other methods get 405.
    Run as the top-level app it also handles ASGI lifespan, starting and closing the
    broadcaster with the server. Under a server that sends no lifespan (daphne) it starts
    the broadcaster at the first request and stops it on the server's stop signal (or
    :meth:`aclose`); see ``ssebus._lazy``.

    ``authorize(scope)`` decides before any stream starts: a ``Refusal`` answers with its
    status (401/403 ...), a ``Subscription`` says which events this client receives and
    until when. A hook that raises or returns anything else refuses with 500.
    """

    def __init__(
        self,
        broadcaster: SseBroadcaster,
        *,
        retry: int | None = 3000,
        authorize: Authorize | None = None,
        last_event_id_param: str | None = "lastEventId",
        shutdown_grace: float = 1.0,
        stop_on_signals: bool = True,
    ) -> None:
        if retry is not None and (
            isinstance(retry, bool) or not isinstance(retry, int) or retry < 0
        ):
            raise ConfigurationError("retry", retry, "must be a non-negative int of ms, or None")
        self.broadcaster = broadcaster
        self.retry = retry
        self.authorize = authorize
        self.last_event_id_param = last_event_id_param
        self.shutdown_grace = shutdown_grace
        self._said_not_running = False
        self._lifespan_seen = False
        self._lazy = LazyStart(broadcaster)
        #: On SIGINT/SIGTERM the broadcaster closes its streams, so the server's graceful
        #: shutdown, which waits for open responses, can finish (see ``_shutdown``).
        self._signals = SignalChain(self._close_soon) if stop_on_signals else None
        #: Worker processes each with an in-memory bus miss each other's events: say so.
        bus = getattr(broadcaster, "bus", None)
        in_process = getattr(bus, "crosses_processes", True) is False
        self._workers = WorkerCheck(bus=type(bus).__name__) if in_process else None
        self._check_workers_at_request = in_process

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if self._check_workers_at_request:
            self._check_workers()
        if scope["type"] == "websocket":
            await _refuse_websocket(scope, receive, send)
            return
        if scope["type"] != "http":
            logger.debug("ignored an ASGI %r scope: SseEndpoint serves HTTP", scope["type"])
            return
        method = scope["method"]
        if method not in ("GET", "HEAD"):
            await _respond(send, 405, "Method Not Allowed", [(b"allow", b"GET, HEAD")])
            return
        subscription: Subscription | None = None
        if self.authorize is not None:
            try:
                decision = await self.authorize(scope)
            except Exception as exc:  # one line, no traceback: any request could cause it
                logger.error("authorize hook failed (%r); refused the request with 500", exc)
                decision = Refusal(500, "Internal Server Error")
            if isinstance(decision, Refusal):
                headers = [(k.lower().encode(), v.encode()) for k, v in decision.headers]
                await _respond(send, decision.status, decision.reason, headers)
                return
            if decision is not None and not isinstance(decision, Subscription):
                logger.error(
                    "authorize hook returned %r, not a Subscription, Refusal or None; refusing",
                    decision,
                )
                await _respond(send, 500, "Internal Server Error")
                return
            subscription = decision
        if self._signals is not None:
            self._signals.ensure()
        if not self._lifespan_seen and self._lazy.wanted() and why_not(self._signals) is None:
            await self._lazy.start()
        if method == "HEAD":
            await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        try:
            connect = self.broadcaster.connect(
                last_event_id=self._last_event_id(scope),
                retry=self.retry,
                subscription=subscription,
                watch=receive,
                on_stall=partial(_sever_stalled, scope),
            )
            # Inline, not a coroutine of its own, and ``async with connect`` spelt out (it
            # would keep a bound ``__aexit__``): two objects fewer per open stream.
            connection = await connect.__aenter__()
            try:
                self._said_not_running = False
                await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
                try:
                    await connection.run(partial(_write_body, send))
                finally:
                    # Also when the server cancels us at shutdown: end the body properly.
                    # Not after an abort: the client is gone, or a stalled socket would
                    # hold the final write back for the whole grace period.
                    with anyio.move_on_after(self.shutdown_grace, shield=True):
                        await self._end(connection, send)
            except BaseException as exc:
                if not await connect.__aexit__(type(exc), exc, exc.__traceback__):
                    raise
            else:
                await connect.__aexit__(None, None, None)
        except ClosedError:
            self._not_running()
            await _respond(send, 503, "Service Unavailable", [(b"retry-after", b"5")])
        except TooManyConnectionsError as refused:
            await _refuse_connection(scope, send, refused)

    async def aclose(self) -> None:
        """Stop the broadcaster this endpoint started at a first request, if it did, and
        wait until every stream has had its goodbye."""
        await self._lazy.aclose()

    def _not_running(self) -> None:
        """Say once, until a stream is served again, why every request gets a 503."""
        if self._said_not_running:
            logger.debug("the broadcaster is not running; answered 503")
            return
        self._said_not_running = True
        if self._lazy.failure is not None:
            why = f"; starting it at the first request failed: {self._lazy.failure}"
        elif self._lifespan_seen or not self._lazy.wanted():
            why = ""
        else:
            why = f"; not started at the first request: {why_not(self._signals)}"
        logger.warning(
            "SseEndpoint answers 503: the Broadcaster is not running (not started, or "
            "stopped): wire its lifespan (see README), or run SseEndpoint as the top-level "
            "app%s",
            why,
        )

    @staticmethod
    async def _end(connection: SseConnection, send: Send) -> None:
        """End the response of a stream that is over (see ``__call__``)."""
        if not connection.aborted:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        elif connection.stalled:
            # Until the server has seen the reset (``_sever_stalled``): returning first
            # would leave it a response the app never finished, which it reports as an
            # error. Flags, not an Event: nothing more per stream.
            while connection.severed is None or (  # noqa: ASYNC110
                connection.severed and not connection.left
            ):
                await anyio.sleep(0.01)

    def _check_workers(self) -> None:
        """Once, at the first request: a server may bind its socket after lifespan startup."""
        self._check_workers_at_request = False
        if self._workers is not None:
            self._workers.check()

    def _close_soon(self, then: Callable[[], object]) -> None:
        if self._lazy.stop_soon(then):
            return
        close_soon = getattr(self.broadcaster, "close_soon", None)
        if close_soon is not None:
            close_soon(then)
        else:
            then()

    def _last_event_id(self, scope: Scope) -> str | None:
        for name, value in scope.get("headers", ()):
            if name == b"last-event-id":
                return bytes(value).decode("utf-8", errors="replace")
        if self.last_event_id_param and scope.get("query_string"):
            query = parse_qs(bytes(scope["query_string"]).decode("latin-1"))
            values = query.get(self.last_event_id_param)
            if values:
                return values[-1]
        return None

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        self._lifespan_seen = True  # the server starts the broadcaster: no lazy start
        manager = self.broadcaster
        if not isinstance(manager, AbstractAsyncContextManager):
            await _lifespan_passthrough(receive, send)
            return
        message = await receive()
        assert message["type"] == "lifespan.startup"
        try:
            await manager.__aenter__()
        except Exception as exc:
            await send({"type": "lifespan.startup.failed", "message": repr(exc)})
            return
        if self._workers is not None:
            self._check_workers_at_request = not self._workers.check()
        await send({"type": "lifespan.startup.complete"})
        if self._signals is not None:
            self._signals.ensure()
        message = await receive()
        if self._signals is not None:
            self._signals.restore()
        await manager.__aexit__(None, None, None)
        if self._workers is not None:
            self._workers.close()
        await send({"type": "lifespan.shutdown.complete"})


def _write_body(send: Send, data: bytes) -> Awaitable[None]:
    """A stream's write (``partial(_write_body, send)``: one object per stream, where a
    closure is three). Not a coroutine of its own: one object fewer per write."""
    return send({"type": "http.response.body", "body": data, "more_body": True})


async def _sever_stalled(scope: Scope, connection: SseConnection) -> None:
    """Reset the socket of a stream cut while its client does not read, so the server
    neither waits to flush it nor holds its buffers (see ``ssebus._sever``)."""
    connection.severed = await sever(scope)


async def _lifespan_passthrough(receive: Receive, send: Send) -> None:
    while True:
        message: Message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


#: What a refused websocket upgrade is told, where the server lets the app answer in HTTP.
WEBSOCKET_REFUSAL = b"SseEndpoint serves Server-Sent Events over HTTP, not websockets"


async def _refuse_websocket(scope: Scope, receive: Receive, send: Send) -> None:
    """Refuse a websocket before accepting it: a 403 where the server lets the app answer
    in HTTP (the ``websocket.http.response`` extension), else a close with 1008 (policy
    violation), which servers answer the handshake with as a 403."""
    message = await receive()
    if message["type"] != "websocket.connect":
        return  # gone already
    logger.debug("refused a websocket to %r: SseEndpoint serves HTTP only", scope.get("path"))
    try:
        if "websocket.http.response" in (scope.get("extensions") or {}):
            await send(
                {
                    "type": "websocket.http.response.start",
                    "status": 403,
                    "headers": [
                        (b"content-type", b"text/plain; charset=utf-8"),
                        (b"content-length", str(len(WEBSOCKET_REFUSAL)).encode()),
                    ],
                }
            )
            await send({"type": "websocket.http.response.body", "body": WEBSOCKET_REFUSAL})
        else:
            await send({"type": "websocket.close", "code": 1008, "reason": ""})
    except OSError:
        pass  # the client went away meanwhile


async def _refuse_connection(scope: Scope, send: Send, refused: TooManyConnectionsError) -> None:
    """Answer a connection past a limit: 503, the jittered ``Retry-After``, and (HTTP/1) a
    ``connection: close`` so the server frees the socket at once."""
    headers = [(b"retry-after", str(refused.retry_after).encode())]
    if scope.get("http_version", "1.1") in ("1.0", "1.1"):
        headers.append((b"connection", b"close"))
    text = (
        f"Service Unavailable: too many connections ({refused.setting}={refused.limit:,}); "
        f"retry after {refused.retry_after} s\n"
    )
    await _respond(send, 503, text, headers)


async def _respond(
    send: Send, status: int, text: str, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = text.encode()
    extra = headers or []
    content_type = (
        []
        if any(name == b"content-type" for name, _ in extra)
        else [(b"content-type", b"text/plain; charset=utf-8")]
    )
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                *content_type,
                (b"content-length", str(len(body)).encode()),
                *extra,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
