"""Counters and timings of a broadcaster: the public table of metrics, a snapshot, a hook."""

from __future__ import annotations

import logging
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from enum import Enum
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ._protocols import ISseClientRegistry
    from ._subscription import Subscription

__all__ = [
    "BROADCAST_SECONDS_BOUNDS",
    "RESET_REASONS",
    "Metric",
    "MetricKind",
    "Metrics",
    "MetricsHook",
    "MetricsSnapshot",
    "MetricsSource",
    "NO_TENANT",
    "OTHER_TENANTS",
    "TENANT_HELP",
    "connections_by_tenant",
    "tenant_connections",
]

logger = logging.getLogger("ssebus")

#: Upper bounds (seconds) of the ``broadcast_seconds`` histogram's buckets, +Inf implied.
BROADCAST_SECONDS_BOUNDS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)

#: The ``reason`` of a ``reset`` event ssebus sends; ``resets_by_reason`` has each from zero.
RESET_REASONS = ("not-in-history", "replay-limit", "events-lost")


class MetricKind(str, Enum):
    """How a metric's values add up: what an exporter declares it as."""

    COUNTER = "counter"  #: only goes up; the hook gets increments
    GAUGE = "gauge"  #: a level now; read from the snapshot, never hooked
    HISTOGRAM = "histogram"  #: observations; the hook gets each one

    def __str__(self) -> str:
        return str.__str__(self)

    def __format__(self, spec: str) -> str:
        return str.__format__(self, spec)


class Metric(str, Enum):
    """Every metric a broadcaster keeps, with its kind, unit (UCUM, as OpenTelemetry) and help.

    A member is the str of its name (``Metric.FRAMES_SENT == "frames_sent"``), the name of
    its ``MetricsSnapshot`` field and what the hook is called with.
    """

    _value_: str
    kind: MetricKind
    unit: str
    help: str

    def __new__(cls, name: str, kind: MetricKind, unit: str, help: str) -> Metric:
        member = str.__new__(cls, name)
        member._value_ = name
        member.kind = kind
        member.unit = unit
        member.help = help
        return member

    def __str__(self) -> str:
        return str.__str__(self)

    def __format__(self, spec: str) -> str:
        return str.__format__(self, spec)

    ACTIVE_CONNECTIONS = (
        "active_connections",
        MetricKind.GAUGE,
        "{connection}",
        "Streams open now.",
    )
    CONNECTIONS_OPENED = (
        "connections_opened",
        MetricKind.COUNTER,
        "{connection}",
        "Streams accepted.",
    )
    CONNECTIONS_CLOSED = (
        "connections_closed",
        MetricKind.COUNTER,
        "{connection}",
        "Streams ended, for any reason.",
    )
    CONNECTIONS_REFUSED = (
        "connections_refused",
        MetricKind.COUNTER,
        "{connection}",
        "Streams refused with 503: max_connections or max_connections_per_key reached.",
    )
    EVENTS_PUBLISHED = (
        "events_published",
        MetricKind.COUNTER,
        "{event}",
        "Events broadcast to the connections they are for.",
    )
    EVENTS_DROPPED = (
        "events_dropped",
        MetricKind.COUNTER,
        "{event}",
        "Events not broadcast: their payload raised or could not be serialized.",
    )
    FRAMES_SENT = (
        "frames_sent",
        MetricKind.COUNTER,
        "{frame}",
        "Event frames written to clients, replayed ones included.",
    )
    BYTES_SENT = (
        "bytes_sent",
        MetricKind.COUNTER,
        "By",
        "Bytes written to clients: frames, heartbeats, preludes, resets.",
    )
    WRITE_ERRORS = (
        "write_errors",
        MetricKind.COUNTER,
        "{error}",
        "Writes that raised or outlasted write_timeout; each closes its stream.",
    )
    EVICTIONS = (
        "evictions",
        MetricKind.COUNTER,
        "{connection}",
        "Streams closed because their queue was full (a client too slow).",
    )
    PREDICATE_ERRORS = (
        "predicate_errors",
        MetricKind.COUNTER,
        "{error}",
        "Calls of a route's allow predicate that raised (the frame is not delivered).",
    )
    REPLAYS = (
        "replays",
        MetricKind.COUNTER,
        "{connection}",
        "Streams that resumed from a Last-Event-ID (a catch-up started).",
    )
    REPLAYED_FRAMES = (
        "replayed_frames",
        MetricKind.COUNTER,
        "{frame}",
        "Frames written from history to resuming clients.",
    )
    RESETS = (
        "resets",
        MetricKind.COUNTER,
        "{connection}",
        "reset events sent (the client must reload), by reason in resets_by_reason.",
    )
    GAPS = (
        "gaps",
        MetricKind.COUNTER,
        "{gap}",
        "Times the bus lost events (every client was reset).",
    )
    EVENTS_LOST = (
        "events_lost",
        MetricKind.COUNTER,
        "{event}",
        "Events the bus lost, where it can tell how many.",
    )
    BROADCAST_SECONDS = (
        "broadcast_seconds",
        MetricKind.HISTOGRAM,
        "s",
        "Time to queue one event on every connection: all a publisher waits for.",
    )


#: Called with a metric and an increment (counters) or an observation (histograms). A
#: ``Metric`` is a ``str``, so ``(name: str, value: float)`` hooks fit as they are.
MetricsHook = Callable[[Metric, float], None]


@dataclass(frozen=True, slots=True)
class MetricsSnapshot:
    """The metrics at one moment, a field per ``Metric`` (durations in seconds).

    ``broadcast_seconds`` is given as ``broadcast_count``, ``_sum``, ``_max`` and
    ``_buckets``: (upper bound, cumulative count) pairs, +Inf being ``broadcast_count``.
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
    connections_closed: int = 0
    bytes_sent: int = 0
    replays: int = 0
    replayed_frames: int = 0
    resets_by_reason: tuple[tuple[str, int], ...] = ()
    broadcast_seconds_buckets: tuple[tuple[float, int], ...] = ()

    def as_dict(self) -> dict[str, float]:
        """The numbers of the snapshot as a plain dict, e.g. for a JSON metrics endpoint."""
        return {
            field.name: getattr(self, field.name)
            for field in fields(self)
            if not field.name.endswith(("_by_reason", "_buckets"))
        }


class MetricsSource(Protocol):
    """What an exporter reads: a ``Broadcaster``'s ``metrics()``, and its ``registry`` for the
    per-tenant figures."""

    @property
    def registry(self) -> ISseClientRegistry: ...

    def metrics(self) -> MetricsSnapshot: ...


#: The ``tenant`` label of streams without a tenant, and of all but the busiest tenants.
NO_TENANT = "(none)"
OTHER_TENANTS = "(other)"


def connections_by_tenant(subscriptions: Iterable[Subscription], top: int) -> list[tuple[str, int]]:
    """Streams per tenant for the ``top`` tenants with most, the rest summed as ``(other)``:
    a label per tenant, but never more than ``top + 1`` of them."""
    counts = Counter(s.tenant if s.tenant is not None else NO_TENANT for s in subscriptions)
    busiest = counts.most_common(top)
    rest = sum(counts.values()) - sum(count for _, count in busiest)
    return [*busiest, (OTHER_TENANTS, rest)] if rest else busiest


#: The help of the per-tenant ``tenant_connections`` gauge.
TENANT_HELP = "Streams open now per tenant: the busiest ones, the rest as (other)."


def tenant_connections(broadcaster: MetricsSource, top: int) -> list[tuple[str, int]]:
    """The busiest ``top`` tenants' stream counts, read from the registry now."""
    return connections_by_tenant((c.subscription for c in broadcaster.registry.snapshot()), top)


class Metrics:
    """Mutable counters owned by one broadcaster; ``hook`` sees every change as it happens.

    The hot path adds to the attributes itself; everything else goes through :meth:`add`.
    """

    def __init__(self, hook: MetricsHook | None = None) -> None:
        self.hook = hook
        self.connections_opened = 0
        self.connections_closed = 0
        self.connections_refused = 0
        self.events_published = 0
        self.events_dropped = 0
        self.frames_sent = 0
        self.bytes_sent = 0
        self.write_errors = 0
        self.evictions = 0
        self.predicate_errors = 0
        self.replays = 0
        self.replayed_frames = 0
        self.resets = 0
        self.resets_by_reason = dict.fromkeys(RESET_REASONS, 0)
        self.gaps = 0
        self.events_lost = 0
        self.broadcast_count = 0
        self.broadcast_seconds_sum = 0.0
        self.broadcast_seconds_max = 0.0
        self.broadcast_buckets = [0] * len(BROADCAST_SECONDS_BOUNDS)

    def snapshot(self, active_connections: int) -> MetricsSnapshot:
        """Copy the counters, with the current number of connections."""
        cumulative = []
        total = 0
        for bound, count in zip(BROADCAST_SECONDS_BOUNDS, self.broadcast_buckets, strict=True):
            total += count
            cumulative.append((bound, total))
        return MetricsSnapshot(
            active_connections=active_connections,
            connections_opened=self.connections_opened,
            connections_closed=self.connections_closed,
            connections_refused=self.connections_refused,
            events_published=self.events_published,
            events_dropped=self.events_dropped,
            frames_sent=self.frames_sent,
            bytes_sent=self.bytes_sent,
            write_errors=self.write_errors,
            evictions=self.evictions,
            predicate_errors=self.predicate_errors,
            replays=self.replays,
            replayed_frames=self.replayed_frames,
            resets=self.resets,
            resets_by_reason=tuple(self.resets_by_reason.items()),
            gaps=self.gaps,
            events_lost=self.events_lost,
            broadcast_count=self.broadcast_count,
            broadcast_seconds_sum=self.broadcast_seconds_sum,
            broadcast_seconds_max=self.broadcast_seconds_max,
            broadcast_seconds_buckets=tuple(cumulative),
        )

    def add(self, metric: Metric, amount: int = 1) -> None:
        """Count ``amount`` more of the counter ``metric`` and tell the hook."""
        setattr(self, metric.value, getattr(self, metric.value) + amount)
        if self.hook is not None and amount:
            self.emit(metric, amount)

    def reset(self, reason: str) -> None:
        """Count one ``reset`` event sent, under its ``reason``."""
        self.resets_by_reason[reason] = self.resets_by_reason.get(reason, 0) + 1
        self.add(Metric.RESETS)

    def sent(self, frames: int, size: int) -> None:
        """Tell the hook of one write already counted (``frames`` event frames, ``size`` bytes)."""
        if frames:
            self.emit(Metric.FRAMES_SENT, frames)
        self.emit(Metric.BYTES_SENT, size)

    def observe_broadcast(self, seconds: float) -> None:
        """Record one fan-out's duration."""
        self.broadcast_count += 1
        self.broadcast_seconds_sum += seconds
        if seconds > self.broadcast_seconds_max:
            self.broadcast_seconds_max = seconds
        index = bisect_left(BROADCAST_SECONDS_BOUNDS, seconds)
        if index < len(self.broadcast_buckets):
            self.broadcast_buckets[index] += 1
        self.emit(Metric.BROADCAST_SECONDS, seconds)

    def emit(self, metric: Metric, value: float) -> None:
        """Pass one change to the hook; a failing hook is logged and never disturbs delivery."""
        if self.hook is None:
            return
        try:
            self.hook(metric, value)
        except Exception as exc:
            logger.error("metrics hook failed on %s=%r: %r", metric, value, exc)
