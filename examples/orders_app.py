"""Live orders: a page that shows orders appear and change status as they happen.

    python examples/orders_app.py --simulate        # then open http://127.0.0.1:8000/

Each page belongs to one tenant (``/?tenant=acme``, ``/?tenant=globex``; ``/tenants``
shows both side by side) and sees only that tenant's orders: the stream's ``authorize``
hook turns the tenant in the URL into a ``Subscription``, and each event's route names
its tenant. ``--simulate`` creates orders for both tenants.

Two instances sharing one live feed through Redis (Streams: same ids everywhere, resume
on either instance; ``--redis-mode pubsub`` for at-most-once fan-out):

    python examples/orders_app.py --port 8000 --redis redis://127.0.0.1:6379/0 --simulate
    python examples/orders_app.py --port 8001 --redis redis://127.0.0.1:6379/0

GET  /?tenant=acme         the live page (plain HTML + EventSource); "/" redirects here
GET  /tenants              two tenants' pages side by side
GET  /events?tenant=acme   the event stream (resumes with Last-Event-ID)
POST /orders               {"customer": "ana", "tenant": "acme"} -> OrderCreatedDomainEvent
POST /orders/{id}/status   {"status": "shipped"}    -> OrderStatusChangedDomainEvent
GET  /orders?tenant=acme   a tenant's orders and their status (the page loads them on opening
                           and after a reset); its Last-Event-ID header is the stream position
                           they were read at, which the page opens its stream at
                           (/events?tenant=acme&lastEventId=...): nothing missed, nothing twice
GET  /stats                live figures for the page: open streams, events per second and
                           the last minute of them, sampled once a second from the metrics
GET  /metrics              the broadcaster's metrics as JSON
GET  /metrics/prometheus   the same for Prometheus to scrape (with prometheus_client installed)

Each route that needs a tenant (all but ``/tenants``, ``/orders/{id}/status``, ``/stats``
and ``/metrics``) takes exactly one ``tenant``, and never guesses one: none is a 401 (only ``/``
redirects to ``/?tenant=acme`` instead), ``tenant`` twice or a look-alike such as
``TENANT=`` or ``tenant[]=`` a 400, an unknown tenant a 403; the reason names the
parameter and the problem.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import random
import re
import secrets
from collections import deque
from collections.abc import AsyncIterator, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import Route

from ssebus import (
    Broadcaster,
    EventHistory,
    EventMap,
    IEventBus,
    InMemoryEventBus,
    Refusal,
    Scope,
    SseEndpoint,
    Subscription,
)

if TYPE_CHECKING:
    from ssebus.redis import Mode, RedisEventBus

PAGE = Path(__file__).with_name("orders_page.html")
STATUSES = ["created", "paid", "packed", "shipped", "delivered"]
TENANTS = ["acme", "globex"]


# -- the domain: two events, published on the bus -------------------------------------------


@dataclass(frozen=True)
class OrderCreatedDomainEvent:
    order_id: str
    customer: str
    status: str = "created"
    tenant: str = TENANTS[0]


@dataclass(frozen=True)
class OrderStatusChangedDomainEvent:
    order_id: str
    old_status: str
    new_status: str
    tenant: str = TENANTS[0]


class Orders:
    """A tiny order store that publishes a domain event for every change."""

    def __init__(self, bus: IEventBus, *, prefix: str = "ord") -> None:
        self.bus = bus
        self.status: dict[str, str] = {}
        self.customer: dict[str, str] = {}
        self.tenant: dict[str, str] = {}
        self._numbers = itertools.count(1001)
        self._prefix = prefix

    def follow(self) -> None:
        """Also apply the changes other instances publish on a shared bus (e.g. Redis)."""

        async def created(event: OrderCreatedDomainEvent) -> None:
            self.status.setdefault(event.order_id, event.status)
            self.customer.setdefault(event.order_id, event.customer)
            self.tenant.setdefault(event.order_id, event.tenant)

        async def changed(event: OrderStatusChangedDomainEvent) -> None:
            self.status[event.order_id] = event.new_status
            self.tenant.setdefault(event.order_id, event.tenant)

        self.bus.subscribe(OrderCreatedDomainEvent, created)
        self.bus.subscribe(OrderStatusChangedDomainEvent, changed)

    async def create(self, customer: str, tenant: str = TENANTS[0]) -> str:
        order_id = f"{self._prefix}-{next(self._numbers)}"
        self.status[order_id] = "created"
        self.customer[order_id] = customer
        self.tenant[order_id] = tenant
        await self.bus.publish(OrderCreatedDomainEvent(order_id, customer, tenant=tenant))
        return order_id

    async def change_status(self, order_id: str, new_status: str) -> None:
        old_status, tenant = self.status[order_id], self.tenant[order_id]
        self.status[order_id] = new_status
        await self.bus.publish(
            OrderStatusChangedDomainEvent(order_id, old_status, new_status, tenant=tenant)
        )


# -- how domain events become SSE events, and who receives them --------------------------

events = EventMap()


def tenant_of(event: OrderCreatedDomainEvent | OrderStatusChangedDomainEvent) -> str:
    return event.tenant


@events.on(OrderCreatedDomainEvent, "order-created", tenant=tenant_of, topics=["order:{orderId}"])
def order_created(event: OrderCreatedDomainEvent) -> dict[str, Any]:
    return {"orderId": event.order_id, "status": event.status, "customer": event.customer}


@events.on(
    OrderStatusChangedDomainEvent,
    "order-status-changed",
    tenant=tenant_of,
    topics=["order:{orderId}"],
)
def order_status_changed(event: OrderStatusChangedDomainEvent) -> dict[str, Any]:
    return {"orderId": event.order_id, "oldStatus": event.old_status, "newStatus": event.new_status}


#: The one parameter (query string) or key (JSON body) that names a request's tenant.
TENANT = "tenant"
#: ``tenant`` in another case, with brackets or spaces: a different parameter to us, maybe
#: the same one to a framework or proxy that reads it instead.
_LOOK_ALIKE = re.compile(r"\s*tenant\s*(\[[^\]]*\]\s*)*", re.IGNORECASE)


def choose_tenant(pairs: Iterable[tuple[str, object]]) -> str | Refusal:
    """The tenant a request's parameters name, or why they do not name exactly one.

    A demo teaches, so it never guesses: no ``tenant`` is a 401; ``tenant`` more than once,
    or a look-alike (``TENANT``, ``tenant[]``, ``tenant ``) is a 400, since another part of
    a stack may read that one instead; an unknown tenant is a 403.
    """
    given: list[object] = []
    for name, value in pairs:
        if name == TENANT:
            given.append(value)
        elif _LOOK_ALIKE.fullmatch(name):
            return Refusal(400, f"{name!r}: looks like 'tenant'; name the tenant once, as 'tenant'")
    if len(given) > 1:
        return Refusal(400, f"tenant: given {len(given)} times; name exactly one tenant")
    if not given or given[0] == "":
        return Refusal(
            401,
            f"tenant: missing; name one, e.g. tenant={TENANTS[0]}",
            headers=[("www-authenticate", 'Tenant realm="orders"')],
        )
    tenant = given[0]
    if not isinstance(tenant, str):
        return Refusal(400, "tenant: must be one string")
    if tenant not in TENANTS:
        return Refusal(403, f"tenant: unknown tenant {tenant!r}")
    return tenant


def query_pairs(scope: Scope) -> list[tuple[str, str]]:
    """The query string's parameters in order, repeats and empty values kept."""
    query = bytes(scope.get("query_string", b"")).decode("latin-1")
    return parse_qsl(query, keep_blank_values=True)


async def authorize(scope: Scope) -> Subscription | Refusal:
    """The stream's tenant comes from ``?tenant=`` (a real app would read a session or token)."""
    tenant = choose_tenant(query_pairs(scope))
    if isinstance(tenant, Refusal):
        return tenant
    return Subscription(tenant=tenant)


# -- the web app ----------------------------------------------------------------------------


async def simulate(orders: Orders) -> None:
    """Create an order now and then, and move open orders along, so the page is alive."""
    customers = ["ana", "bruno", "carla", "davi", "elis"]
    while True:
        await anyio.sleep(random.uniform(0.5, 1.5))
        open_orders = [o for o, s in orders.status.items() if s != STATUSES[-1]]
        if len(open_orders) < 3 * len(TENANTS) or random.random() < 0.4:
            await orders.create(random.choice(customers), random.choice(TENANTS))
        else:
            order_id = random.choice(open_orders)
            next_status = STATUSES[STATUSES.index(orders.status[order_id]) + 1]
            await orders.change_status(order_id, next_status)


class Throughput:
    """Events per second over the last minute, from the broadcaster's own counter of events
    published (``ssebus.Metric.EVENTS_PUBLISHED``): :meth:`run` samples it once a second."""

    def __init__(self, broadcaster: Broadcaster, seconds: int = 60) -> None:
        self.broadcaster = broadcaster
        self.per_second: deque[int] = deque(maxlen=seconds)
        self._published: int | None = None

    def sample(self) -> None:
        published = self.broadcaster.metrics().events_published
        if self._published is not None:
            self.per_second.append(published - self._published)
        self._published = published

    async def run(self) -> None:
        while True:
            self.sample()
            await anyio.sleep(1)

    def figures(self) -> dict[str, Any]:
        """What the page shows: open streams (all tenants'), events per second (the mean of
        the last 10 s, as one second alone jumps about) and the last minute, second by second."""
        recent = list(self.per_second)[-10:]
        return {
            "connections": self.broadcaster.metrics().active_connections,
            "eventsPerSecond": round(sum(recent) / len(recent), 1) if recent else 0.0,
            "lastMinute": list(self.per_second),
        }


def redis_bus(url: str, mode: Mode = "streams") -> RedisEventBus:
    """A Redis bus carrying the two order events (needs ``pip install 'ssebus[redis]'``)."""
    from ssebus.redis import RedisEventBus

    bus = RedisEventBus(url, mode=mode)
    bus.register(OrderCreatedDomainEvent)
    bus.register(OrderStatusChangedDomainEvent)
    return bus


class JsonObject(list[tuple[str, Any]]):
    """A JSON object as its key/value pairs in order, repeated keys kept (``json.loads``
    would keep only the last ``"tenant"`` of ``{"tenant": "acme", "tenant": "globex"}``)."""


def refused(refusal: Refusal) -> Response:
    """A refusal as the JSON API answers errors: ``{"error": reason}``."""
    return JSONResponse({"error": refusal.reason}, refusal.status, dict(refusal.headers))


SIDE_BY_SIDE = """<!doctype html><meta charset="utf-8"><title>ssebus · two tenants</title>
<style>body {{ margin: 0; display: flex; }} iframe {{ flex: 1; height: 100vh; border: 0;
border-right: 1px solid #ccc; }}</style>{frames}"""


def build_app(
    bus: IEventBus | None = None,
    *,
    simulate_orders: bool = False,
    heartbeat: float = 15.0,
    shared_bus: RedisEventBus | None = None,
    history: EventHistory | None = None,
) -> Starlette:
    """The app; with ``shared_bus`` (e.g. :func:`redis_bus`) it runs that bus in its lifespan,
    so every instance on the bus shows one live feed (``bus`` is then ignored). ``history``
    is what a reconnecting page resumes from (default: the broadcaster's)."""
    if shared_bus is not None:
        bus = shared_bus
        orders = Orders(bus, prefix=f"ord-{secrets.token_hex(2)}")  # unique across instances
        orders.follow()
    else:
        bus = bus or InMemoryEventBus()
        orders = Orders(bus)
    broadcaster = Broadcaster(bus, events, heartbeat=heartbeat, history=history)
    throughput = Throughput(broadcaster)

    async def page(request: Request) -> Response:
        tenant = choose_tenant(query_pairs(request.scope))
        if isinstance(tenant, Refusal) and tenant.status == 401:
            # A newcomer on "/": show them the first tenant's page, saying so in the URL.
            return RedirectResponse(f"/?tenant={TENANTS[0]}", 302)
        if isinstance(tenant, Refusal):
            return PlainTextResponse(tenant.reason, tenant.status, dict(tenant.headers))
        return FileResponse(PAGE, media_type="text/html")

    async def side_by_side(request: Request) -> Response:
        frames = "".join(f'<iframe src="/?tenant={t}" title="{t}"></iframe>' for t in TENANTS)
        return HTMLResponse(SIDE_BY_SIDE.format(frames=frames))

    async def create_order(request: Request) -> Response:
        try:
            body = json.loads(await request.body(), object_pairs_hook=JsonObject)
        except ValueError:
            body = None
        if not isinstance(body, JsonObject):
            return JSONResponse({"error": "body: a JSON object is required"}, 422)
        tenant = choose_tenant(body)
        if isinstance(tenant, Refusal):
            return refused(tenant)
        customer = dict(body).get("customer")
        if not isinstance(customer, str) or not customer:
            return JSONResponse({"error": "customer: a non-empty string is required"}, 422)
        order_id = await orders.create(customer, tenant)
        return JSONResponse({"orderId": order_id, "status": "created", "tenant": tenant}, 201)

    async def change_status(request: Request) -> Response:
        order_id = request.path_params["order_id"]
        body = await request.json()
        status = body.get("status") if isinstance(body, dict) else None
        if order_id not in orders.status or order_id not in orders.tenant:
            return JSONResponse({"error": f"orderId: no order {order_id!r}"}, 404)
        if not isinstance(status, str) or not status:
            return JSONResponse({"error": "status: a non-empty string is required"}, 422)
        await orders.change_status(order_id, status)
        return JSONResponse({"orderId": order_id, "status": status})

    async def list_orders(request: Request) -> Response:
        tenant = choose_tenant(query_pairs(request.scope))
        if isinstance(tenant, Refusal):
            return refused(tenant)
        # The position first, then the orders, with no await between: a change the orders
        # already show may be replayed on top of them (harmless: the page sets the status
        # an event names), but none is missing from both.
        position = broadcaster.position_id(tenant)
        listed = [
            {"orderId": order_id, "status": status, "customer": orders.customer[order_id]}
            for order_id, status in orders.status.items()
            if orders.tenant[order_id] == tenant
        ]
        return JSONResponse(listed, headers={"last-event-id": position})

    async def stats(request: Request) -> Response:
        return JSONResponse(throughput.figures())

    async def metrics(request: Request) -> Response:
        return JSONResponse(broadcaster.metrics().as_dict())

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            if shared_bus is not None:
                await stack.enter_async_context(shared_bus)
            await stack.enter_async_context(broadcaster)
            tasks = await stack.enter_async_context(anyio.create_task_group())
            tasks.start_soon(throughput.run)
            if simulate_orders:
                tasks.start_soon(simulate, orders)
            yield
            tasks.cancel_scope.cancel()

    app = Starlette(
        routes=[
            Route("/", page),
            Route("/tenants", side_by_side),
            Route("/events", SseEndpoint(broadcaster, retry=1000, authorize=authorize)),
            Route("/orders", create_order, methods=["POST"]),
            Route("/orders", list_orders, methods=["GET"]),
            Route("/orders/{order_id}/status", change_status, methods=["POST"]),
            Route("/stats", stats),
            Route("/metrics", metrics),
            *prometheus_routes(broadcaster),
        ],
        lifespan=lifespan,
    )
    app.state.broadcaster = broadcaster
    return app


def prometheus_routes(broadcaster: Broadcaster) -> list[Route]:
    """``GET /metrics/prometheus`` (ssebus.prometheus on a registry of this app's own), if
    prometheus_client is installed (``pip install 'ssebus[prometheus]'``); else none."""
    try:
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        import ssebus.prometheus
    except ImportError:
        return []
    registry = CollectorRegistry()
    ssebus.prometheus.register(broadcaster, registry, tenants=10)

    async def scrape(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return [Route("/metrics/prometheus", scrape)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--simulate", action="store_true", help="create orders by itself")
    parser.add_argument("--redis", metavar="URL", help="share the feed through Redis at URL")
    parser.add_argument(
        "--redis-mode",
        choices=["streams", "pubsub"],
        default="streams",
        help="streams: shared ids and resume anywhere (default); pubsub: at-most-once",
    )
    args = parser.parse_args()
    if args.redis:
        shared = redis_bus(args.redis, args.redis_mode)
        app = build_app(simulate_orders=args.simulate, shared_bus=shared)
    else:
        app = build_app(simulate_orders=args.simulate)
    print(f"Live orders on http://{args.host}:{args.port}/  (Ctrl+C to stop)")
    # Nothing to do for Ctrl+C or SIGTERM: the endpoint ends every stream with a goodbye
    # before uvicorn's own shutdown. uvicorn re-raises Ctrl+C once it has shut down.
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.run(app, host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    main()
