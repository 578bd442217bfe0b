"""``InMemoryEventBus``: how domain events reach their handlers, in one process.

The rules: an event reaches the handlers of its type and of every base class; the handlers
of one event run concurrently and ``publish`` waits for them all; a handler that raises or
overruns ``handler_timeout`` is logged with the event type and disturbs neither the other
handlers nor the publisher; publishing to nobody does nothing; a closed bus refuses events.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio
import pytest
from domain import DomainEvent, OrderCreatedDomainEvent, OrderStatusChangedDomainEvent

from ssebus import ClosedError, ConfigurationError, IEventBus, InMemoryEventBus

pytestmark = pytest.mark.anyio

Handler = Callable[[object], Awaitable[None]]


@dataclass(frozen=True)
class PriorityOrderCreatedDomainEvent(OrderCreatedDomainEvent):
    """A subclass of a subclass, to check delivery along the whole MRO."""


class Recorder:
    """Makes handlers that record, by name, every event they receive."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, object]] = []

    def handler(self, name: str) -> Handler:
        async def handle(event: object) -> None:
            self.seen.append((name, event))

        return handle

    def names(self) -> list[str]:
        return sorted(name for name, _ in self.seen)


# --- delivery ------------------------------------------------------------------------------


async def test_in_memory_event_bus_satisfies_the_ievent_bus_protocol() -> None:
    assert isinstance(InMemoryEventBus(), IEventBus)


async def test_handlers_of_the_event_type_and_of_every_base_class_all_run() -> None:
    recorder = Recorder()
    event = PriorityOrderCreatedDomainEvent("ord-1")
    async with InMemoryEventBus() as bus:
        bus.subscribe(PriorityOrderCreatedDomainEvent, recorder.handler("own type"))
        bus.subscribe(OrderCreatedDomainEvent, recorder.handler("base"))
        bus.subscribe(DomainEvent, recorder.handler("base of base"))
        bus.subscribe(object, recorder.handler("object"))
        bus.subscribe(OrderStatusChangedDomainEvent, recorder.handler("unrelated"))
        await bus.publish(event)
    assert recorder.names() == ["base", "base of base", "object", "own type"]
    assert all(seen is event for _, seen in recorder.seen)


async def test_a_handler_of_a_subclass_does_not_receive_the_base_class_event() -> None:
    recorder = Recorder()
    async with InMemoryEventBus() as bus:
        bus.subscribe(PriorityOrderCreatedDomainEvent, recorder.handler("subclass"))
        await bus.publish(OrderCreatedDomainEvent("ord-1"))
    assert recorder.seen == []


async def test_every_handler_of_one_type_runs_once_per_event() -> None:
    recorder = Recorder()
    async with InMemoryEventBus() as bus:
        for name in ("a", "b", "c"):
            bus.subscribe(OrderCreatedDomainEvent, recorder.handler(name))
        await bus.publish(OrderCreatedDomainEvent("ord-1"))
        await bus.publish(OrderCreatedDomainEvent("ord-2"))
    assert recorder.names() == ["a", "a", "b", "b", "c", "c"]


async def test_subscribe_returns_an_unsubscribe_that_stops_only_that_handler() -> None:
    recorder = Recorder()
    async with InMemoryEventBus() as bus:
        unsubscribe = bus.subscribe(OrderCreatedDomainEvent, recorder.handler("gone"))
        bus.subscribe(OrderCreatedDomainEvent, recorder.handler("kept"))
        await bus.publish(OrderCreatedDomainEvent("ord-1"))
        unsubscribe()
        await bus.publish(OrderCreatedDomainEvent("ord-2"))
    seen = sorted((name, getattr(event, "order_id", None)) for name, event in recorder.seen)
    assert seen == [("gone", "ord-1"), ("kept", "ord-1"), ("kept", "ord-2")]


async def test_unsubscribing_twice_is_harmless() -> None:
    recorder = Recorder()
    async with InMemoryEventBus() as bus:
        unsubscribe = bus.subscribe(OrderCreatedDomainEvent, recorder.handler("a"))
        unsubscribe()
        unsubscribe()
        await bus.publish(OrderCreatedDomainEvent("ord-1"))
    assert recorder.seen == []


async def test_unsubscribing_a_base_class_handler_takes_effect_for_subclass_events() -> None:
    recorder = Recorder()
    async with InMemoryEventBus() as bus:
        unsubscribe = bus.subscribe(DomainEvent, recorder.handler("base"))
        await bus.publish(OrderCreatedDomainEvent("ord-1"))  # fills the per-type cache
        unsubscribe()
        await bus.publish(OrderCreatedDomainEvent("ord-2"))
    assert recorder.seen == [("base", OrderCreatedDomainEvent("ord-1"))]


async def test_a_handler_subscribed_after_a_publish_receives_later_events() -> None:
    recorder = Recorder()
    async with InMemoryEventBus() as bus:
        await bus.publish(OrderCreatedDomainEvent("ord-1"))  # caches "no handlers"
        bus.subscribe(DomainEvent, recorder.handler("late"))
        await bus.publish(OrderCreatedDomainEvent("ord-2"))
    assert recorder.seen == [("late", OrderCreatedDomainEvent("ord-2"))]


async def test_publishing_an_event_nobody_subscribed_to_does_nothing() -> None:
    recorder = Recorder()
    async with InMemoryEventBus() as bus:
        bus.subscribe(OrderStatusChangedDomainEvent, recorder.handler("other"))
        await bus.publish(OrderCreatedDomainEvent("ord-1"))
        await bus.publish("not even a domain event")
    assert recorder.seen == []


async def test_publish_waits_until_every_handler_has_finished() -> None:
    finished: list[str] = []

    async def slow(event: object) -> None:
        await anyio.sleep(0.01)
        finished.append("slow")

    async def fast(event: object) -> None:
        finished.append("fast")

    async with InMemoryEventBus() as bus:
        bus.subscribe(OrderCreatedDomainEvent, slow)
        bus.subscribe(OrderCreatedDomainEvent, fast)
        with anyio.fail_after(2):
            await bus.publish(OrderCreatedDomainEvent("ord-1"))
        assert sorted(finished) == ["fast", "slow"]


async def test_the_handlers_of_one_event_run_concurrently() -> None:
    """Each handler waits for the other to have started: only concurrent handlers finish."""
    first_started, second_started = anyio.Event(), anyio.Event()
    finished: list[str] = []

    async def first(event: object) -> None:
        first_started.set()
        await second_started.wait()
        finished.append("first")

    async def second(event: object) -> None:
        second_started.set()
        await first_started.wait()
        finished.append("second")

    async with InMemoryEventBus(handler_timeout=None) as bus:
        bus.subscribe(OrderCreatedDomainEvent, first)
        bus.subscribe(DomainEvent, second)
        with anyio.fail_after(2):
            await bus.publish(OrderCreatedDomainEvent("ord-1"))
    assert sorted(finished) == ["first", "second"]


# --- failures ------------------------------------------------------------------------------


async def test_a_failing_handler_is_logged_with_the_event_type_and_spares_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    recorder = Recorder()

    async def broken(event: object) -> None:
        raise RuntimeError("database is down")

    caplog.set_level(logging.ERROR, logger="ssebus")
    async with InMemoryEventBus() as bus:
        bus.subscribe(OrderCreatedDomainEvent, recorder.handler("before"))
        bus.subscribe(OrderCreatedDomainEvent, broken)
        bus.subscribe(DomainEvent, recorder.handler("after"))
        await bus.publish(OrderCreatedDomainEvent("ord-1"))  # does not raise
        await bus.publish(OrderCreatedDomainEvent("ord-2"))
    assert recorder.names() == ["after", "after", "before", "before"]
    failures = [r for r in caplog.records if r.name == "ssebus" and r.levelno >= logging.ERROR]
    assert len(failures) == 2
    for record in failures:
        assert "OrderCreatedDomainEvent" in record.getMessage()
        assert "RuntimeError('database is down')" in record.getMessage()
        assert record.exc_info is None  # one line, no traceback


async def test_a_single_failing_handler_does_not_raise_into_the_publisher(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken(event: object) -> None:
        raise ValueError("boom")

    caplog.set_level(logging.ERROR, logger="ssebus")
    async with InMemoryEventBus() as bus:
        bus.subscribe(OrderStatusChangedDomainEvent, broken)
        await bus.publish(OrderStatusChangedDomainEvent("ord-1", "created", "paid"))
    assert any("OrderStatusChangedDomainEvent" in r.getMessage() for r in caplog.records)


async def test_a_handler_overrunning_handler_timeout_is_cancelled_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    recorder = Recorder()
    cancelled = anyio.Event()

    async def stuck(event: object) -> None:
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()

    caplog.set_level(logging.ERROR, logger="ssebus")
    async with InMemoryEventBus(handler_timeout=0.02) as bus:
        bus.subscribe(OrderCreatedDomainEvent, stuck)
        bus.subscribe(OrderCreatedDomainEvent, recorder.handler("prompt"))
        with anyio.fail_after(2):
            await bus.publish(OrderCreatedDomainEvent("ord-1"))
    assert cancelled.is_set()
    assert recorder.names() == ["prompt"]
    overruns = [r for r in caplog.records if r.name == "ssebus" and r.levelno >= logging.ERROR]
    assert len(overruns) == 1
    assert "OrderCreatedDomainEvent" in overruns[0].getMessage()
    assert "cancelled" in overruns[0].getMessage()


async def test_a_lone_handler_overrunning_handler_timeout_is_cancelled_too(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def stuck(event: object) -> None:
        await anyio.sleep_forever()

    caplog.set_level(logging.ERROR, logger="ssebus")
    async with InMemoryEventBus(handler_timeout=0.02) as bus:
        bus.subscribe(OrderCreatedDomainEvent, stuck)
        with anyio.fail_after(2):
            await bus.publish(OrderCreatedDomainEvent("ord-1"))
    assert any("OrderCreatedDomainEvent" in r.getMessage() for r in caplog.records)


async def test_a_handler_within_handler_timeout_is_not_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    recorder = Recorder()
    caplog.set_level(logging.DEBUG, logger="ssebus")
    async with InMemoryEventBus(handler_timeout=5) as bus:
        bus.subscribe(OrderCreatedDomainEvent, recorder.handler("a"))
        await bus.publish(OrderCreatedDomainEvent("ord-1"))
    assert recorder.names() == ["a"]
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


async def test_the_caller_cancelling_publish_is_not_swallowed() -> None:
    started = anyio.Event()

    async def slow(event: object) -> None:
        started.set()
        await anyio.sleep_forever()

    async with InMemoryEventBus(handler_timeout=None) as bus:
        bus.subscribe(OrderCreatedDomainEvent, slow)
        with anyio.move_on_after(0.02) as scope:
            await bus.publish(OrderCreatedDomainEvent("ord-1"))
    assert started.is_set()
    assert scope.cancelled_caught


# --- lifecycle and settings ----------------------------------------------------------------


async def test_publish_after_the_bus_context_exits_raises_closed_error() -> None:
    recorder = Recorder()
    async with InMemoryEventBus() as bus:
        bus.subscribe(OrderCreatedDomainEvent, recorder.handler("a"))
    with pytest.raises(ClosedError):
        await bus.publish(OrderCreatedDomainEvent("ord-1"))
    assert recorder.seen == []


@pytest.mark.parametrize("limit", [0, -1, -0.5])
async def test_a_non_positive_handler_timeout_is_refused_naming_it(limit: float) -> None:
    with pytest.raises(ConfigurationError, match="handler_timeout") as caught:
        InMemoryEventBus(handler_timeout=limit)
    assert caught.value.setting == "handler_timeout"


async def test_subscribing_to_something_that_is_not_a_class_is_refused() -> None:
    recorder = Recorder()
    bus = InMemoryEventBus()
    with pytest.raises(ConfigurationError) as caught:
        bus.subscribe(OrderCreatedDomainEvent("ord-1"), recorder.handler("a"))  # type: ignore[arg-type]
    assert caught.value.setting == "event_type"


async def test_subscribing_something_not_callable_is_refused() -> None:
    bus = InMemoryEventBus()
    with pytest.raises(ConfigurationError) as caught:
        bus.subscribe(OrderCreatedDomainEvent, "not a handler")  # type: ignore[arg-type]
    assert caught.value.setting == "handler"


async def test_a_publish_repeated_with_its_idempotency_key_is_delivered_once() -> None:
    recorder = Recorder()
    async with InMemoryEventBus(dedupe_window=60) as bus:
        bus.subscribe(OrderCreatedDomainEvent, recorder.handler("h"))
        await bus.publish(OrderCreatedDomainEvent("ord-1"), idempotency_key="k-1")
        await bus.publish(OrderCreatedDomainEvent("ord-1"), idempotency_key="k-1")  # a retry
        await bus.publish(OrderCreatedDomainEvent("ord-2"), idempotency_key="k-2")
        await bus.publish(OrderCreatedDomainEvent("ord-3"))  # no key: never deduplicated
        await bus.publish(OrderCreatedDomainEvent("ord-3"))
    assert len(recorder.names()) == 4
