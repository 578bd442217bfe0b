"""The order domain events the in-process tests publish, and their event map. Not a test
module."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ssebus import EventMap


@dataclass(frozen=True)
class DomainEvent:
    """Base of the domain events below."""


@dataclass(frozen=True)
class OrderCreatedDomainEvent(DomainEvent):
    order_id: str
    status: str = "created"


@dataclass(frozen=True)
class OrderStatusChangedDomainEvent(DomainEvent):
    order_id: str
    old_status: str
    new_status: str


def order_events() -> EventMap:
    """``order-created`` and ``order-status-changed``, with camelCase payloads."""
    events = EventMap()
    events.add(
        OrderCreatedDomainEvent,
        "order-created",
        lambda e: {"orderId": e.order_id, "status": e.status},
    )

    @events.on(OrderStatusChangedDomainEvent, "order-status-changed")
    def changed(e: OrderStatusChangedDomainEvent) -> dict[str, Any]:
        return {"orderId": e.order_id, "oldStatus": e.old_status, "newStatus": e.new_status}

    return events
