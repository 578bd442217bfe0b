"""Counters and timings of a broadcaster, as a snapshot and as a hook for exporters."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Metrics", "MetricsHook", "MetricsSnapshot"]

logger = logging.getLogger("ssebus")

#: Called with a metric's name and an increment (counters) or an observation (durations).
MetricsHook = Callable[[str, float], None]


@dataclass(frozen=True, slots=True)
class MetricsSnapshot:
    """The metrics at one moment. Durations are in seconds.

    ``broadcast_seconds_*`` time the fan-out of one event to every queue: ssebus never
    waits on a client's socket while broadcasting, so this is the cost the publisher sees.
    """

    active_connections: int
    connections_opened: int
    connections_refused: int
    events_published: int
    events_dropped: int
    frames_sent: int
    write_errors: int
    evictions: int
    predicate_errors: int
    resets: int
    gaps: int
    events_lost: int
    broadcast_count: int
    broadcast_seconds_sum: float
    broadcast_seconds_max: float

    def as_dict(self) -> dict[str, float]:
        """The snapshot as a plain dict, e.g. for a JSON metrics endpoint."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


class Metrics:
    """Mutable counters owned by one broadcaster; ``hook`` sees every change as it happens.

    Hook names: ``connections_opened``, ``connections_closed``, ``connections_refused`` (a
    limit was reached), ``events_published``,
    ``events_dropped``, ``frames_sent``, ``write_errors``, ``evictions``, ``predicate_errors``,
    ``resets`` (a client told to reload), ``gaps`` (the bus lost events) and ``events_lost``
    (how many; increments) and
    ``broadcast_seconds`` (one observation per broadcast).
    """

    def __init__(self, hook: MetricsHook | None = None) -> None:
        self.hook = hook
        self.connections_opened = 0
        self.connections_refused = 0
        self.events_published = 0
        self.events_dropped = 0
        self.frames_sent = 0
        self.write_errors = 0
        self.evictions = 0
        self.predicate_errors = 0
        self.resets = 0
        self.gaps = 0
        self.events_lost = 0
        self.broadcast_count = 0
        self.broadcast_seconds_sum = 0.0
        self.broadcast_seconds_max = 0.0

    def snapshot(self, active_connections: int) -> MetricsSnapshot:
        """Copy the counters, with the current number of connections."""
        return MetricsSnapshot(
            active_connections=active_connections,
            connections_opened=self.connections_opened,
            connections_refused=self.connections_refused,
            events_published=self.events_published,
            events_dropped=self.events_dropped,
            frames_sent=self.frames_sent,
            write_errors=self.write_errors,
            evictions=self.evictions,
            predicate_errors=self.predicate_errors,
            resets=self.resets,
            gaps=self.gaps,
            events_lost=self.events_lost,
            broadcast_count=self.broadcast_count,
            broadcast_seconds_sum=self.broadcast_seconds_sum,
            broadcast_seconds_max=self.broadcast_seconds_max,
        )

    def observe_broadcast(self, seconds: float) -> None:
        """Record one fan-out's duration."""
        self.broadcast_count += 1
        self.broadcast_seconds_sum += seconds
        if seconds > self.broadcast_seconds_max:
            self.broadcast_seconds_max = seconds
        self.emit("broadcast_seconds", seconds)

    def emit(self, name: str, value: float) -> None:
        """Pass one change to the hook; a failing hook is logged and never disturbs delivery."""
        if self.hook is None:
            return
        try:
            self.hook(name, value)
        except Exception as exc:
            logger.error("metrics hook failed on %s=%r: %r", name, value, exc)
