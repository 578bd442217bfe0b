"""``Outbox``: one connection's bounded queue of encoded frames, between fan-out and writer."""

from __future__ import annotations

from collections.abc import Awaitable

from ._seam import Waiter, new_waiter, wake

__all__ = ["Outbox", "OutboxFull"]


class OutboxFull(Exception):
    """A frame did not fit: the client is not keeping up (anyio's ``WouldBlock`` idiom)."""


class _Control(bytes):
    """A frame that is no event: outside the byte bound, not counted in ``frames_sent``."""

    __slots__ = ()


class Outbox:
    """Encoded frames waiting for one writer, at most ``max_frames`` and ``max_bytes``.

    :meth:`put_nowait` never waits: it raises :class:`OutboxFull` instead (one frame always
    fits an empty outbox, however large). Control frames (pings, resets, goodbyes) go in
    with :meth:`put_control`, outside the byte bound, and are not counted as events. The writer
    swaps everything out at once with :meth:`take`: one wake-up, one write.
    """

    __slots__ = (
        "_spare",
        "control_bytes",
        "controls",
        "frames",
        "max_bytes",
        "max_frames",
        "room_bytes",
        "waiter",
    )

    def __init__(self, max_frames: int, max_bytes: int) -> None:
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self.frames: list[bytes] = []
        self._spare: list[bytes] = []  # two lists take turns: none is made per write
        #: How many bytes more may be queued, and how many of ``frames`` are control frames.
        self.room_bytes = max_bytes
        self.controls = self.control_bytes = 0
        self.waiter: Waiter | None = None

    def __len__(self) -> int:
        return len(self.frames)

    def put_nowait(self, data: bytes) -> None:
        """Queue one event frame; raise :class:`OutboxFull` when it does not fit."""
        frames = self.frames
        size = len(data)
        if (len(frames) >= self.max_frames or self.room_bytes < size) and frames:
            raise OutboxFull
        frames.append(data)
        self.room_bytes -= size
        if self.waiter is not None:
            self.wake()

    def put_control(self, data: bytes) -> None:
        """Queue a frame that is not an event, whatever the bounds."""
        self.frames.append(_Control(data))
        self.controls += 1
        self.control_bytes += len(data)
        if self.waiter is not None:
            self.wake()

    def clear(self) -> None:
        """Forget every queued frame."""
        self.frames.clear()
        self.room_bytes, self.controls, self.control_bytes = self.max_bytes, 0, 0

    def take(self, max_write: int) -> tuple[list[bytes], int]:
        """The oldest frames, about ``max_write`` bytes of them (at least one), and how many
        of them are events. A write that size leaves the server's flow control in charge
        and bounds what a stalled socket can pin. The list is reused: the caller is done
        with it before the next ``take``."""
        batch = self.frames
        if self.max_bytes - self.room_bytes + self.control_bytes <= max_write:  # all of it
            events = len(batch) - self.controls
            self._spare.clear()
            self.frames, self._spare = self._spare, batch
            self.room_bytes, self.controls, self.control_bytes = self.max_bytes, 0, 0
            return batch, events
        size = count = controls = control_bytes = 0
        for data in batch:
            if count and size + len(data) > max_write:
                break
            size += len(data)
            count += 1
            if isinstance(data, _Control):
                controls += 1
                control_bytes += len(data)
        taken = batch[:count]
        del batch[:count]
        self.controls -= controls
        self.control_bytes -= control_bytes
        self.room_bytes += size - control_bytes
        return taken, count - controls

    def waiting(self) -> Awaitable[object]:
        """What the writer awaits until a frame is queued or :meth:`wake` is called."""
        self.waiter, sleep = new_waiter()
        return sleep

    def wake(self) -> None:
        """Wake the writer, if it waits."""
        waiter, self.waiter = self.waiter, None
        if waiter is not None:
            wake(waiter)

    def release(self) -> None:
        """Free the queue once nothing will run the connection any more."""
        self.frames = []
        self._spare = []
        self.room_bytes, self.controls, self.control_bytes = self.max_bytes, 0, 0
