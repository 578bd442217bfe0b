"""``InMemoryHistory``: the recent frames of this process, by partition, for resume."""

from __future__ import annotations

import heapq
import time
from bisect import bisect_right
from collections import deque
from collections.abc import Collection, Iterator, Sequence
from itertools import islice

from ._exceptions import ConfigurationError, InvalidArgumentError
from ._frame import Frame

__all__ = ["InMemoryHistory"]


class _Partition:
    """One tenant's frames (or the tenant-less ones), oldest first."""

    __slots__ = ("frames", "ticks", "times", "trimmed")

    def __init__(self) -> None:
        self.frames: deque[Frame] = deque()
        self.ticks: deque[int] = deque()
        self.times: deque[float] = deque()
        #: The tick of the newest frame dropped from here (0: none ever was).
        self.trimmed = 0

    def drop_oldest(self) -> None:
        self.frames.popleft()
        self.trimmed = self.ticks.popleft()
        self.times.popleft()

    def after(self, tick: int) -> Iterator[Frame]:
        return islice(self.frames, bisect_right(self.ticks, tick), None)


class InMemoryHistory:
    """Recent frames kept per *partition* - a tenant, or None for events without one - so
    one tenant's burst never shortens another's resume window.

    Each partition keeps its last ``max_events`` frames, each at most ``max_age`` seconds;
    ``max_total`` bounds all partitions together, taking frames from the largest partition
    first. A replay costs only the frames it returns (plus a binary search).
    """

    def __init__(
        self,
        max_events: int = 1000,
        *,
        max_age: float | None = None,
        max_total: int = 100_000,
    ) -> None:
        for name, value in (("max_events", max_events), ("max_total", max_total)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigurationError(name, value, "must be an int >= 0")
        if max_age is not None and not max_age > 0:
            raise ConfigurationError("max_age", max_age, "must be > 0 seconds, or None")
        self.max_events = max_events
        self.max_age = max_age
        self.max_total = max_total
        self._partitions: dict[str | None, _Partition] = {}
        self._total = 0
        # (-size, partition) pushed on every append; stale entries are skipped on pop.
        self._largest: list[tuple[int, int, str | None]] = []
        self._order = 0
        #: Positions before this one are not covered (history began, or a bus gap).
        self._floor = 0
        #: The newest tick dropped with a partition that is no longer kept.
        self._forgotten = 0

    def __len__(self) -> int:
        return self._total

    def start(self, position: int) -> None:
        """Forget everything; cover only what comes after ``position`` (a new start, or a
        bus gap: the frames before it may be incomplete)."""
        self._partitions.clear()
        self._largest.clear()
        self._total = 0
        self._floor = self._forgotten = position

    def append(self, frame: Frame) -> None:
        """Keep ``frame`` (which has a tick, newer than any kept) in its tenant's partition."""
        tick = frame.tick
        if tick is None:
            raise InvalidArgumentError("frame.tick", None, "only frames with a tick are kept")
        if self.max_events == 0 or self.max_total == 0:
            self._floor = max(self._floor, tick)
            return
        key = frame.tenant
        now = time.monotonic()
        partition = self._partitions.get(key)
        if partition is not None:
            self._expire(key, partition, now)  # which may forget it
        partition = self._partitions.get(key)
        if partition is None:
            partition = self._partitions[key] = _Partition()
            partition.trimmed = self._forgotten
        if len(partition.frames) >= self.max_events:
            partition.drop_oldest()
            self._total -= 1
        partition.frames.append(frame)
        partition.ticks.append(tick)
        partition.times.append(now)
        self._total += 1
        self._order += 1
        heapq.heappush(self._largest, (-len(partition.frames), self._order, key))
        if len(self._largest) > 4 * len(self._partitions) + 64:
            self._rebuild_largest()
        while self._total > self.max_total:
            self._shrink_largest()

    async def since(
        self, partitions: Collection[str | None], after: int, limit: int
    ) -> Sequence[Frame] | None:
        """Up to ``limit`` frames of ``partitions`` after tick ``after``, oldest first; None
        when some of them may have been dropped."""
        if after < self._floor:
            return None
        now = time.monotonic()
        sources: list[Iterator[Frame]] = []
        for key in partitions:
            partition = self._partitions.get(key)
            if partition is None:
                if after < self._forgotten:
                    return None
                continue
            self._expire(key, partition, now)
            if after < partition.trimmed:
                return None
            sources.append(partition.after(after))
        if len(sources) == 1:
            return list(islice(sources[0], limit))
        merged = heapq.merge(*sources, key=_tick)
        return list(islice(merged, limit))

    def _expire(self, key: str | None, partition: _Partition, now: float) -> None:
        if self.max_age is None:
            return
        horizon = now - self.max_age
        times = partition.times
        while times and times[0] < horizon:
            partition.drop_oldest()
            self._total -= 1
        if not partition.frames:
            self._forget(key, partition)

    def _shrink_largest(self) -> None:
        while self._largest:
            size, _, key = heapq.heappop(self._largest)
            partition = self._partitions.get(key)
            if partition is not None and len(partition.frames) < -size:
                # It shrank (expiry) since this entry: put it back at its real size.
                self._order += 1
                heapq.heappush(self._largest, (-len(partition.frames), self._order, key))
                continue
            if partition is not None and len(partition.frames) == -size:
                partition.drop_oldest()
                self._total -= 1
                if partition.frames:
                    self._order += 1
                    heapq.heappush(self._largest, (size + 1, self._order, key))
                else:
                    self._forget(key, partition)
                return
        raise AssertionError("history total out of step with its partitions")

    def _rebuild_largest(self) -> None:
        self._largest = [
            (-len(partition.frames), order, key)
            for order, (key, partition) in enumerate(self._partitions.items())
        ]
        heapq.heapify(self._largest)

    def _forget(self, key: str | None, partition: _Partition) -> None:
        del self._partitions[key]
        self._forgotten = max(self._forgotten, partition.trimmed)


def _tick(frame: Frame) -> int:
    return frame.tick or 0
