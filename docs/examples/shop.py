# shop.py: uvicorn shop:app
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from orders import OrderCreated, events
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ssebus import Broadcaster, InMemoryEventBus, SseEndpoint

bus = InMemoryEventBus()
broadcaster = Broadcaster(bus, events)


async def create_order(request: Request) -> JSONResponse:
    order_id = (await request.json())["orderId"]
    await bus.publish(OrderCreated(order_id))  # what your domain code does
    return JSONResponse({"orderId": order_id}, status_code=201)


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    async with broadcaster:  # a mounted endpoint gets no lifespan of its own
        yield


app = Starlette(
    routes=[
        Route("/events", SseEndpoint(broadcaster)),
        Route("/orders", create_order, methods=["POST"]),
    ],
    lifespan=lifespan,
)
