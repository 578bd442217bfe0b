"""``Broadcaster``: domain events in, one encoded frame out to every live connection."""

from __future__ import annotations

import itertools
import logging
import random
import time
from collections.abc import AsyncIterator, Collection, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from types import TracebackType
from typing import Literal

import anyio
import anyio.abc
from typing_extensions import Self

from ._bus import delivery_id
from ._connection import AlreadySent, SseConnection
from ._encoder import StandardFrameEncoder
from ._event import JsonDumps, ServerSentEvent, compact_json
from ._exceptions import ClosedError, ConfigurationError
from ._frame import Frame
from ._history import InMemoryHistory
from ._ids import SequentialIdGenerator
from ._mapping import EventMap
from ._metrics import Metrics, MetricsHook, MetricsSnapshot
from ._protocols import (
    EventHistory,
    EventIdGenerator,
    FrameEncoder,
    IEventBus,
    ISseClientRegistry,
    ReplayableEventBus,
    Unsubscribe,
)
from ._registry import InMemoryClientRegistry
from ._subscription import EVERYTHING, Subscription, topic_set
from ._types import Receive
from ._watch import DisconnectWatch

__all__ = ["Broadcaster"]

logger = logging.getLogger("ssebus")

HeartbeatStyle = Literal["comment", "event"]


def _position(bus: ReplayableEventBus, event_id: str) -> tuple[int, ...] | None:
    """``bus.position(event_id)``; a bus that fails on an id it does not know says None."""
    try:
        return bus.position(event_id)
    except Exception:
        logger.warning("%r.position(%r) failed; taken as not a log entry", bus, event_id)
        return None


class Broadcaster:
    """Subscribes to ``bus``, turns each mapped domain event into one frame, and queues the
    same bytes on every connection. Use it as an async context manager: it owns the
    heartbeat task, and on exit closes every connection and leaves no task behind.

    * ``events`` says which domain events are broadcast, under which name and payload.
    * ``history`` keeps recent frames for resume (default: the last 1,000 in memory).
    * ``heartbeat`` is the ping interval in seconds (None: off). The default ``"comment"``
      style sends ``: ping``, which every client ignores and which never touches the last
      event id; ``"event"`` sends ``event: ping`` carrying the id of the newest event, as
      the original design does, so resuming after it still replays from the right place.
    * ``max_queue`` frames may wait per connection; a client further behind is evicted and
      resumes from history when it reconnects. ``write_timeout`` bounds one write.
    * On shutdown each connection gets a final ``retry:`` drawn from ``reconnect_jitter``
      (milliseconds, low and high) so clients do not all come back at once.
    """

    def __init__(
        self,
        bus: IEventBus,
        events: EventMap,
        *,
        registry: ISseClientRegistry | None = None,
        encoder: FrameEncoder | None = None,
        ids: EventIdGenerator | None = None,
        history: EventHistory | None = None,
        dumps: JsonDumps = compact_json,
        heartbeat: float | None = 15.0,
        heartbeat_style: HeartbeatStyle = "comment",
        max_queue: int = 1024,
        write_timeout: float | None = 10.0,
        shutdown_timeout: float = 5.0,
        reconnect_jitter: tuple[int, int] = (1000, 5000),
        metrics_hook: MetricsHook | None = None,
    ) -> None:
        if heartbeat is not None and not heartbeat > 0:
            raise ConfigurationError("heartbeat", heartbeat, "must be > 0 seconds, or None")
        if heartbeat_style not in ("comment", "event"):
            raise ConfigurationError("heartbeat_style", heartbeat_style, "is comment or event")
        if isinstance(max_queue, bool) or not isinstance(max_queue, int) or max_queue < 1:
            raise ConfigurationError("max_queue", max_queue, "must be an int >= 1")
        if write_timeout is not None and not write_timeout > 0:
            raise ConfigurationError("write_timeout", write_timeout, "must be > 0, or None")
        low, high = reconnect_jitter
        if not 0 <= low <= high:
            raise ConfigurationError("reconnect_jitter", reconnect_jitter, "needs 0 <= low <= high")
        self.bus = bus
        self.events = events
        # "is not None": an empty registry is falsy (it has a length).
        self.registry: ISseClientRegistry = (
            registry if registry is not None else InMemoryClientRegistry()
        )
        self.encoder: FrameEncoder = encoder if encoder is not None else StandardFrameEncoder()
        self.ids: EventIdGenerator = ids if ids is not None else SequentialIdGenerator()
        self.history: EventHistory = history if history is not None else InMemoryHistory()
        self.dumps = dumps
        self.heartbeat = heartbeat
        self.heartbeat_style = heartbeat_style
        self.max_queue = max_queue
        self.write_timeout = write_timeout
        self.shutdown_timeout = shutdown_timeout
        self.reconnect_jitter = reconnect_jitter
        self._metrics = Metrics(metrics_hook)
        self._connection_ids = itertools.count(1)
        self._last_id: str | None = None
        self._state: Literal["new", "running", "closing", "closed"] = "new"
        self._stack = AsyncExitStack()
        self._unsubscribe: Unsubscribe | None = None
        self._drained = anyio.Event()
        self._heartbeat_scope: anyio.CancelScope | None = None
        self._tasks: anyio.abc.TaskGroup | None = None
        self._watch: DisconnectWatch | None = None
        self._expired_frame: bytes | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._state != "new":
            raise ClosedError("a Broadcaster can be started once")
        tasks = await self._stack.enter_async_context(anyio.create_task_group())
        self._tasks = tasks
        self._watch = DisconnectWatch(tasks)
        self._stack.push_async_callback(self._watch.aclose)
        # The origin anchors resume: a client that connected before any event can still
        # replay from it, and a reset always has an id to move the client to.
        if isinstance(self.bus, ReplayableEventBus):
            origin = self.bus.latest_id()
        else:
            origin = self.ids.next_id()
        self.history.append(Frame(origin, None, b""))
        self._last_id = origin
        self._unsubscribe = self.bus.subscribe(object, self.handle)
        self._state = "running"
        if self.heartbeat is not None:
            tasks.start_soon(self._heartbeat_loop, self.heartbeat)
        if self.write_timeout is not None:
            tasks.start_soon(self._write_watchdog, self.write_timeout)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
        if self._tasks is not None:
            self._tasks.cancel_scope.cancel()
        await self._stack.aclose()
        self._state = "closed"

    async def aclose(self) -> None:
        """Stop taking events, say goodbye to every connection and wait for them to end.

        Each stream gets the frames already queued and then a final jittered ``retry:``;
        connections still open after ``shutdown_timeout`` seconds are aborted. Safe to call
        from any task (e.g. a signal watcher), and more than once.
        """
        if self._state != "running":
            return
        self._state = "closing"
        if self._unsubscribe is not None:
            self._unsubscribe()
        if self._heartbeat_scope is not None:
            self._heartbeat_scope.cancel()
        with anyio.CancelScope(shield=True):
            for connection in self.registry.snapshot():
                connection.close("server shutting down", final=self.goodbye())
            if len(self.registry):
                with anyio.move_on_after(self.shutdown_timeout):
                    await self._drained.wait()
            for connection in self.registry.snapshot():
                connection.abort("server shut down before the stream ended")
                self.registry.remove(connection.id)

    # -- publishing ------------------------------------------------------------------------

    async def handle(self, event: object) -> None:
        """The bus handler: broadcast ``event`` if the event map has a route for it."""
        self.publish(event)

    def publish(self, event: object) -> Frame | None:
        """Broadcast a domain event now; return its frame, or None if it was not sent.

        An unmapped event is skipped (logged at debug level). A payload function that
        raises, or a payload that cannot be encoded, is logged with the event type and
        drops only this event. The id is the bus's (:func:`ssebus.delivery_id`) when it
        assigned one, else the next from ``ids``.
        """
        if self._state != "running":
            raise ClosedError("the broadcaster is not running; use 'async with Broadcaster(...)'")
        frame = self.render(event, delivery_id())
        if frame is not None:
            self._fan_out(frame)
        return frame

    def render(self, event: object, event_id: str | None = None) -> Frame | None:
        """The frame ``event`` is broadcast as, or None when it is unmapped or cannot be built."""
        route = self.events.route(event)
        if route is None:
            logger.debug("no SSE route for %s; not broadcast", type(event).__name__)
            return None
        try:
            payload = route.payload(event)
            tenant, topics = route.audience(event, payload)
            message = ServerSentEvent.json(
                payload, event=route.name, id=event_id or self.ids.next_id(), dumps=self.dumps
            )
            data = self.encoder.encode(message)
        except Exception:
            self._metrics.events_dropped += 1
            self._metrics.emit("events_dropped", 1)
            logger.exception(
                "dropped %s: cannot build its %r event", type(event).__name__, route.name
            )
            return None
        allow = route.allow
        return Frame(
            message.id,
            route.name,
            data,
            tenant,
            topics,
            None if allow is None else lambda subscription: allow(event, subscription),
        )

    def broadcast(
        self,
        message: ServerSentEvent,
        *,
        tenant: str | None = None,
        topics: Collection[str] = frozenset(),
    ) -> Frame:
        """Broadcast a ready-made event (given an id if it has none), bypassing the map,
        to the connections ``tenant`` and ``topics`` select (default: everyone)."""
        if self._state != "running":
            raise ClosedError("the broadcaster is not running; use 'async with Broadcaster(...)'")
        if message.id is None:
            message = ServerSentEvent(
                data=message.data,
                event=message.event,
                id=self.ids.next_id(),
                retry=message.retry,
                comment=message.comment,
            )
        if tenant is not None and not isinstance(tenant, str):
            raise ConfigurationError("tenant", tenant, "must be a str or None")
        frame = Frame(
            message.id,
            message.event,
            self.encoder.encode(message),
            tenant,
            topic_set("topics", topics),
        )
        self._fan_out(frame)
        return frame

    def _fan_out(self, frame: Frame) -> None:
        started = time.perf_counter()
        if frame.id is not None:
            self.history.append(frame)
            self._last_id = frame.id
        targets = self.registry.select(frame.tenant, frame.topics)
        if frame.allow is None:
            for connection in targets:
                if not connection.offer(frame):
                    self._evict(connection)
        else:
            self._offer_allowed(frame, targets)
        self._metrics.events_published += 1
        self._metrics.emit("events_published", 1)
        self._metrics.observe_broadcast(time.perf_counter() - started)

    def _offer_allowed(self, frame: Frame, targets: Sequence[SseConnection]) -> None:
        """Offer ``frame`` to the ``targets`` its ``allow`` admits; an error means "no"."""
        allow = frame.allow
        assert allow is not None
        failed: list[str] = []
        for connection in targets:
            try:
                admitted = allow(connection.subscription) is True
            except Exception:
                if not failed:
                    logger.exception(
                        "allow predicate of %r (id %s) failed for connection %s; not delivered",
                        frame.event,
                        frame.id,
                        connection.id,
                    )
                failed.append(connection.id)
                continue
            if admitted and not connection.offer(frame):
                self._evict(connection)
        if failed:
            self._predicate_failed(frame, failed)

    def _predicate_failed(self, frame: Frame, connection_ids: Sequence[str]) -> None:
        self._metrics.predicate_errors += len(connection_ids)
        self._metrics.emit("predicate_errors", len(connection_ids))
        if len(connection_ids) > 1:
            logger.error(
                "allow predicate of %r (id %s) failed for %d connections; not delivered to them",
                frame.event,
                frame.id,
                len(connection_ids),
            )

    def _evict(self, connection: SseConnection) -> None:
        connection.abort(f"evicted: more than {self.max_queue} frames queued")
        self.registry.remove(connection.id)
        self._metrics.evictions += 1
        self._metrics.emit("evictions", 1)
        logger.warning("connection %s evicted: client too slow", connection.id)

    async def _heartbeat_loop(self, interval: float) -> None:
        comment = Frame(None, None, self.encoder.encode(ServerSentEvent(comment="ping")))
        with anyio.CancelScope() as self._heartbeat_scope:
            while True:
                await anyio.sleep(interval)
                ping = comment
                if self.heartbeat_style == "event":
                    event = ServerSentEvent(data="", event="ping", id=self._last_id)
                    ping = Frame(None, "ping", self.encoder.encode(event))
                for connection in self.registry.snapshot():
                    # A resumed client may be ahead of this instance's newest id: an id
                    # ping would move it back.
                    frame = comment if connection.catching_up else ping
                    if not connection.offer(frame):
                        self._evict(connection)

    async def _write_watchdog(self, limit: float) -> None:
        """Abort connections whose write has taken longer than ``limit`` seconds.

        One sweep every ``limit / 4`` (at most 1 s) instead of a timer per write: a
        write costs two clock reads, and a stuck client goes within 1.25 x ``limit``.
        """
        interval = min(limit / 4, 1.0)
        while True:
            await anyio.sleep(interval)
            now = time.monotonic()
            for connection in self.registry.snapshot():
                connection.check_write(now)

    # -- connections -----------------------------------------------------------------------

    @asynccontextmanager
    async def connect(
        self,
        *,
        last_event_id: str | None = None,
        retry: int | None = None,
        connection_id: str | None = None,
        subscription: Subscription | None = None,
        watch: Receive | None = None,
    ) -> AsyncIterator[SseConnection]:
        """Register a connection; on exit it is closed and removed.

        The stream starts with ``retry:`` (if given), then, when ``last_event_id`` is
        given, every frame after it from history - or, when history does not cover it, a
        ``reset`` event (data ``{"lastEventId": ..., "reason": "not-in-history"}``) telling
        the client to reload its state - then live frames, with no gap and no duplicate.
        ``subscription`` (default: every event without a tenant) filters both, and its
        ``expires_at`` ends the stream with a ``credentials-expired`` event. ``watch``, an
        ASGI ``receive``, is read until the client disconnects, which aborts the
        connection, so a request needs no task group of its own (see ``DisconnectWatch``).
        """
        if self._state != "running":
            raise ClosedError("the broadcaster is not running; no new connections")
        subscription = subscription or EVERYTHING
        connection = SseConnection(
            connection_id or f"conn-{next(self._connection_ids)}",
            max_queue=self.max_queue,
            write_timeout=self.write_timeout,
            metrics=self._metrics,
            subscription=subscription,
            expired=self._expired() if subscription.expires_at is not None else b"",
        )
        try:
            self.registry.add(connection)
        except BaseException:
            connection.dispose()
            raise
        anchor = self._last_id
        stop_watching = None
        if watch is not None and self._watch is not None:
            stop_watching = self._watch.start(connection, watch)
        self._metrics.connections_opened += 1
        self._metrics.emit("connections_opened", 1)
        try:
            prelude: list[bytes] = []
            if retry is not None:
                prelude.append(self.encoder.encode(ServerSentEvent(retry=retry)))
            already_sent = None
            if last_event_id:
                missed: Sequence[Frame] | None = []
                with anyio.CancelScope() as lookup:
                    connection.guard(lookup)
                    missed = await self._missed(last_event_id)
                connection.guard(None)
                if missed is None:
                    prelude.append(self._reset(last_event_id, anchor))
                else:
                    prelude.extend(frame.data for frame in self._visible(connection, missed))
                    already_sent = self._already_sent(last_event_id, missed)
            connection.release(b"".join(prelude), len(prelude) - (retry is not None), already_sent)
            if self._state != "running":
                connection.close("server shutting down", final=self.goodbye())
            logger.debug("connection %s opened (last event id %r)", connection.id, last_event_id)
            yield connection
        finally:
            if stop_watching is not None:
                stop_watching()
            connection.close("stream ended")
            connection.dispose()
            self.registry.remove(connection.id)
            self._metrics.emit("connections_closed", 1)
            reason = connection.close_reason or "stream ended"
            level = logging.WARNING if reason.startswith("write") else logging.INFO
            logger.log(level, "connection %s closed: %s", connection.id, reason)
            if self._closing() and not len(self.registry):
                self._drained.set()

    async def _missed(self, last_event_id: str) -> Sequence[Frame] | None:
        missed = await self.history.since(last_event_id)
        if missed is None and isinstance(self.bus, ReplayableEventBus):
            entries = await self.bus.replay(last_event_id)
            if entries is not None:
                rendered = (self.render(event, entry_id) for entry_id, event in entries)
                missed = [frame for frame in rendered if frame is not None]
        return missed

    def _visible(self, connection: SseConnection, frames: Sequence[Frame]) -> list[Frame]:
        """The replayed ``frames`` this connection's subscription admits."""
        subscription = connection.subscription
        visible: list[Frame] = []
        for frame in frames:
            try:
                if subscription.admits(frame):
                    visible.append(frame)
            except Exception:
                logger.exception(
                    "allow predicate of %r (id %s) failed for connection %s; not replayed",
                    frame.event,
                    frame.id,
                    connection.id,
                )
                self._predicate_failed(frame, [connection.id])
        return visible

    def _already_sent(self, last_event_id: str, missed: Sequence[Frame]) -> AlreadySent:
        """Whether a frame arriving live was part of the replay (or came before it).

        With a replayable bus this compares log positions: an instance whose reader is
        behind the client's id (or behind what ``replay`` just read from the log) will
        still deliver those entries live, and the client must not get them twice. A frame
        that is not a log entry (a ``broadcast``) is delivered and ends nothing.
        """
        replayed = {frame.id for frame in missed}
        bus = self.bus
        if not isinstance(bus, ReplayableEventBus):
            return lambda frame: frame.id in replayed
        newest = missed[-1].id if missed and missed[-1].id is not None else last_event_id
        floor = _position(bus, newest)
        if floor is None:
            return lambda frame: frame.id in replayed

        def already_sent(frame: Frame) -> bool | None:
            if frame.id in replayed:
                return True
            position = _position(bus, frame.id) if frame.id is not None else None
            return None if position is None else position <= floor

        return already_sent

    def _closing(self) -> bool:
        return self._state == "closing"

    def metrics(self) -> MetricsSnapshot:
        """The broadcaster's metrics now."""
        return self._metrics.snapshot(len(self.registry))

    @property
    def last_event_id(self) -> str | None:
        """The id of the newest frame broadcast (or of the origin, before any)."""
        return self._last_id

    def _reset(self, last_event_id: str, anchor: str | None) -> bytes:
        return self.encoder.encode(
            ServerSentEvent.json(
                {"lastEventId": last_event_id, "reason": "not-in-history"},
                event="reset",
                id=anchor or "",
            )
        )

    def _expired(self) -> bytes:
        """The last frame of a stream whose credentials expired, encoded on first use. It
        has no id, so the client resumes from where it was once it has new credentials."""
        if self._expired_frame is None:
            self._expired_frame = self.encoder.encode(
                ServerSentEvent.json({"reason": "credentials-expired"}, event="credentials-expired")
            )
        return self._expired_frame

    def goodbye(self) -> bytes:
        """The last frame of a stream at shutdown: a ``retry:`` drawn from ``reconnect_jitter``."""
        low, high = self.reconnect_jitter
        return self.encoder.encode(
            ServerSentEvent(comment="server shutting down", retry=random.randint(low, high))
        )
