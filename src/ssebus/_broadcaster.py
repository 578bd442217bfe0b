"""``Broadcaster``: domain events in, one encoded frame out to every live connection."""

from __future__ import annotations

import itertools
import logging
import os
import random
import time
from collections.abc import Callable, Collection, Coroutine, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from types import TracebackType
from typing import Any, Literal

import anyio
import anyio.abc
from typing_extensions import Self

from ._admission import Admission, MaxConnections
from ._bus import BusGap, delivery_position
from ._connection import SseConnection
from ._encoder import StandardFrameEncoder
from ._event import JsonDumps, ServerSentEvent, compact_json
from ._exceptions import ClosedError, ConfigurationError, InvalidArgumentError
from ._frame import Frame
from ._history import InMemoryHistory
from ._mapping import EventMap
from ._metrics import Metric, Metrics, MetricsHook, MetricsSnapshot
from ._outbox import OutboxFull
from ._pace import current as current_share
from ._position import PositionCodec
from ._protocols import (
    EventHistory,
    FrameEncoder,
    IEventBus,
    ISseClientRegistry,
    ReplayableEventBus,
    Unsubscribe,
)
from ._registry import InMemoryClientRegistry
from ._resume import Replay
from ._seam import Background, soon_from_anywhere
from ._subscription import EVERYTHING, Subscription, topic_set
from ._types import Receive
from ._watch import OnStall, StreamWatch

__all__ = ["Broadcaster"]

logger = logging.getLogger("ssebus")

#: Turns of the event loop a busy stream lets pass between writes with
#: ``write_delay="auto"``: under a loop saturated by one event per turn, a write carries
#: about this many frames (the issue's target was at most 0.25 writes per frame).
AUTO_WRITE_TURNS = 4
#: Why streams end at shutdown: those that took their goodbye, and those cut after
#: ``shutdown_timeout``.
SHUTTING_DOWN = "server shutting down"
CUT_AT_SHUTDOWN = "server shut down before the stream ended"

HeartbeatStyle = Literal["comment", "event"]


def _positive_int(setting: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(setting, value, "must be an int >= 1")


class Broadcaster:
    """Subscribes to ``bus``, turns each mapped domain event into one frame, and queues the
    same bytes on every connection. Use it as an async context manager: it owns the
    heartbeat task, and on exit closes every connection and leaves no task behind.

    * ``events`` says which domain events are broadcast, under which name and payload.
    * Every frame gets a position in one order (this broadcaster's, or the bus's when it is
      a :class:`ReplayableEventBus`), carried by an opaque id that reveals no counts and
      means nothing to another tenant. ``history`` keeps recent frames per tenant for
      resume (default: the last 1,000 per tenant in memory); a replayable bus is asked for
      what it no longer holds. A replay goes in pages of ``replay_page`` frames, at most
      ``replay_concurrency`` pages being built at once, and at most ``max_replay`` frames
      (beyond: a ``reset``). Replay work runs below everything else in the loop: all the
      replays share one slice of about 0.1 ms at a time, with a loop turn for other work
      after each.
    * ``heartbeat`` is the ping interval in seconds (None: off): ``: ping`` by default,
      ``event: ping`` (no id, so it never moves the client's position) with ``"event"``.
    * ``max_queue`` frames and ``max_queue_bytes`` bytes may wait per connection, written
      at most ``max_write_bytes`` at a time (so the server's flow control applies); a client
      further behind is evicted and resumes when it reconnects. ``write_timeout`` bounds
      one write. ``write_delay`` (off by default) makes a busy stream wait after a write,
      so frames published meanwhile share the next: seconds, or ``"auto"``: at most one
      write per window of four turns of the event loop, every busy stream writing in the
      window's first turn.
    * On shutdown each connection gets a final ``retry:`` drawn from ``reconnect_jitter``
      (milliseconds, low and high) so clients do not all come back at once.
    * ``max_connections`` (default ``"auto"``: the open-files limit less a tenth, at least
      64, for the rest of the app; None: no limit) and ``max_connections_per_key`` (per
      ``Subscription.key``, else tenant) bound the streams: ``connect`` beyond raises
      ``TooManyConnectionsError``.
    """

    def __init__(
        self,
        bus: IEventBus,
        events: EventMap,
        *,
        registry: ISseClientRegistry | None = None,
        encoder: FrameEncoder | None = None,
        history: EventHistory | None = None,
        dumps: JsonDumps = compact_json,
        heartbeat: float | None = 15.0,
        heartbeat_style: HeartbeatStyle = "comment",
        max_queue: int = 1024,
        max_queue_bytes: int = 4 << 20,
        max_write_bytes: int = 64 << 10,
        write_delay: float | Literal["auto"] = 0.0,
        write_timeout: float | None = 10.0,
        shutdown_timeout: float = 5.0,
        reconnect_jitter: tuple[int, int] = (1000, 5000),
        max_replay: int = 10_000,
        replay_page: int = 100,
        replay_concurrency: int = 2,
        metrics_hook: MetricsHook | None = None,
        max_connections: MaxConnections = "auto",
        max_connections_per_key: int | None = None,
    ) -> None:
        if heartbeat is not None and not heartbeat > 0:
            raise ConfigurationError("heartbeat", heartbeat, "must be > 0 seconds, or None")
        if heartbeat_style not in ("comment", "event"):
            raise ConfigurationError("heartbeat_style", heartbeat_style, "is comment or event")
        for setting, value in (
            ("max_queue", max_queue),
            ("max_queue_bytes", max_queue_bytes),
            ("max_write_bytes", max_write_bytes),
            ("max_replay", max_replay),
            ("replay_page", replay_page),
            ("replay_concurrency", replay_concurrency),
        ):
            _positive_int(setting, value)
        if write_delay != "auto" and (
            isinstance(write_delay, bool)
            or not isinstance(write_delay, (int, float))
            or not 0 <= write_delay <= 1
        ):
            raise ConfigurationError(
                "write_delay", write_delay, 'must be 0 to 1 seconds, or "auto"'
            )
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
        self.history: EventHistory = history if history is not None else InMemoryHistory()
        self.dumps = dumps
        self.heartbeat = heartbeat
        self.heartbeat_style = heartbeat_style
        self.max_queue = max_queue
        self.max_queue_bytes = max_queue_bytes
        self.max_write_bytes = max_write_bytes
        #: Seconds a busy stream waits after one write before the next, so that what is
        #: published meanwhile goes out in one write (0: every wake-up writes at once), or
        #: ``"auto"``: it lets ``AUTO_WRITE_TURNS`` turns of the event loop pass instead.
        self.write_delay: float | Literal["auto"] = (
            "auto" if write_delay == "auto" else float(write_delay)
        )
        self.write_timeout = write_timeout
        self.shutdown_timeout = shutdown_timeout
        self.reconnect_jitter = reconnect_jitter
        self._metrics = Metrics(metrics_hook)
        self._admission = Admission(
            max_connections,
            max_connections_per_key,
            reconnect_jitter=reconnect_jitter,
            metrics=self._metrics,
        )
        self._replay = Replay(
            self._page,
            page=replay_page,
            max_replay=max_replay,
            concurrency=replay_concurrency,
            metrics=self._metrics,
            marker=self._marker,
            reset=self._reset,
            newest=lambda: self._latest,
            decode=self._decode,
            token=self._token,
        )
        self._positioned = isinstance(bus, ReplayableEventBus)
        self._codec: PositionCodec | None = None
        self._latest = 0
        self._connection_ids = itertools.count(1)
        self._state: Literal["new", "starting", "running", "closing", "closed"] = "new"
        self._stack = AsyncExitStack()
        self._unsubscribe: list[Unsubscribe] = []
        self._drained = anyio.Event()
        self._heartbeat_scope: anyio.CancelScope | None = None
        self._background: Background | None = None
        self._expired_frame: bytes | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        """Start a run: a first one, or a new one after a clean stop (a second
        ``TestClient(app)``, a restart in process). Of an earlier run only the settings,
        the metrics and the connection numbering are kept; its history is forgotten."""
        if self._state in ("starting", "running", "closing"):
            raise ClosedError(
                f"the Broadcaster is already {self._state}: leave its 'async with' "
                "(or its lifespan) before starting it again"
            )
        stopped = self._state
        self._state = "starting"
        self._stack = AsyncExitStack()
        self._unsubscribe = []
        self._drained = anyio.Event()
        self._heartbeat_scope = None
        self._background = None
        self._codec = None
        self._latest = 0
        self._replay.limiter = anyio.CapacityLimiter(self._replay.limiter.total_tokens)
        self._replay.new_run()
        try:
            tasks = await self._stack.enter_async_context(anyio.create_task_group())
            self._stack.callback(tasks.cancel_scope.cancel)
            return await self._start(tasks)
        except BaseException:
            for unsubscribe in self._unsubscribe:
                unsubscribe()
            self._state = stopped
            await self._stack.aclose()
            raise

    async def _start(self, tasks: anyio.abc.TaskGroup) -> Self:
        self._background = Background(tasks)
        self._stack.push_async_callback(self._background.aclose)
        #: Runs a callback on this broadcaster's loop, from a stream on any other.
        self._at_home = soon_from_anywhere()
        bus = self.bus
        if isinstance(bus, ReplayableEventBus):
            self._codec = PositionCodec(bus.position_secret())
            self._latest = bus.latest_position()
            bus.partition_by(self._partition_of)
        else:
            self._codec = PositionCodec(os.urandom(32))
        start = getattr(self.history, "start", None)
        if start is not None:
            start(self._latest)
        self._unsubscribe.append(bus.subscribe(object, self.handle))
        on_gap = getattr(bus, "on_gap", None)
        if on_gap is not None:
            self._unsubscribe.append(on_gap(self._on_gap))
        self._state = "running"
        if self.heartbeat is not None:
            tasks.start_soon(self._heartbeat_loop, self.heartbeat)
        if self.write_timeout is not None:
            tasks.start_soon(self._write_watchdog, self.write_timeout)
        self._close_requested = anyio.Event()
        self._then_closed: Callable[[], object] | None = None
        tasks.start_soon(self._close_when_asked, self._close_requested)
        self._tasks = tasks
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
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
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        if self._heartbeat_scope is not None:
            self._heartbeat_scope.cancel()
        with anyio.CancelScope(shield=True):
            streams = self.registry.snapshot()
            for connection in streams:
                connection.close(SHUTTING_DOWN, final=self.goodbye())
            if len(self.registry):
                with anyio.move_on_after(self.shutdown_timeout):
                    await self._drained.wait()
            stalled = self.registry.snapshot()
            for connection in stalled:
                connection.abort(CUT_AT_SHUTDOWN, stalled=True)
                self.registry.remove(connection.id)
            if streams:
                # One line for all: a line per stream would be a thousand at every deploy.
                logger.info(
                    "closed %d streams for shutdown%s",
                    len(streams),
                    f"; {len(stalled)} did not take their goodbye within "
                    f"{self.shutdown_timeout} s and were cut"
                    if stalled
                    else "",
                )

    def close_soon(self, then: Callable[[], object] | None = None) -> None:
        """Begin :meth:`aclose` soon, and call ``then()`` once it is done; for a plain
        callback on the event loop (a signal handler's) that can neither await nor start a
        task."""
        if self._state == "running":
            self._then_closed = then
            self._close_requested.set()
        elif then is not None:
            then()

    async def _close_when_asked(self, asked: anyio.Event) -> None:
        await asked.wait()
        await self.aclose()
        then, self._then_closed = self._then_closed, None
        if then is not None:
            then()

    # -- publishing ------------------------------------------------------------------------

    async def handle(self, event: object) -> None:
        """The bus handler: broadcast ``event`` if the event map has a route for it."""
        self.publish(event)

    def publish(self, event: object) -> Frame | None:
        """Broadcast a domain event now; return its frame, or None if it was not sent.

        An unmapped event is skipped (logged at debug level). A payload function that
        raises, or a payload that cannot be encoded, is logged with the event type and
        drops only this event. Its position is the bus's (:func:`ssebus.delivery_position`)
        inside a handler of a replayable bus, the next of this broadcaster's own otherwise
        (or, on a replayable bus, none: the frame is live only and never replayed).
        """
        if self._state != "running":
            raise ClosedError("the broadcaster is not running; use 'async with Broadcaster(...)'")
        tick: int | None
        if self._positioned:
            tick = delivery_position()
            if tick is not None and tick > self._latest:
                self._latest = tick  # unmapped events move the position too
        else:
            tick = self._latest + 1
        frame = self.render(event, tick)
        if frame is not None:
            if frame.tick is not None and frame.tick > self._latest:
                self._latest = frame.tick
            self._fan_out(frame)
        return frame

    def render(self, event: object, tick: int | None = None) -> Frame | None:
        """The frame ``event`` is broadcast as at position ``tick`` (None: ephemeral), or
        None when it is unmapped or cannot be built."""
        route = self.events.route(event)
        if route is None:
            logger.debug("no SSE route for %s; not broadcast", type(event).__name__)
            return None
        try:
            payload = route.payload(event)
            tenant, topics = route.audience(event, payload)
            message = ServerSentEvent.json(
                payload,
                event=route.name,
                id=None if tick is None else self._token(tenant, tick),
                dumps=self.dumps,
            )
            data = self.encoder.encode(message)
        except Exception as exc:
            self._metrics.add(Metric.EVENTS_DROPPED)
            logger.error(
                "dropped %s: cannot build its %r event: %r", type(event).__name__, route.name, exc
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
            tick,
        )

    def broadcast(
        self,
        message: ServerSentEvent,
        *,
        tenant: str | None = None,
        topics: Collection[str] = frozenset(),
    ) -> Frame:
        """Broadcast a ready-made event, bypassing the map, to the connections ``tenant``
        and ``topics`` select (default: everyone). Its id is set to its position (a given
        id is replaced: ids carry positions); on a replayable bus it is live only and has
        no id, so it never moves a client's position."""
        if self._state != "running":
            raise ClosedError("the broadcaster is not running; use 'async with Broadcaster(...)'")
        if tenant is not None and not isinstance(tenant, str):
            raise InvalidArgumentError("tenant", tenant, "must be a str or None")
        chosen = topic_set("topics", topics, InvalidArgumentError)
        tick = None if self._positioned else self._latest + 1
        message = ServerSentEvent(
            data=message.data,
            event=message.event,
            id=None if tick is None else self._token(tenant, tick),
            retry=message.retry,
            comment=message.comment,
        )
        frame = Frame(message.id, message.event, self.encoder.encode(message), tenant, chosen)
        if tick is not None:
            frame = Frame(frame.id, frame.event, frame.data, tenant, chosen, None, tick)
            self._latest = tick
        self._fan_out(frame)
        return frame

    def _fan_out(self, frame: Frame) -> None:
        started = time.perf_counter()
        registry = self.registry
        if frame.tick is not None:
            self.history.append(frame)
        if frame.tick is None or frame.tenant is not None:
            self._offer(frame, registry.select(frame.tenant, frame.topics))
        elif isinstance(registry, InMemoryClientRegistry):
            # A tenant-less frame: each tenant's clients get an id of their own.
            if registry.tenants():
                for view, targets in registry.select_views(frame.topics):
                    self._offer(frame.in_view(view, self._token), targets)
            else:
                self._offer(frame, registry.select(None, frame.topics))
        else:  # another registry: the same per-tenant ids, grouped here
            groups: dict[str | None, list[SseConnection]] = {}
            for connection in registry.select(None, frame.topics):
                groups.setdefault(connection.subscription.tenant, []).append(connection)
            for view, targets in groups.items():
                self._offer(frame.in_view(view, self._token), targets)
        self._published(started)

    def _offer(self, frame: Frame, targets: Sequence[SseConnection]) -> None:
        if frame.allow is None:
            for connection in targets:
                try:
                    connection.offer(frame)
                except OutboxFull:
                    self._evict(connection)
        else:
            self._offer_allowed(frame, targets)

    def _published(self, started: float) -> None:
        self._metrics.add(Metric.EVENTS_PUBLISHED)
        self._metrics.observe_broadcast(time.perf_counter() - started)

    def _offer_allowed(self, frame: Frame, targets: Sequence[SseConnection]) -> None:
        """Offer ``frame`` to the ``targets`` its ``allow`` admits (rule 8 of ``_resume``)."""
        allow = frame.allow
        assert allow is not None
        failed = 0
        error: BaseException | None = None
        for connection in targets:
            try:
                admitted = allow(connection.subscription) is True
            except Exception as exc:
                failed += 1
                error = exc
                continue
            if admitted:
                try:
                    connection.offer(frame)
                except OutboxFull:
                    self._evict(connection)
        if error is not None:
            self._replay.predicate_failed(frame, failed, error)

    def _evict(self, connection: SseConnection) -> None:
        connection.abort(f"evicted: more than {self.max_queue} frames queued", stalled=True)
        self.registry.remove(connection.id)
        self._metrics.add(Metric.EVICTIONS)
        logger.warning("connection %s evicted: client too slow", connection.id)

    async def _on_gap(self, gap: BusGap) -> None:
        """The bus lost events: every connection gets a ``reset`` and moves past the gap."""
        self._metrics.add(Metric.GAPS)
        if gap.lost:
            self._metrics.add(Metric.EVENTS_LOST, gap.lost)
        position = gap.position if gap.position is not None else self._latest
        if isinstance(self.bus, ReplayableEventBus):
            # After a log reset the ticks start again and the bus has a new key, so that
            # ids of the old log resume no one in the new one.
            self._codec = PositionCodec(self.bus.position_secret())
        rewind = position < self._latest  # the log was reset: its ticks start again
        self._latest = position
        start = getattr(self.history, "start", None)
        if start is not None:
            start(position)
        resets: dict[tuple[str | None, int], bytes] = {}
        for connection in self.registry.snapshot():
            view = connection.subscription.tenant

            def frame(at: int, view: str | None = view) -> bytes:
                data = resets.get((view, at))
                if data is None:
                    data = resets[view, at] = self._reset(view, at, "", "events-lost")
                return data

            if not connection.catching_up:
                self._metrics.reset("events-lost")
            connection.reset("events-lost", position, rewind, frame)

    async def _heartbeat_loop(self, interval: float) -> None:
        style = self.heartbeat_style
        ping = self.encoder.encode(
            ServerSentEvent(comment="ping")
            if style == "comment"
            else ServerSentEvent(data="", event="ping")
        )
        with anyio.CancelScope() as self._heartbeat_scope:
            while True:
                await anyio.sleep(interval)
                for connection in self.registry.snapshot():
                    connection.control(ping)

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

    def connect(
        self,
        *,
        last_event_id: str | None = None,
        retry: int | None = None,
        connection_id: str | None = None,
        subscription: Subscription | None = None,
        watch: Receive | None = None,
        on_stall: Callable[[SseConnection], Coroutine[Any, Any, None]] | None = None,
    ) -> AbstractAsyncContextManager[SseConnection]:
        """Register a connection; on exit it is closed and removed.

        The stream starts with ``retry:`` (if given) and then either the client's position
        (an ``id:`` alone, without ``last_event_id``) or what it missed since
        ``last_event_id`` - or a ``reset`` event (data ``{"lastEventId": ..., "reason":
        ...}``) telling it to reload - then live frames, with no gap and no duplicate (the
        rules are in ``ssebus._resume``). ``subscription`` (default: every event without a
        tenant) filters both, and its ``expires_at`` ends the stream with a
        ``credentials-expired`` event. ``watch``, an ASGI ``receive``, is read until the
        client disconnects, which aborts the connection. ``on_stall(connection)`` runs in
        the background if the connection is cut while its client, still connected, does
        not read (evicted, a write timed out, no goodbye taken at shutdown). Past
        ``max_connections`` (or ``max_connections_per_key`` for its key) it raises
        ``TooManyConnectionsError``.
        """
        # A class, not an @asynccontextmanager: a generator, its context manager and their
        # arguments would be four more objects per open stream for the collector.
        return _Connect(
            self, last_event_id, retry, connection_id, subscription or EVERYTHING, watch, on_stall
        )

    def _open(self, stream: _Connect) -> SseConnection:
        """:meth:`connect`'s entry: register the connection and begin its stream."""
        if self._state != "running":
            raise ClosedError("the broadcaster is not running; no new connections")
        subscription = stream.subscription
        key = stream.key = self._admission.admit(subscription, len(self.registry), self._tasks)
        connection = stream.connection = SseConnection(
            stream.connection_id or f"conn-{next(self._connection_ids)}",
            max_queue=self.max_queue,
            max_bytes=self.max_queue_bytes,
            max_write=self.max_write_bytes,
            write_delay=0.0 if self.write_delay == "auto" else self.write_delay,
            write_turns=AUTO_WRITE_TURNS if self.write_delay == "auto" else 0,
            write_timeout=self.write_timeout,
            metrics=self._metrics,
            subscription=subscription,
            expired=self._expired() if subscription.expires_at is not None else b"",
        )
        try:
            self.registry.add(connection)
        except BaseException:
            self._admission.release(key)
            connection.dispose()
            raise
        assert self._background is not None
        stream._background = self._background
        if stream.on_stall is not None:
            connection.on_stall = stream  # see StreamWatch: runs on_stall in the background
        if stream.receive is not None:
            stream.watch(stream.receive)
            stream.receive = None
        self._metrics.add(Metric.CONNECTIONS_OPENED)
        try:
            retry = stream.retry
            prelude = b"" if retry is None else self.encoder.encode(ServerSentEvent(retry=retry))
            self._replay.begin(connection, stream.last_event_id, prelude)
            logger.debug(
                "connection %s opened (last event id %r)", connection.id, stream.last_event_id
            )
        except BaseException:
            self._close(stream)
            raise
        return connection

    def _close(self, stream: _Connect) -> None:
        """:meth:`connect`'s exit: close the connection and forget it."""
        connection = stream.connection
        stream.stop()
        connection.close("stream ended")
        connection.dispose()
        # No cycle left for the collector: nothing can stall a disposed connection.
        connection.on_stall = None
        self.registry.remove(connection.id)
        self._admission.release(stream.key)
        self._metrics.add(Metric.CONNECTIONS_CLOSED)
        reason = connection.close_reason or "stream ended"
        if reason.startswith("write"):
            level = logging.WARNING
        elif reason in (SHUTTING_DOWN, CUT_AT_SHUTDOWN):
            level = logging.DEBUG  # aclose tells them all in one line
        else:
            level = logging.INFO
        logger.log(level, "connection %s closed: %s", connection.id, reason)
        if self._closing() and not len(self.registry):
            self._at_home(self._drained.set)

    @property
    def max_connections(self) -> int | None:
        """The most streams this broadcaster takes at once (None: no limit)."""
        return self._admission.max_connections

    @property
    def max_connections_per_key(self) -> int | None:
        """The most streams of one subscription key (None: no limit)."""
        return self._admission.max_per_key

    # -- positions -------------------------------------------------------------------------

    async def _page(
        self, partitions: Collection[str | None], after: int, limit: int
    ) -> Sequence[Frame] | None:
        """The replay source: this process's history, then the bus's log."""
        if after <= self._latest:
            frames = await self.history.since(partitions, after, limit)
            if frames is not None or not self._positioned:
                return frames
        elif not self._positioned:
            return None  # from the future: an earlier process's position
        bus = self.bus
        assert isinstance(bus, ReplayableEventBus)
        try:
            entries = await bus.replay(partitions, after, limit)
        except Exception as exc:
            logger.warning("%r.replay after a position failed (%r); client reset", bus, exc)
            return None
        if entries is None:
            return None
        share = current_share()  # replay work shares the broadcaster's budget (``_pace``)
        rendered: list[Frame] = []
        for tick, event in entries:
            if share.due():
                await share.turn()
            rendered.append(self.render(event, tick) or Frame(None, None, b"", tick=tick))
        return rendered

    def _partition_of(self, event: object) -> str | None:
        """The tenant a domain event is retained under on a replayable bus."""
        route = self.events.route(event)
        if route is None:
            return None
        return route.audience(event, route.payload(event))[0]

    def _token(self, view: str | None, tick: int) -> str:
        assert self._codec is not None, "the broadcaster is not running"
        return self._codec.token(view, tick)

    def _decode(self, views: Iterable[str | None], last_event_id: str) -> int | None:
        assert self._codec is not None
        return self._codec.tick(views, last_event_id)

    def _marker(self, view: str | None, tick: int) -> bytes:
        """An ``id:`` alone: hands the client its position without dispatching an event."""
        return self.encoder.encode(ServerSentEvent(id=self._token(view, tick)))

    def _reset(self, view: str | None, tick: int, last_event_id: str, reason: str) -> bytes:
        return self.encoder.encode(
            ServerSentEvent.json(
                {"lastEventId": last_event_id, "reason": reason},
                event="reset",
                id=self._token(view, tick),
            )
        )

    def _closing(self) -> bool:
        return self._state == "closing"

    def metrics(self) -> MetricsSnapshot:
        """The broadcaster's metrics now."""
        return self._metrics.snapshot(len(self.registry))

    @property
    def position(self) -> int:
        """The position of the newest frame broadcast (0 before any, on a fresh bus)."""
        return self._latest

    def position_id(self, tenant: str | None = None) -> str:
        """The id that puts a client of ``tenant`` at the current position: a page that
        loads state and then opens the stream with it (``?lastEventId=``) misses nothing."""
        return self._token(tenant, self._latest)

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


class _Connect(StreamWatch):
    """What :meth:`Broadcaster.connect` returns: an async context manager that opens the
    connection on entry and closes it on exit. One object per stream, which is also its
    disconnect watcher and stall hook (``StreamWatch``)."""

    __slots__ = (
        "broadcaster",
        "connection_id",
        "key",
        "last_event_id",
        "receive",
        "retry",
        "subscription",
    )

    connection: SseConnection

    def __init__(
        self,
        broadcaster: Broadcaster,
        last_event_id: str | None,
        retry: int | None,
        connection_id: str | None,
        subscription: Subscription,
        receive: Receive | None,
        on_stall: OnStall | None,
    ) -> None:
        super().__init__(None, on_stall)
        self.broadcaster = broadcaster
        self.last_event_id = last_event_id
        self.retry = retry
        self.connection_id = connection_id
        self.subscription = subscription
        self.receive = receive
        self.key: str | None = None

    async def __aenter__(self) -> SseConnection:
        return self.broadcaster._open(self)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.broadcaster._close(self)
