"""The pipeline without HTTP: publish a domain event, print the frames a client receives.

A stream starts with the client's position (an ``id:`` alone, which dispatches no event:
a client cut before its first event still resumes from there), then the event itself.
"""

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
