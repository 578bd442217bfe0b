"""The public metric table (``ssebus.Metric``), the hook, and what each metric counts."""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import fields
from typing import Any

import anyio.abc
import pytest
from clients import join, leave, running, wait_until
from domain import OrderCreatedDomainEvent, order_events

import ssebus
from ssebus import RESET_REASONS, Metric, MetricKind, MetricsSnapshot, Subscription
from ssebus._metrics import NO_TENANT, OTHER_TENANTS, Metrics, connections_by_tenant

pytestmark = pytest.mark.anyio


def pipeline(
    **options: Any,
) -> AbstractAsyncContextManager[
    tuple[ssebus.InMemoryEventBus, ssebus.Broadcaster, anyio.abc.TaskGroup]
]:
    return running(order_events(), **options)


def created(n: int) -> OrderCreatedDomainEvent:
    return OrderCreatedDomainEvent(f"ord-{n}")


async def publish_created(
    bus: ssebus.InMemoryEventBus, _: ssebus.Broadcaster, ns: Sequence[int]
) -> None:
    for n in ns:
        await bus.publish(created(n))


def test_every_metric_has_a_kind_a_unit_and_help_and_a_field_in_the_snapshot() -> None:
    snapshot_fields = {field.name for field in fields(MetricsSnapshot)}
    assert {"bytes_sent", "replays", "replayed_frames", "connections_closed"} <= set(Metric)
    for metric in Metric:
        assert isinstance(metric.kind, MetricKind)
        assert metric.unit
        assert metric.help.strip()
        if metric.kind is MetricKind.HISTOGRAM:
            assert {f"{metric}_sum", f"{metric}_buckets"} <= snapshot_fields
        else:
            assert metric.value in snapshot_fields
    assert Metric.ACTIVE_CONNECTIONS.kind is MetricKind.GAUGE
    assert Metric.BYTES_SENT.kind is MetricKind.COUNTER
    assert Metric.BYTES_SENT.unit == "By"
    assert Metric.BROADCAST_SECONDS.kind is MetricKind.HISTOGRAM
    assert Metric.BROADCAST_SECONDS.unit == "s"


def test_a_metric_is_the_string_of_its_name() -> None:
    name: str = Metric.FRAMES_SENT  # what a hook typed (name: str, value: float) is given
    assert name == "frames_sent"
    assert str(Metric.FRAMES_SENT) == f"{Metric.FRAMES_SENT}" == "frames_sent"
    assert {"frames_sent": 1}[Metric.FRAMES_SENT] == 1
    assert Metric("frames_sent") is Metric.FRAMES_SENT  # type: ignore[call-arg]  # by value
    assert str(MetricKind.COUNTER) == "counter"
    assert ssebus.Metric is Metric


async def test_the_hook_receives_metrics_that_say_their_kind() -> None:
    hooked: list[tuple[Metric, float]] = []
    async with pipeline(metrics_hook=lambda n, v: hooked.append((n, v))) as (bus, b, tasks):
        client = await join(tasks, b)
        await publish_created(bus, b, [1, 2])
        await wait_until(lambda: len(client.events()) == 2)
    assert all(isinstance(metric, Metric) for metric, _ in hooked)
    kinds = {metric: metric.kind for metric, _ in hooked}
    assert kinds[Metric.EVENTS_PUBLISHED] is MetricKind.COUNTER
    assert kinds[Metric.BROADCAST_SECONDS] is MetricKind.HISTOGRAM
    assert MetricKind.GAUGE not in kinds.values()  # levels are read, never hooked
    assert sum(v for m, v in hooked if m == "bytes_sent") == len(client.stream)


async def test_a_str_hook_written_for_the_old_names_still_sees_them() -> None:
    seen: dict[str, float] = {}

    def hook(name: str, value: float) -> None:
        seen[name] = seen.get(name, 0) + value

    async with pipeline(metrics_hook=hook) as (bus, b, tasks):
        client = await join(tasks, b)
        await publish_created(bus, b, [1, 2, 3])
        await wait_until(lambda: len(client.events()) == 3)
    assert seen["events_published"] == 3
    assert seen["frames_sent"] == 3
    assert seen["connections_opened"] == seen["connections_closed"] == 1


async def test_bytes_sent_counts_every_byte_the_clients_received() -> None:
    async with pipeline() as (bus, b, tasks):
        clients = [await join(tasks, b, retry=1000) for _ in range(3)]
        await publish_created(bus, b, [1, 2])
        await wait_until(lambda: all(len(c.events()) == 2 for c in clients))
    received = sum(len(c.stream) for c in clients)
    assert received > 0
    assert b.metrics().bytes_sent == received


async def test_connections_closed_counts_streams_that_ended() -> None:
    async with pipeline() as (_, b, tasks):
        first = await join(tasks, b)
        await join(tasks, b)
        await leave(first)
        metrics = b.metrics()
    assert (metrics.connections_opened, metrics.connections_closed) == (2, 1)
    assert metrics.active_connections == 1


async def test_a_client_that_resumes_counts_one_replay_and_the_frames_it_was_replayed() -> None:
    async with pipeline() as (bus, b, tasks):
        first = await join(tasks, b)
        await wait_until(lambda: bool(first.writes))
        await leave(first)
        await publish_created(bus, b, [1, 2, 3])
        fresh = await join(tasks, b)
        resumed = await join(tasks, b, last_event_id=first.last_event_id())
        await wait_until(lambda: len(resumed.events()) == 3)
        metrics = b.metrics()
    assert (metrics.replays, metrics.replayed_frames) == (1, 3)
    assert fresh.events() == []
    assert metrics.resets == 0


async def test_resets_are_counted_by_reason() -> None:
    async with pipeline() as (bus, b, tasks):
        await bus.publish(created(1))
        client = await join(tasks, b, last_event_id="not-an-id-of-ours")
        await wait_until(lambda: [e.type for e in client.events()] == ["reset"])
        metrics = b.metrics()
    assert json.loads(client.events()[0].data)["reason"] == "not-in-history"
    assert metrics.resets == 1
    assert dict(metrics.resets_by_reason) == dict.fromkeys(RESET_REASONS, 0) | {"not-in-history": 1}
    assert metrics.replays == 1  # it came with an id: the catch-up started, and reset it


def test_broadcast_durations_fill_cumulative_buckets() -> None:
    metrics = Metrics()
    for seconds in (0.0003, 0.002, 0.002, 5.0):
        metrics.observe_broadcast(seconds)
    snapshot = metrics.snapshot(0)
    buckets = dict(snapshot.broadcast_seconds_buckets)
    assert (buckets[0.00025], buckets[0.0005], buckets[0.0025], buckets[1.0]) == (0, 1, 3, 3)
    assert snapshot.broadcast_count == 4  # the +Inf bucket
    assert snapshot.broadcast_seconds_max == 5.0
    assert snapshot.broadcast_seconds_sum == pytest.approx(5.0043)


def test_as_dict_gives_every_counter_and_gauge_as_a_number() -> None:
    numbers = Metrics().snapshot(2).as_dict()
    for metric in Metric:
        if metric.kind is not MetricKind.HISTOGRAM:
            assert numbers[metric] == (2 if metric is Metric.ACTIVE_CONNECTIONS else 0)
    assert all(isinstance(value, (int, float)) for value in numbers.values())
    json.dumps(numbers)


def test_connections_by_tenant_keeps_the_busiest_tenants_and_sums_the_rest() -> None:
    tenants = ["a", "a", "a", "b", "b", "c", None, "d"]
    counted = connections_by_tenant([Subscription(tenant=t) for t in tenants], top=2)
    assert counted == [("a", 3), ("b", 2), (OTHER_TENANTS, 3)]
    assert connections_by_tenant([Subscription(tenant=None)], top=2) == [(NO_TENANT, 1)]
    assert connections_by_tenant([], top=2) == []
