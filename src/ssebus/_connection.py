"""``SseConnection``: one client's stream - its outbox, its position, and the writer."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import anyio
import anyio.lowlevel

from ._frame import Frame
from ._metrics import Metric, Metrics
from ._outbox import Outbox
from ._resume import Handover, Replay
from ._seam import RunScope, cancel_run, run_cancellable, turn_clock
from ._subscription import EVERYTHING, Subscription

__all__ = ["SseConnection", "Write"]

logger = logging.getLogger("ssebus")

#: Writes bytes to the client (e.g. one ASGI ``http.response.body`` message).
Write = Callable[[bytes], Awaitable[None]]


class SseConnection:
    """A client's stream: the broadcaster ``offer``s frames, :meth:`run` writes them out.

    Its outbox holds at most ``max_queue`` frames and ``max_bytes`` bytes; the broadcaster
    never waits on it: a frame that does not fit raises ``OutboxFull`` and the connection is
    evicted, so it reconnects and resumes instead of growing memory or slowing others down.
    Frames queued while the writer was busy are written together in one ``write``. How it
    resumes (held, then live) is the state machine of ``ssebus._resume``.
    """

    __slots__ = (
        "_aborted",
        "_closing",
        "_expired",
        "_handover",
        "_metrics",
        "_prelude",
        "_replay",
        "_scope",
        "_subscription",
        "_writing_since",
        "close_reason",
        "id",
        "left",
        "max_write",
        "on_stall",
        "outbox",
        "position",
        "severed",
        "stalled",
        "write_delay",
        "write_timeout",
        "write_turns",
    )

    def __init__(
        self,
        connection_id: str,
        *,
        max_queue: int,
        write_timeout: float | None,
        metrics: Metrics,
        subscription: Subscription = EVERYTHING,
        expired: bytes = b"",
        max_bytes: int = 1 << 20,
        max_write: int = 64 << 10,
        write_delay: float = 0.0,
        write_turns: int = 0,
    ) -> None:
        self.id = connection_id
        #: Seconds a busy stream waits after a write before the next (0: never waits).
        self.write_delay = write_delay
        #: Turns of the event loop a stream lets pass after a write before the next (0:
        #: none). Frames queued meanwhile share that write; under load turns lengthen, so
        #: the wait grows with the load, while on a quiet loop it costs microseconds.
        self.write_turns = write_turns
        self._subscription = subscription
        #: Seconds one write may take; enforced by :meth:`check_write` (the broadcaster's
        #: watchdog calls it), so a write costs no timer of its own.
        self.write_timeout = write_timeout
        #: Why the connection closed, once it has (``"client disconnected"``, ...).
        self.close_reason: str | None = None
        #: The tick of the newest frame handed to this client (rule 5 of ``_resume``).
        self.position = 0
        self.outbox = Outbox(max_queue, max_bytes)
        #: Bytes one write may carry (at least one frame): queued frames beyond go next.
        self.max_write = max_write
        self._metrics = metrics
        self._closing = False
        self._aborted = False
        #: True when it was cut while the client was still connected but not reading
        #: (evicted, a write timed out, no goodbye taken at shutdown): its socket may hold
        #: unsent bytes that the server waits to flush (see ``ssebus._sever``).
        self.stalled = False
        #: True once the client is known to have gone (the server said so).
        self.left = False
        #: Called once when the connection is cut as stalled (the endpoint then resets its
        #: socket and sets ``severed``: True if it could, False if not).
        self.on_stall: Callable[[], object] | None = None
        self.severed: bool | None = None
        #: What :meth:`abort` cancels while :meth:`run` runs (see ``_seam.run_cancellable``).
        self._scope: RunScope = None
        self._writing_since: float | None = None
        self._expired = expired
        self._handover: Handover | None = None
        self._replay: Replay | None = None
        self._prelude = b""

    def __repr__(self) -> str:
        state = f"closed: {self.close_reason}" if self.close_reason else "open"
        return f"<SseConnection {self.id} {state}>"

    @property
    def subscription(self) -> Subscription:
        """What the connection may receive; fixed for its life (the registry indexes it)."""
        return self._subscription

    @property
    def catching_up(self) -> bool:
        """True while it replays what it missed (HELD)."""
        return self._handover is not None

    @property
    def closed(self) -> bool:
        """True once the connection was closed for any reason."""
        return self.close_reason is not None

    @property
    def closing(self) -> bool:
        """True once nothing more will be queued."""
        return self._closing

    @property
    def aborted(self) -> bool:
        """True when the stream was cut short (evicted, write failed, client gone), so
        ending the response properly is pointless or impossible."""
        return self._aborted

    def start(
        self,
        prelude: bytes,
        position: int,
        handover: Handover | None = None,
        replay: Replay | None = None,
    ) -> None:
        """Begin LIVE at ``position`` after ``prelude``, or HELD with ``handover``."""
        self._prelude = prelude
        self.position = position
        self._handover = handover
        self._replay = replay

    def offer(self, frame: Frame) -> None:
        """Queue ``frame`` without waiting; raises ``OutboxFull`` when the client lags."""
        if self._closing:
            return
        handover = self._handover
        if handover is not None:
            handover.hold(self, frame)
            return
        tick = frame.tick  # rule 5
        if tick is not None:
            if tick <= self.position:
                return
            self.position = tick
        self.outbox.put_nowait(frame.data)

    def control(self, data: bytes) -> None:
        """Queue a frame that is no event (a ping), outside the bounds."""
        if not self._closing:
            self.outbox.put_control(data)

    def reset(
        self, reason: str, position: int, rewind: bool, frame: Callable[[int], bytes]
    ) -> None:
        """A bus gap: queue a reset (``frame(position)``) that moves the client to
        ``position``, or to where it already is if that is further (unless the log was
        reset and its ticks start again: ``rewind``)."""
        if self._closing:
            return
        if self._handover is not None:
            self._handover.pending_reset = (reason, position, rewind)
            return
        if not rewind:
            position = max(position, self.position)
        self.outbox.put_control(frame(position))
        self.position = position

    def close(self, reason: str, *, final: bytes = b"") -> None:
        """Close the stream gracefully: queued frames, then ``final``, are still written
        (if it was still catching up, what it held is dropped instead: rule 7)."""
        if self.close_reason is not None:
            return
        self.close_reason = reason
        if self._handover is not None:
            self.outbox.clear()
        if final:
            self.outbox.put_control(final)
        self._stop()

    def dispose(self) -> None:
        """Free the queue once nothing will run the connection any more."""
        self.abort(self.close_reason or "stream ended")
        self.outbox.release()
        self._handover = None
        self._replay = None

    def abort(self, reason: str, *, stalled: bool = False) -> None:
        """Close the stream now: nothing more is written, a write in progress is cancelled.
        ``stalled``: the client is still there but does not read."""
        if self.close_reason is None:
            self.close_reason = reason
        if stalled and not self._aborted:
            self.stalled = True
            if self.on_stall is not None:
                self.on_stall()
        self._aborted = True
        self._stop()
        if self._scope is not None:
            cancel_run(self)

    def check_write(self, now: float) -> None:
        """Abort the connection if a write started before ``now - write_timeout``
        (``now`` from ``time.monotonic()``)."""
        started = self._writing_since
        timeout = self.write_timeout
        if started is not None and timeout is not None and now - started > timeout:
            self._write_failed(f"write timed out after {timeout} s", stalled=True)

    def _stop(self) -> None:
        self._closing = True
        self.outbox.wake()

    async def send(self, write: Write, data: bytes, events: int) -> bool:
        """Write ``data`` (holding ``events`` event frames) under the watchdog; False once
        the connection is aborted, by this write failing or otherwise."""
        self._writing_since = time.monotonic()
        try:
            await write(data)
        except Exception as exc:
            self._write_failed(f"write failed: {exc!r}")
            return False
        finally:
            self._writing_since = None
        metrics = self._metrics
        metrics.frames_sent += events
        metrics.bytes_sent += len(data)
        if metrics.hook is not None:
            metrics.sent(events, len(data))
        return not self._aborted

    def run(self, write: Write) -> Coroutine[Any, Any, None]:
        """Write the prelude, what the client missed, then every queued frame until the
        connection closes.

        A write that raises closes the connection, as does one that outlasts
        ``write_timeout`` once :meth:`check_write` sees it (the broadcaster's watchdog
        calls it); so do :meth:`close` and the subscription's ``expires_at`` passing.
        Returns once nothing more will be written; never raises for a client's failure.
        """
        return run_cancellable(self, self._run(write))

    async def _run(self, write: Write) -> None:
        if self._aborted:
            return
        handover = self._handover
        if handover is not None:
            assert self._replay is not None
            if self._prelude and not await self.send(write, self._prelude, 0):
                return
            self._prelude = b""
            self.position = await handover.catch_up(self, self._replay, write)
            self._handover = None
        expires_at = self.subscription.expires_at
        if expires_at is None:
            await self._pump(write)
        elif not await self._pump(write, expires_at - time.time()):
            self.close("credentials expired", final=self._expired)
            logger.info("connection %s: credentials expired", self.id)
            await self._pump(write)

    async def _pump(self, write: Write, remaining: float | None = None) -> bool:
        """Write what is queued, one write per wake-up, until the connection closes (True)
        or ``remaining`` seconds have passed (False).

        The hot path of every stream: it allocates as little as it can, since each object
        made per wake-up of every connection feeds the garbage collector.
        """
        if remaining is not None:
            deadline = anyio.current_time() + remaining  # on the event loop's own clock
        outbox = self.outbox
        delay = self.write_delay
        wrote_at = 0.0
        turns = self.write_turns
        clock = turn_clock() if turns else None
        window = -1  # the window of the latest write: its turn // turns
        while not self._aborted:
            if remaining is not None and anyio.current_time() >= deadline:
                return False
            if len(outbox) or self._prelude:
                if clock is not None:
                    # Turns are counted in windows of ``turns``, the same for every stream
                    # on the loop; a stream writes at most once per window, so the busy
                    # ones all write in the first turn of the next: one long turn of writes
                    # and short ones between, which keeps latency near one turn of writes.
                    if clock.turn // turns == window:
                        await clock.at((window + 1) * turns)
                        if self._aborted:
                            break
                elif delay:
                    # A busy stream writes at most once per ``delay``: what comes meanwhile
                    # goes out together in the next write (an idle one writes at once).
                    wait = wrote_at + delay - time.monotonic()
                    if wait > 0:
                        await anyio.sleep(wait)
                        if self._aborted:
                            break
                batch, events = outbox.take(self.max_write)
                if self._prelude:
                    data = self._prelude + b"".join(batch)
                    self._prelude = b""
                else:
                    data = batch[0] if len(batch) == 1 else b"".join(batch)
                # As send(), inline: a coroutine per write would feed the collector.
                self._writing_since = wrote_at = time.monotonic()
                try:
                    await write(data)
                except Exception as exc:
                    self._write_failed(f"write failed: {exc!r}")
                    return True
                finally:
                    self._writing_since = None
                metrics = self._metrics
                metrics.frames_sent += events
                metrics.bytes_sent += len(data)
                if metrics.hook is not None:
                    metrics.sent(events, len(data))
                if clock is not None:
                    previous, window = window, clock.wrote(turns) // turns
                    if window == previous + 1:
                        # Busy (it wrote in the window before too): wait for the next
                        # window at once rather than be woken by each frame queued.
                        await clock.at((window + 1) * turns)
                elif turns:  # no shared clock (trio): the turns pass here, one by one
                    for _ in range(turns):
                        await anyio.lowlevel.checkpoint()
                continue
            if self._closing:
                return True
            sleep = outbox.waiting()
            if remaining is None:
                await sleep
            else:
                with anyio.CancelScope(deadline=deadline):
                    await sleep
        return True

    def _write_failed(self, reason: str, *, stalled: bool = False) -> None:
        if self._aborted:
            return
        self._metrics.add(Metric.WRITE_ERRORS)
        self.abort(reason, stalled=stalled)
