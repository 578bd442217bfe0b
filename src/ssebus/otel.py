"""OpenTelemetry exporter (extra ``ssebus[otel]``): observable instruments on a ``Meter``.

``instrument(broadcaster, meter)`` creates one instrument per ``ssebus.Metric`` whose
callback reads ``broadcaster.metrics()`` when the SDK collects: nothing is pushed per event.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from opentelemetry.metrics import CallbackOptions, Instrument, Meter, Observation

from ._metrics import (
    TENANT_HELP,
    Metric,
    MetricKind,
    MetricsSnapshot,
    MetricsSource,
    tenant_connections,
)

__all__ = ["instrument"]

Read = Callable[[MetricsSnapshot], Iterable[Observation]]


def instrument(
    broadcaster: MetricsSource, meter: Meter, *, prefix: str = "ssebus.", tenants: int = 0
) -> list[Instrument]:
    """Observe ``broadcaster``'s metrics on ``meter`` as ``<prefix><name>``.

    Counters are observable counters (``resets`` with a ``reason`` attribute), gauges
    observable gauges. An observable histogram does not exist in OpenTelemetry, so
    ``broadcast_seconds`` is given as ``.count`` and ``.sum`` counters and a ``.max`` gauge.
    ``tenants``: also ``tenant.connections`` for that many busiest tenants, + "(other)".
    """

    def callback(read: Read) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            return read(broadcaster.metrics())

        return observe

    def value(name: str) -> Read:
        return lambda snapshot: [Observation(getattr(snapshot, name))]

    instruments: list[Instrument] = []
    for metric in Metric:
        name = f"{prefix}{metric}"
        if metric.kind is MetricKind.GAUGE:
            instruments.append(
                meter.create_observable_gauge(
                    name, [callback(value(metric))], metric.unit, metric.help
                )
            )
        elif metric.kind is MetricKind.HISTOGRAM:
            instruments += [
                meter.create_observable_counter(
                    f"{name}.count",
                    [callback(value("broadcast_count"))],
                    "{broadcast}",
                    f"{metric.help} (how many)",
                ),
                meter.create_observable_counter(
                    f"{name}.sum",
                    [callback(value("broadcast_seconds_sum"))],
                    metric.unit,
                    f"{metric.help} (their sum)",
                ),
                meter.create_observable_gauge(
                    f"{name}.max",
                    [callback(value("broadcast_seconds_max"))],
                    metric.unit,
                    f"{metric.help} (the longest)",
                ),
            ]
        elif metric is Metric.RESETS:
            instruments.append(
                meter.create_observable_counter(
                    name,
                    [callback(_by_reason)],
                    metric.unit,
                    metric.help,
                )
            )
        else:
            instruments.append(
                meter.create_observable_counter(
                    name, [callback(value(metric))], metric.unit, metric.help
                )
            )
    if tenants:

        def per_tenant(options: CallbackOptions) -> Iterable[Observation]:
            counted = tenant_connections(broadcaster, tenants)
            return [Observation(count, {"tenant": tenant}) for tenant, count in counted]

        instruments.append(
            meter.create_observable_gauge(
                f"{prefix}tenant.connections", [per_tenant], "{connection}", TENANT_HELP
            )
        )
    return instruments


def _by_reason(snapshot: MetricsSnapshot) -> Iterable[Observation]:
    """The ``resets`` counter, one observation per reason."""
    return [Observation(count, {"reason": reason}) for reason, count in snapshot.resets_by_reason]
