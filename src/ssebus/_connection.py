"""``SseConnection``: one client's bounded outgoing queue and the writer that drains it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import anyio

from ._frame import Frame
from ._metrics import Metrics
from ._subscription import EVERYTHING, Subscription

__all__ = ["AlreadySent", "SseConnection", "Write"]

logger = logging.getLogger("ssebus")

#: Writes bytes to the client (e.g. one ASGI ``http.response.body`` message).
Write = Callable[[bytes], Awaitable[None]]
#: After a resume: True if the client already has ``frame``, False if it is the first new
#: one (the catch-up is over), None if it is new but says nothing of the catch-up.
AlreadySent = Callable[[Frame], "bool | None"]


class SseConnection:
    """A client's stream: the broadcaster ``offer``s frames, :meth:`run` writes them out.

    The queue holds at most ``max_queue`` frames. The broadcaster never waits on it: a full
    queue means the client is not keeping up, and the connection is closed (evicted) so it
    reconnects and resumes from history instead of growing memory or slowing others down.
    Frames queued while the writer was busy are written together in one ``write``.
    ``subscription`` says which frames the connection is offered; when it expires the
    stream ends with ``expired`` (a final frame) instead of waiting for more.
    """

    __slots__ = (
        "_aborted",
        "_already_sent",
        "_closing",
        "_expired",
        "_held",
        "_max_queue",
        "_metrics",
        "_prelude_slot",
        "_queue",
        "_scope",
        "_subscription",
        "_uncounted",
        "_waiter",
        "_writing_since",
        "close_reason",
        "id",
        "write_timeout",
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
    ) -> None:
        self.id = connection_id
        self._subscription = subscription
        #: Seconds one write may take; enforced by :meth:`check_write` (the broadcaster's
        #: watchdog calls it), so a write costs no timer of its own.
        self.write_timeout = write_timeout
        #: Why the connection closed, once it has (``"client disconnected"``, ...).
        self.close_reason: str | None = None
        self._max_queue = max_queue
        self._metrics = metrics
        # The queue is a plain list the writer swaps out whole: one wake-up, one write.
        self._queue: list[bytes] = []
        #: What the writer sleeps on, if it does (see :meth:`_pump`).
        self._waiter: asyncio.Future[None] | anyio.Event | None = None
        self._closing = False
        self._held: list[Frame] | None = []
        # Frames the metrics have not counted yet: a prelude chunk stands for several
        # frames, a final one for none.
        self._uncounted = 0
        # The prelude waits in the queue without taking a frame's place there.
        self._prelude_slot = 0
        self._scope: anyio.CancelScope | None = None
        self._aborted = False
        self._writing_since: float | None = None
        self._expired = expired
        self._already_sent: AlreadySent | None = None

    def __repr__(self) -> str:
        state = f"closed: {self.close_reason}" if self.close_reason else "open"
        return f"<SseConnection {self.id} {state}>"

    @property
    def subscription(self) -> Subscription:
        """What the connection may receive; fixed for its life (the registry indexes it)."""
        return self._subscription

    @property
    def catching_up(self) -> bool:
        """True while live frames may still repeat what the resume replayed."""
        return self._already_sent is not None

    @property
    def closed(self) -> bool:
        """True once the connection was closed for any reason."""
        return self.close_reason is not None

    def offer(self, frame: Frame) -> bool:
        """Queue ``frame`` without waiting; False when the queue is full (the client lags)."""
        if self._closing:
            return True
        if self._held is not None:
            self._held.append(frame)
            return len(self._held) <= self._max_queue
        if self._already_sent is not None and frame.id is not None:
            seen = self._already_sent(frame)
            if seen:
                return True
            if seen is False:
                self._already_sent = None
        queue = self._queue
        if len(queue) >= self._max_queue + self._prelude_slot:
            return False
        queue.append(frame.data)
        if self._waiter is not None:
            self._wake_up()
        return True

    def release(
        self,
        prelude: bytes,
        frames: int = 0,
        already_sent: AlreadySent | None = None,
    ) -> None:
        """Start live delivery: ``prelude`` first, then frames held since registration.

        ``already_sent(frame)`` says whether the replay in ``prelude`` covered a frame:
        such frames are skipped, among the held ones and among live ones until the catch-up
        is over, so the hand-over from history to live has neither gap nor duplicate.
        """
        held, self._held = self._held or [], None
        fresh = held
        if already_sent is not None:
            verdicts = [(f, already_sent(f) if f.id is not None else None) for f in held]
            fresh = [f for f, seen in verdicts if not seen]
            if not any(seen is False for _, seen in verdicts):
                self._already_sent = already_sent
        chunk = prelude + b"".join(f.data for f in fresh)
        if chunk:
            self._queue.insert(0, chunk)  # before a goodbye queued while held
            self._uncounted += frames + len(fresh) - 1
            self._prelude_slot = 1

    def close(self, reason: str, *, final: bytes = b"") -> None:
        """Close the stream gracefully: queued frames, then ``final``, are still written."""
        if self.close_reason is not None:
            return
        self.close_reason = reason
        if final:
            self._queue.append(final)
            self._uncounted -= 1
        self._stop()

    def dispose(self) -> None:
        """Free the queue once nothing will run the connection any more."""
        self.abort(self.close_reason or "stream ended")
        self._queue = []
        self._held = None

    def guard(self, scope: anyio.CancelScope | None) -> None:
        """Let :meth:`abort` cancel ``scope`` (work done for this connection before ``run``)."""
        self._scope = scope
        if scope is not None and self._aborted:
            scope.cancel()

    def abort(self, reason: str) -> None:
        """Close the stream now: nothing more is written, a write in progress is cancelled."""
        if self.close_reason is None:
            self.close_reason = reason
        self._aborted = True
        self._stop()
        if self._scope is not None:
            self._scope.cancel()

    def check_write(self, now: float) -> None:
        """Abort the connection if a write started before ``now - write_timeout``
        (``now`` from ``time.monotonic()``)."""
        started = self._writing_since
        timeout = self.write_timeout
        if started is not None and timeout is not None and now - started > timeout:
            self._write_failed(f"write timed out after {timeout} s")

    @property
    def aborted(self) -> bool:
        """True when the stream was cut short (evicted, write failed, client gone), so
        ending the response properly is pointless or impossible."""
        return self._aborted

    def _stop(self) -> None:
        self._closing = True
        if self._waiter is not None:
            self._wake_up()

    def _wake_up(self) -> None:
        waiter, self._waiter = self._waiter, None
        if isinstance(waiter, asyncio.Future):
            if not waiter.done():  # a cancelled sleep leaves a cancelled future
                waiter.set_result(None)
        elif waiter is not None:
            waiter.set()

    async def run(self, write: Write) -> None:
        """Write the prelude and then every queued frame until the connection closes.

        A write that raises closes the connection, as does one that outlasts
        ``write_timeout`` once :meth:`check_write` sees it (the broadcaster's watchdog
        calls it); so do :meth:`close` and the subscription's ``expires_at`` passing.
        Returns once nothing more will be written; never raises for a client's failure.
        """
        with anyio.CancelScope() as self._scope:
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
        loop = asyncio_loop()
        spare: list[bytes] = []
        while not self._aborted:
            if remaining is not None and anyio.current_time() >= deadline:
                return False
            batch = self._queue
            if batch:
                self._queue, spare = spare, batch  # two lists take turns: none made per write
                data = batch[0] if len(batch) == 1 else b"".join(batch)
                frames = len(batch) + self._uncounted
                self._uncounted = self._prelude_slot = 0
                batch.clear()
                self._writing_since = time.monotonic()
                try:
                    await write(data)
                except Exception as exc:
                    self._write_failed(f"write failed: {exc!r}")
                    return True
                finally:
                    self._writing_since = None
                if frames:
                    self._metrics.frames_sent += frames
                    if self._metrics.hook is not None:
                        self._metrics.emit("frames_sent", frames)
                continue
            if self._closing:
                return True
            # Sleep until offer() or a close: on asyncio on a bare future, a fraction of
            # the time and memory of an event.
            sleep: Awaitable[object]
            if loop is not None:
                sleep = self._waiter = loop.create_future()
            else:
                event = self._waiter = anyio.Event()
                sleep = event.wait()
            try:
                if remaining is None:
                    await sleep
                else:
                    with anyio.CancelScope(deadline=deadline):
                        await sleep
            finally:
                self._waiter = None
        return True

    def _write_failed(self, reason: str) -> None:
        if self._aborted:
            return
        self._metrics.write_errors += 1
        self._metrics.emit("write_errors", 1)
        self.abort(reason)


def asyncio_loop() -> asyncio.AbstractEventLoop | None:
    """The running asyncio loop, or None under another event loop (trio)."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
