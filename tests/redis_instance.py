"""One ssebus process on a Redis bus, for the cross-process tests of ``test_redis.py``.

    python tests/redis_instance.py URL STREAM_OR_CHANNEL MODE [LAST_EVENT_ID]

Runs a ``RedisEventBus`` and a ``Broadcaster`` with one connected client (resuming from
``LAST_EVENT_ID`` if given), prints ``READY`` once it listens, then one JSON line
``{"type", "id", "data"}`` per SSE event the client receives, until it is terminated.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any, cast

import anyio

from ssebus import Broadcaster, EventMap
from ssebus.redis import Mode, RedisEventBus
from ssebus.testing import EventStreamParser


@dataclass(frozen=True)
class OrderPlaced:
    order_id: str
    total: int


events = EventMap()


@events.on(OrderPlaced, "order-placed")
def order_placed(event: OrderPlaced) -> dict[str, Any]:
    return {"orderId": event.order_id, "total": event.total}


async def main(url: str, name: str, mode: Mode, last_event_id: str | None) -> None:
    parser = EventStreamParser()

    async def write(chunk: bytes) -> None:
        for event in parser.feed(chunk):
            line = {"type": event.type, "id": event.last_event_id, "data": event.data}
            print(json.dumps(line), flush=True)

    bus = RedisEventBus(url, mode=mode, channel=name, stream=name, reconnect_backoff=(0.05, 0.5))
    bus.register(OrderPlaced)
    async with bus, Broadcaster(bus, events, heartbeat=None) as broadcaster:
        async with broadcaster.connect(last_event_id=last_event_id) as connection:
            print("READY", flush=True)
            await connection.run(write)


if __name__ == "__main__":
    url, name, mode = sys.argv[1:4]
    resume = sys.argv[4] if len(sys.argv) > 4 else None
    anyio.run(main, url, name, cast(Mode, mode), resume)
