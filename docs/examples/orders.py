# orders.py: a domain event, and how it appears on the stream
from dataclasses import dataclass

from ssebus import EventMap


@dataclass
class OrderCreated:
    order_id: str
    status: str = "created"


events = EventMap()
events.add(OrderCreated, "order-created", lambda e: {"orderId": e.order_id, "status": e.status})
