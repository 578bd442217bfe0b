"""``InMemoryHistory``: the recent frames of this process, for resume after reconnect."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from itertools import islice

from ._exceptions import ConfigurationError
from ._frame import Frame

__all__ = ["InMemoryHistory"]


class InMemoryHistory:
    """A ring of the last ``max_events`` frames, each kept at most ``max_age`` seconds.

    Lookup of an id is O(1) and a replay costs only the frames it returns.
    """

    def __init__(self, max_events: int = 1000, *, max_age: float | None = None) -> None:
        if isinstance(max_events, bool) or not isinstance(max_events, int) or max_events < 0:
            raise ConfigurationError("max_events", max_events, "must be an int >= 0")
        if max_age is not None and not max_age > 0:
            raise ConfigurationError("max_age", max_age, "must be > 0 seconds, or None")
        self.max_events = max_events
        self.max_age = max_age
        self._frames: deque[tuple[float, Frame]] = deque()
        # id -> absolute position; position - self._first is the index in _frames.
        self._positions: dict[str, int] = {}
        self._first = 0

    def __len__(self) -> int:
        self._expire()
        return len(self._frames)

    def append(self, frame: Frame) -> None:
        """Keep ``frame`` as the newest; forget the oldest past the limits."""
        if frame.id is None:
            raise ConfigurationError("frame.id", None, "only frames with an id can be replayed")
        if self.max_events == 0:
            return
        if len(self._frames) >= self.max_events:
            self._drop_oldest()
        self._positions[frame.id] = self._first + len(self._frames)
        self._frames.append((time.monotonic(), frame))

    async def since(self, last_event_id: str) -> Sequence[Frame] | None:
        """Frames after ``last_event_id``, or None when that id is unknown or expired."""
        self._expire()
        position = self._positions.get(last_event_id)
        if position is None:
            return None
        start = position - self._first + 1
        return [frame for _, frame in islice(self._frames, start, None)]

    def _expire(self) -> None:
        if self.max_age is None:
            return
        horizon = time.monotonic() - self.max_age
        # The newest frame always stays, so a client that saw it can still resume.
        while len(self._frames) > 1 and self._frames[0][0] < horizon:
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        _, frame = self._frames.popleft()
        # A repeated id points at its newest copy; only forget it with that copy.
        if frame.id is not None and self._positions.get(frame.id) == self._first:
            del self._positions[frame.id]
        self._first += 1
