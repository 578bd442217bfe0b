"""The order domain events the in-process tests publish. Not a test module."""

from __future__ import annotations

from dataclasses import dataclass


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
