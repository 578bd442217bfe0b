"""Resume: how a connection gets from its ``Last-Event-ID`` to live frames, exactly once.

Every frame has a tick (see ``_position``); a connection has a *position*, the tick of the
newest frame it has been given. States::

    HELD (catching up) ──► LIVE ──► CLOSED
          └─ a reset ─────┘

Rules:

1. A connection is registered before anything is looked up, so every live frame published
   from then on is offered to it; ``T0`` is the newest tick at registration.
2. Without a Last-Event-ID it starts LIVE at position ``T0``, and its stream starts with
   ``id: <token of T0>`` (no event is dispatched), so even a client that receives no event
   before it is cut resumes exactly.
3. With one, it starts HELD with its *cursor* at the tick the id decodes to. Live frames
   offered meanwhile are queued in its outbox unless their tick is at or before the cursor;
   the first one queued (``held_low``) marks where the replay stops. Pages of at most
   ``page`` frames after the cursor, from the partitions its subscription sees, are
   written directly (a slow client slows only its own replay; the write watchdog covers
   it), moving the cursor. A full outbox while held is emptied (history holds those frames:
   the replay carries on past them). Building a page (decode, render, picking the client's
   frames) is paced by the broadcaster's one ``Pacer`` (``ssebus._pace``): every replay
   shares its one slice of work at a time, so it may yield between two frames of a page.
   Before it yields, the cursor moves to the last frame picked (so a live frame the page
   already gave is dropped, not held), and after it, ``held_low`` is read again.
4. The replay ends at ``held_low`` or at the end of the source (unless a bus gap came
   meanwhile: rule 6); with no await in between,
   the connection turns LIVE at position ``max(cursor, newest held tick, newest tick)``
   (whatever lies before it was replayed, held, or not for this client), and is handed a
   token of that position after the held frames if the last frame it got carried another.
5. LIVE: a frame whose tick is at or before the position is dropped (the replay, or an
   instance whose reader was ahead, already gave it); otherwise it is queued and the
   position moves to its tick. A frame without a tick (ephemeral) is queued, moving nothing.
   A full outbox evicts the connection. A bus gap moves the position forward, never back,
   unless the log itself was reset and its ticks start again.
6. An id that decodes to nothing for this connection's views, a source that no longer
   covers the cursor, or more than ``max_replay`` frames: a ``reset`` event carrying a token
   of the position it moves the client to, the newest tick now; what was held is dropped (the
   client reloads its state). A bus gap resets LIVE connections the same way.
7. Closed while HELD: what was held is dropped, so the client's last id stays the last
   frame it really got.
8. One rule decides whether a connection receives a frame, live and on replay alike
   (:meth:`Replay.visible`): the subscription's tenant and topics, then the route's
   ``allow``; an ``allow`` that raises means "not delivered", logged and counted.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from typing import TYPE_CHECKING

import anyio

from ._frame import Frame
from ._metrics import Metric
from ._outbox import OutboxFull
from ._pace import Pacer, sharing
from ._subscription import Subscription

if TYPE_CHECKING:
    from ._connection import SseConnection, Write
    from ._metrics import Metrics

__all__ = ["Handover", "Replay", "Source"]

logger = logging.getLogger("ssebus")

#: Up to ``limit`` frames of ``partitions`` after a tick, in tick order; None: not covered.
Source = Callable[[Collection[str | None], int, int], Awaitable[Sequence[Frame] | None]]


def partitions_of(subscription: Subscription) -> tuple[str | None, ...]:
    """The history partitions a subscription can see: its tenant's and the tenant-less."""
    tenant = subscription.tenant
    return (None,) if tenant is None else (tenant, None)


class Replay:
    """One broadcaster's replay settings and the one visibility rule (rule 8)."""

    def __init__(
        self,
        source: Source,
        *,
        page: int,
        max_replay: int,
        concurrency: int,
        metrics: Metrics,
        marker: Callable[[str | None, int], bytes],
        reset: Callable[[str | None, int, str, str], bytes],
        newest: Callable[[], int],
        decode: Callable[[Iterable[str | None], str], int | None],
        token: Callable[[str, int], str],
    ) -> None:
        self.source = source
        self.page = page
        self.max_replay = max_replay
        self.limiter = anyio.CapacityLimiter(concurrency)
        self._pacers = threading.local()
        self.metrics = metrics
        self.marker = marker
        self.reset = reset
        self.newest = newest
        self.decode = decode
        self.token = token

    @property
    def pacer(self) -> Pacer:
        """What every replay's work shares (``ssebus._pace``): one per thread, since loop
        turns are per event loop (a server's thread workers each run a loop of their own)."""
        try:
            pacer: Pacer = self._pacers.pacer
        except AttributeError:
            pacer = self._pacers.pacer = Pacer()
        return pacer

    def new_run(self) -> None:
        """A new run of the broadcaster: fresh pacers (an earlier run's loops are gone)."""
        self._pacers = threading.local()

    def begin(self, connection: SseConnection, last_event_id: str | None, prelude: bytes) -> None:
        """Rules 1-3: start a just registered connection LIVE or HELD."""
        newest = self.newest()
        subscription = connection.subscription
        if not last_event_id:
            connection.start(prelude + self.marker(subscription.tenant, newest), newest)
            return
        cursor = self.decode(partitions_of(subscription), last_event_id)
        self.metrics.add(Metric.REPLAYS)
        connection.start(prelude, newest, Handover(cursor, last_event_id), self)

    def visible(self, frame: Frame, connection: SseConnection, *, matched: bool = False) -> bool:
        """Whether ``connection`` receives ``frame``; ``matched``: tenant and topics already
        checked (the registry's index did). A raising ``allow`` is "no", logged, counted."""
        if not frame.data:
            return False
        subscription = connection.subscription
        if not matched and not subscription.matches(frame):
            return False
        allow = frame.allow
        if allow is None:
            return True
        try:
            return allow(subscription) is True
        except Exception as exc:
            self.predicate_failed(frame, 1, exc)
            return False

    def predicate_failed(self, frame: Frame, count: int, exc: BaseException) -> None:
        self.metrics.add(Metric.PREDICATE_ERRORS, count)
        logger.error(
            "allow predicate of %r failed for %d connection(s) (%r); not delivered to them",
            frame.event,
            count,
            exc,
        )


class Handover:
    """A HELD connection's catch-up state (rules 3, 4, 6 and 7)."""

    __slots__ = ("cursor", "held_high", "held_low", "last_event_id", "pending_reset")

    def __init__(self, cursor: int | None, last_event_id: str) -> None:
        #: None: the id was not ours; the catch-up is a reset.
        self.cursor = cursor
        self.last_event_id = last_event_id
        self.held_low: int | None = None
        self.held_high = 0
        #: Set by a bus gap during the catch-up: (reason, position, rewind).
        self.pending_reset: tuple[str, int, bool] | None = None

    def hold(self, connection: SseConnection, frame: Frame) -> None:
        """Rule 3: queue a live frame the replay will not give."""
        tick = frame.tick
        cursor = self.cursor
        if tick is not None and cursor is not None and tick <= cursor:
            return
        try:
            connection.outbox.put_nowait(frame.data)
        except OutboxFull:
            connection.outbox.clear()
            self.held_low = None
            self.held_high = 0
            return
        if tick is not None:
            if self.held_low is None:
                self.held_low = tick
            self.held_high = tick

    async def catch_up(self, connection: SseConnection, replay: Replay, write: Write) -> int:
        """Replay what the client missed; return the position it goes LIVE at."""
        view = connection.subscription.tenant
        partitions = partitions_of(connection.subscription)
        replayed = 0
        last_sent: int | None = None
        cursor = self.cursor
        share = replay.pacer.share()
        with sharing(share):  # the bus's replay and the render pace themselves by it
            while cursor is not None and self.pending_reset is None and not connection.closing:
                # Ask for no more than the cap allows, and for one more once it is reached:
                # a frame beyond the cap is what turns the replay into a reset.
                limit = max(1, min(replay.page, replay.max_replay - replayed))
                async with replay.limiter:
                    frames = await replay.source(partitions, cursor, limit)
                    if frames is None:
                        break
                    stop = self.held_low
                    if replayed >= replay.max_replay and frames:
                        first = frames[0].tick
                        if stop is None or (first is not None and first < stop):
                            return self._reset(connection, replay, "replay-limit")
                    chunk: list[bytes] = []
                    ended = len(frames) < limit
                    for frame in frames:
                        tick = frame.tick
                        assert tick is not None
                        if share.due():
                            # Live frames offered meanwhile up to the cursor are dropped
                            # (the chunk has them, or they are not for us); a later one
                            # may be held now, and the replay stops there.
                            self.cursor = cursor
                            await share.turn()
                            stop = self.held_low
                        if stop is not None and tick >= stop:
                            ended = True
                            break
                        cursor = tick
                        if replay.visible(frame, connection):
                            chunk.append(frame.in_view(view, replay.token).data)
                            last_sent = tick
                    replayed += len(frames)
                    del frames  # a stalled write below must not pin the rendered page
                share.release()  # the write may take long: another replay works meanwhile
                self.cursor = cursor
                if chunk and not await connection.send(write, b"".join(chunk), len(chunk)):
                    return cursor
                replay.metrics.add(Metric.REPLAYED_FRAMES, len(chunk))
                del chunk
                if connection.closing:
                    return cursor  # rule 7: what was held is gone, and so is the marker
                if ended:
                    if self.pending_reset is not None:
                        break  # a bus gap while the replay yielded: the reset below
                    # Everything up to the newest tick was replayed, held, or not for us.
                    position = max(cursor, self.held_high, replay.newest())
                    if last_sent != position:
                        connection.outbox.put_control(replay.marker(view, position))
                    return position
        if connection.closing:
            connection.outbox.clear()  # rule 7
            return cursor or 0
        if self.pending_reset is not None:
            reason, position, rewind = self.pending_reset
            if not rewind:
                position = max(position, self.cursor or 0)
            return self._reset(connection, replay, reason, position)
        return self._reset(connection, replay, "not-in-history")

    def _reset(
        self, connection: SseConnection, replay: Replay, reason: str, position: int | None = None
    ) -> int:
        """Rule 6: drop what was held, tell the client to reload, move it to now."""
        # What was held is dropped: the reloaded state has it, the position covers it.
        if position is None:
            position = max(replay.newest(), self.cursor or 0, self.held_high)
        else:
            position = max(position, self.held_high)
        connection.outbox.clear()
        connection.outbox.put_control(
            replay.reset(connection.subscription.tenant, position, self.last_event_id, reason)
        )
        replay.metrics.reset(reason)
        return position
