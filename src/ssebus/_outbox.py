"""``Outbox``: one connection's bounded queue of encoded frames, between fan-out and writer."""

from __future__ import annotations

from collections.abc import Awaitable

from ._seam import Waiter

__all__ = ["Outbox", "OutboxFull"]


class OutboxFull(Exception):
    """A frame did not fit: the client is not keeping up (anyio's ``WouldBlock`` idiom)."""


class Outbox:
    """Encoded frames waiting for one writer, at most ``max_frames`` and ``max_bytes``.

    :meth:`put_nowait` never waits: it raises :class:`OutboxFull` instead (one frame always
    fits an empty outbox, however large). Control frames (pings, resets, goodbyes) go in
    with :meth:`put_control`, outside the bounds, and are not counted as events. The writer
    swaps everything out at once with :meth:`take`: one wake-up, one write.
    """

    __slots__ = ("_bytes", "_events", "_frames", "_spare", "_waiter", "max_bytes", "max_frames")

    def __init__(self, max_frames: int, max_bytes: int) -> None:
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self._frames: list[bytes] = []
        self._spare: list[bytes] = []  # two lists take turns: none is made per write
        self._bytes = 0
        self._events = 0
        self._waiter: Waiter | None = None

    def __len__(self) -> int:
        return len(self._frames)

    def put_nowait(self, data: bytes) -> None:
        """Queue one event frame; raise :class:`OutboxFull` when it does not fit."""
        frames = self._frames
        if frames and (self._events >= self.max_frames or self._bytes + len(data) > self.max_bytes):
            raise OutboxFull
        frames.append(data)
        self._bytes += len(data)
        self._events += 1
        if self._waiter is not None:
            self.wake()

    def put_control(self, data: bytes) -> None:
        """Queue a frame that is not an event, whatever the bounds."""
        self._frames.append(data)
        if self._waiter is not None:
            self.wake()

    def clear(self) -> None:
        """Forget every queued frame."""
        self._frames.clear()
        self._bytes = self._events = 0

    def take(self) -> tuple[list[bytes], int]:
        """Everything queued, oldest first, and how many of it are events. The list is
        reused: the caller is done with it before the next ``take``."""
        batch, events = self._frames, self._events
        self._spare.clear()
        self._frames, self._spare = self._spare, batch
        self._bytes = self._events = 0
        return batch, events

    def waiting(self) -> Awaitable[object]:
        """What the writer awaits until a frame is queued or :meth:`wake` is called."""
        waiter = self._waiter = Waiter.create()
        return waiter.wait()

    def wake(self) -> None:
        """Wake the writer, if it waits."""
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.wake()

    def release(self) -> None:
        """Free the queue once nothing will run the connection any more."""
        self._frames = []
        self._spare = []
        self._bytes = self._events = 0
