"""A bus of one's own, written only with public names (``EventBusBase``, ``BusGap``,
``IdempotencyWindow``), works with the ``Broadcaster`` like the built-in ones.

``StreamBus`` stands for a bus over some transport: ``publish`` sends the event away and a
listener task delivers what comes back, as a broker-backed bus would.
"""

from __future__ import annotations

import json
from contextlib import AsyncExitStack
from dataclasses import dataclass
from types import TracebackType

import anyio
import pytest
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from clients import broadcasting, join, wait_until
from typing_extensions import Self

from ssebus import BusGap, EventBusBase, EventMap, IdempotencyWindow, IEventBus

pytestmark = pytest.mark.anyio


class StreamBus(EventBusBase):
    """Sends each event through a memory stream (the "transport"); its listener delivers."""

    def __init__(self) -> None:
        super().__init__(handler_timeout=5.0)
        self._dedupe = IdempotencyWindow(60.0)
        self.sent = 0
        self._send: MemoryObjectSendStream[object] | None = None
        self._stack = AsyncExitStack()

    async def __aenter__(self) -> Self:
        send, receive = anyio.create_memory_object_stream[object](100)
        tasks = await self._stack.enter_async_context(anyio.create_task_group())
        tasks.start_soon(self._listen, receive)
        self._send = send
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._send is not None
        self._send.close()  # the listener ends with the stream
        await self._stack.aclose()

    async def publish(self, event: object, *, idempotency_key: str | None = None) -> None:
        if idempotency_key is not None and not self._dedupe.first_time(idempotency_key):
            return
        if not self.has_subscribers(type(event)):
            return  # nobody here would hear it: not worth sending
        assert self._send is not None
        self.sent += 1
        await self._send.send(event)

    async def _listen(self, receive: MemoryObjectReceiveStream[object]) -> None:
        async with receive:
            async for event in receive:
                await self.deliver(event)

    async def lose(self, count: int) -> None:
        """The transport noticed ``count`` events went missing."""
        await self.report_gap(BusGap(count, "transport-dropped"))


@dataclass(frozen=True)
class Base:
    order_id: str


@dataclass(frozen=True)
class Placed(Base):
    pass


def order_events() -> EventMap:
    events = EventMap()
    events.add(Placed, "order-placed", lambda e: {"orderId": e.order_id})
    return events


def test_a_bus_built_on_the_public_base_is_an_event_bus() -> None:
    assert isinstance(StreamBus(), IEventBus)


async def test_a_custom_bus_carries_events_to_the_broadcasters_clients_once_each() -> None:
    with anyio.fail_after(5):
        async with StreamBus() as bus, broadcasting(bus, order_events()) as (broadcaster, tasks):
            client = await join(tasks, broadcaster)
            await bus.publish(Placed("ord-1"), idempotency_key="k-1")
            await bus.publish(Placed("ord-1"), idempotency_key="k-1")  # a retry: once
            await bus.publish(Placed("ord-2"))
            await wait_until(lambda: len(client.events()) == 2)
    assert [(e.type, json.loads(e.data)) for e in client.events()] == [
        ("order-placed", {"orderId": "ord-1"}),
        ("order-placed", {"orderId": "ord-2"}),
    ]
    assert bus.sent == 2


async def test_a_gap_a_custom_bus_reports_resets_every_client() -> None:
    with anyio.fail_after(5):
        async with StreamBus() as bus, broadcasting(bus, order_events()) as (broadcaster, tasks):
            client = await join(tasks, broadcaster)
            await bus.lose(3)
            await wait_until(lambda: len(client.events()) == 1)
    (reset,) = client.events()
    assert reset.type == "reset"
    assert json.loads(reset.data)["reason"] == "events-lost"


async def test_has_subscribers_follows_subscribe_unsubscribe_and_base_classes() -> None:
    async with StreamBus() as bus:
        assert not bus.has_subscribers(Placed)
        await bus.publish(Placed("ord-1"))
        assert bus.sent == 0  # nobody subscribed: never sent

        async def handler(event: Base) -> None:
            pass

        unsubscribe = bus.subscribe(Base, handler)
        assert bus.has_subscribers(Placed)
        assert not bus.has_subscribers(int)
        unsubscribe()
        assert not bus.has_subscribers(Placed)
