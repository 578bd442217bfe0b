"""The pipeline without HTTP: publish a domain event, print the frame a client receives."""

from dataclasses import dataclass

import anyio

from ssebus import Broadcaster, EventMap, InMemoryEventBus


@dataclass
class OrderCreatedDomainEvent:
    order_id: str
    status: str = "created"


events = EventMap()
events.add(
    OrderCreatedDomainEvent, "order-created", lambda e: {"orderId": e.order_id, "status": e.status}
)


async def show(frame: bytes) -> None:
    print(frame.decode(), end="")


async def main() -> None:
    async with InMemoryEventBus() as bus, Broadcaster(bus, events) as broadcaster:
        async with broadcaster.connect() as client:  # what SseEndpoint does for each request
            await bus.publish(OrderCreatedDomainEvent("ord-1"))
            client.close("done")  # end the stream once what is queued is written
            await client.run(show)


if __name__ == "__main__":
    anyio.run(main)
