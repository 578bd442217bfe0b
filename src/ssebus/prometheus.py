"""Prometheus exporter (extra ``ssebus[prometheus]``): a ``prometheus_client`` collector.

``register(broadcaster)`` adds a collector that reads ``broadcaster.metrics()`` at each
scrape: nothing is pushed per event, so delivery pays nothing for being scraped.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.metrics_core import Metric as PrometheusMetric
from prometheus_client.registry import Collector

from ._metrics import Metric, MetricKind, MetricsSource

__all__ = ["SseBusCollector", "register"]


class SseBusCollector(Collector):
    """Every ``ssebus.Metric`` of one broadcaster, as ``<namespace>_<name>`` families.

    Counters get ``_total``, ``resets`` a ``reason`` label, ``broadcast_seconds`` buckets.
    """

    def __init__(self, broadcaster: MetricsSource, namespace: str = "ssebus") -> None:
        self.broadcaster = broadcaster
        self.namespace = namespace

    def collect(self) -> Iterator[PrometheusMetric]:
        """One family per metric, from a snapshot taken now."""
        snapshot = self.broadcaster.metrics()
        for metric in Metric:
            name = f"{self.namespace}_{metric}"
            if metric.kind is MetricKind.GAUGE:
                yield GaugeMetricFamily(name, metric.help, value=getattr(snapshot, metric))
            elif metric.kind is MetricKind.HISTOGRAM:
                buckets = [
                    (repr(bound), count) for bound, count in snapshot.broadcast_seconds_buckets
                ]
                buckets.append(("+Inf", snapshot.broadcast_count))
                yield HistogramMetricFamily(
                    name, metric.help, buckets=buckets, sum_value=snapshot.broadcast_seconds_sum
                )
            elif metric is Metric.RESETS:
                family = CounterMetricFamily(name, metric.help, labels=["reason"])
                for reason, count in snapshot.resets_by_reason:
                    family.add_metric([reason], count)
                yield family
            else:
                yield CounterMetricFamily(name, metric.help, value=getattr(snapshot, metric))


def register(
    broadcaster: MetricsSource,
    registry: CollectorRegistry = REGISTRY,
    *,
    namespace: str = "ssebus",
) -> SseBusCollector:
    """Add ``broadcaster``'s metrics to ``registry`` (the default one unless given)."""
    collector = SseBusCollector(broadcaster, namespace)
    registry.register(collector)
    return collector
