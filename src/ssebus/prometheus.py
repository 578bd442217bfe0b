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

from ._metrics import TENANT_HELP, Metric, MetricKind, MetricsSource, tenant_connections

__all__ = ["SseBusCollector", "register"]


class SseBusCollector(Collector):
    """Every ``ssebus.Metric`` of one broadcaster, as ``<namespace>_<name>`` families.

    Counters get ``_total``, ``resets`` a ``reason`` label, ``broadcast_seconds`` buckets;
    ``tenants``: also ``<namespace>_tenant_connections`` for the busiest tenants, + "(other)".
    """

    def __init__(
        self, broadcaster: MetricsSource, namespace: str = "ssebus", tenants: int = 0
    ) -> None:
        self.broadcaster = broadcaster
        self.namespace = namespace
        self.tenants = tenants

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
        if self.tenants:
            gauge = GaugeMetricFamily(
                f"{self.namespace}_tenant_connections", TENANT_HELP, labels=["tenant"]
            )
            for tenant, count in tenant_connections(self.broadcaster, self.tenants):
                gauge.add_metric([tenant], count)
            yield gauge


def register(
    broadcaster: MetricsSource,
    registry: CollectorRegistry = REGISTRY,
    *,
    namespace: str = "ssebus",
    tenants: int = 0,
) -> SseBusCollector:
    """Add ``broadcaster``'s metrics to ``registry`` (the default one unless given); with
    ``tenants``, the streams of that many busiest tenants too."""
    collector = SseBusCollector(broadcaster, namespace, tenants)
    registry.register(collector)
    return collector
