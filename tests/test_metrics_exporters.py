"""The Prometheus and OpenTelemetry exporters, read by the real libraries."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx
import pytest
from clients import join, running, wait_until
from domain import OrderCreatedDomainEvent, order_events
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import Gauge, InMemoryMetricReader, NumberDataPoint, Sum
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from servers import serve_demo

import ssebus.otel
import ssebus.prometheus
from ssebus import Broadcaster, InMemoryEventBus, Metric, MetricKind, Subscription

pytestmark = pytest.mark.anyio


async def publish(bus: InMemoryEventBus, numbers: Sequence[int]) -> None:
    for n in numbers:
        await bus.publish(OrderCreatedDomainEvent(f"ord-{n}"))


def scrape(registry: CollectorRegistry) -> dict[str, Any]:
    """The families of a scrape, as Prometheus parses the text format, by name."""
    text = generate_latest(registry).decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def sample(families: dict[str, Any], name: str, **labels: str) -> float:
    """The value of the one sample called ``name`` with ``labels``, in any family."""
    (value,) = [
        s.value
        for family in families.values()
        for s in family.samples
        if s.name == name and s.labels == labels
    ]
    return float(value)


async def test_a_prometheus_scrape_declares_each_metric_with_its_kind() -> None:
    registry = CollectorRegistry()
    async with running(order_events()) as (_, broadcaster, tasks):
        ssebus.prometheus.register(broadcaster, registry)
        await join(tasks, broadcaster, last_event_id="not-an-id-of-ours")
        await wait_until(lambda: broadcaster.metrics().resets == 1)
        text = generate_latest(registry).decode()
        families = scrape(registry)
    assert "# TYPE ssebus_frames_sent_total counter" in text
    assert "# TYPE ssebus_active_connections gauge" in text
    assert "# TYPE ssebus_broadcast_seconds histogram" in text
    for metric in Metric:
        assert families[f"ssebus_{metric}"].type == metric.kind.value
        assert families[f"ssebus_{metric}"].documentation == metric.help
    assert sample(families, "ssebus_resets_total", reason="not-in-history") == 1
    assert sample(families, "ssebus_resets_total", reason="replay-limit") == 0


async def test_a_prometheus_scrape_reads_the_metrics_at_scrape_time() -> None:
    registry = CollectorRegistry()
    async with running(order_events()) as (bus, broadcaster, tasks):
        ssebus.prometheus.register(broadcaster, registry, namespace="orders")
        before = scrape(registry)
        clients = [await join(tasks, broadcaster) for _ in range(2)]
        await publish(bus, [1, 2, 3])
        await wait_until(lambda: all(len(c.events()) == 3 for c in clients))
        after = scrape(registry)
        snapshot = broadcaster.metrics()
    assert sample(before, "orders_events_published_total") == 0
    assert sample(after, "orders_events_published_total") == 3
    assert sample(after, "orders_frames_sent_total") == 6
    assert sample(after, "orders_bytes_sent_total") == snapshot.bytes_sent > 0
    assert sample(after, "orders_active_connections") == 2
    assert sample(after, "orders_broadcast_seconds_count") == 3
    assert sample(after, "orders_broadcast_seconds_bucket", le="+Inf") == 3
    assert sample(after, "orders_broadcast_seconds_sum") == snapshot.broadcast_seconds_sum


def test_the_demo_serves_a_prometheus_scrape_over_http() -> None:
    with serve_demo() as server:
        httpx.post(f"{server.url}/orders", json={"customer": "ana", "tenant": "acme"})
        with httpx.stream("GET", f"{server.url}/events?tenant=globex") as stream:
            chunks = stream.iter_raw()  # kept: a dropped iterator closes the stream
            assert next(chunks).startswith(b"retry:")  # the prelude: it is registered
            response = httpx.get(f"{server.url}/metrics/prometheus")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    assert families["ssebus_events_published"].type == "counter"
    assert sample(families, "ssebus_events_published_total") == 1
    assert families["ssebus_active_connections"].type == "gauge"
    assert families["ssebus_broadcast_seconds"].type == "histogram"
    assert sample(families, "ssebus_tenant_connections", tenant="globex") == 1


async def test_opentelemetry_reads_each_metric_from_observable_instruments() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    async with running(order_events()) as (bus, broadcaster, tasks):
        ssebus.otel.instrument(broadcaster, provider.get_meter("ssebus"))
        client = await join(tasks, broadcaster)
        await join(tasks, broadcaster, last_event_id="not-an-id-of-ours")
        await publish(bus, [1, 2])
        await wait_until(lambda: len(client.events()) == 2 and broadcaster.metrics().resets == 1)
        data = reader.get_metrics_data()
        snapshot = broadcaster.metrics()
    assert data is not None
    (scope,) = [s for r in data.resource_metrics for s in r.scope_metrics]
    metrics = {m.name: m for m in scope.metrics}
    for metric in Metric:
        if metric.kind is MetricKind.HISTOGRAM:
            continue
        exported = metrics[f"ssebus.{metric}"]
        assert exported.unit == metric.unit
        assert exported.description == metric.help
        if metric.kind is MetricKind.GAUGE:
            assert isinstance(exported.data, Gauge)
        else:
            assert isinstance(exported.data, Sum)
            assert exported.data.is_monotonic
    points = {
        name: [
            (p.attributes, p.value)
            for p in metric.data.data_points
            if isinstance(p, NumberDataPoint)
        ]
        for name, metric in metrics.items()
    }
    assert points["ssebus.active_connections"] == [({}, 2)]
    assert points["ssebus.events_published"] == [({}, 2)]
    assert points["ssebus.bytes_sent"] == [({}, snapshot.bytes_sent)]
    assert points["ssebus.broadcast_seconds.count"] == [({}, 2)]
    assert ({"reason": "not-in-history"}, 1) in points["ssebus.resets"]
    assert isinstance(metrics["ssebus.broadcast_seconds.max"].data, Gauge)


async def test_per_tenant_connections_are_labelled_for_the_busiest_tenants_only() -> None:
    registry = CollectorRegistry()
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    async with running(order_events()) as (_, broadcaster, tasks):
        ssebus.prometheus.register(broadcaster, registry, tenants=1)
        ssebus.otel.instrument(broadcaster, provider.get_meter("ssebus"), tenants=1)
        for tenant in ["acme", "acme", "globex", "initech"]:
            await join(tasks, broadcaster, subscription=Subscription(tenant=tenant))
        families = scrape(registry)
        data = reader.get_metrics_data()
    assert families["ssebus_tenant_connections"].type == "gauge"
    labelled = {s.labels["tenant"]: s.value for s in families["ssebus_tenant_connections"].samples}
    assert labelled == {"acme": 2, "(other)": 2}
    assert data is not None
    (exported,) = [
        m
        for r in data.resource_metrics
        for s in r.scope_metrics
        for m in s.metrics
        if m.name == "ssebus.tenant.connections"
    ]
    assert isinstance(exported.data, Gauge)
    assert {
        p.attributes["tenant"]: p.value
        for p in exported.data.data_points
        if p.attributes is not None
    } == {"acme": 2, "(other)": 2}


def test_the_exporters_accept_a_broadcaster_before_it_runs() -> None:
    broadcaster = Broadcaster(InMemoryEventBus(), order_events())
    registry = CollectorRegistry()
    ssebus.prometheus.register(broadcaster, registry)
    assert sample(scrape(registry), "ssebus_connections_opened_total") == 0
