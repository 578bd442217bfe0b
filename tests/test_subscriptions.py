"""Subscriptions: who a connection belongs to, and which events it may receive.

The rules, as these tests state them:

* A frame with a tenant reaches only connections of that tenant; a frame without one
  reaches every tenant (and connections without a tenant). A connection without a topic
  filter takes every topic; one with a topic set takes only frames carrying one of them,
  so a frame without topics reaches only connections without a topic filter.
* An event map route says its tenant and topics as templates over the payload
  (``"{tenantId}"``) or as functions of the domain event; an event whose template cannot be
  filled is dropped alone (logged, counted). A route's ``allow(event, subscription)`` vets
  each connection: only a result that ``is True`` delivers; an exception is logged, counted
  in ``predicate_errors`` and delivers nothing to that one connection.
* The registry hands the broadcaster exactly the matching connections, each once.
* Replay applies the same filter, so history never leaks another tenant's frames.
* When ``expires_at`` passes, the stream ends with an id-less ``credentials-expired`` event.
* Heartbeats reach every connection, whatever its subscription.
* ``SseEndpoint(authorize=...)`` turns the request into a ``Subscription`` or a ``Refusal``;
  this is checked over a real uvicorn server (a subprocess, see ``tests/servers.py``) and
  across two such servers sharing a ``RedisEventBus`` in streams mode.

In-process tests drive the real pipeline (bus -> broadcaster -> connection queue -> writer)
with clients whose writer appends to a buffer. Leaving the broadcaster's context flushes
every queue and ends every client, so a stream read after it is complete: asserting it
equal to the expected events also proves nothing else arrived. (A client still catching up
when the broadcaster shuts down drops what it held and resumes later, see
``test_resume_handover.py``: the replay tests wait for the live events before leaving.)
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import (
    AbstractAsyncContextManager,
    ExitStack,
    aclosing,
    asynccontextmanager,
    contextmanager,
)
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import parse_qs

import anyio
import anyio.abc
import clients as simulated
import httpx
import pytest
from clients import GUARD, running, wait_until
from encoders import CountingEncoder
from httpx_sse import ServerSentEvent as ReceivedSse
from httpx_sse import aconnect_sse
from redis_support import REDIS_URL, fresh_bus_names
from servers import ROOT, ServerProcess, free_port, run_server, uvicorn_command
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ssebus import (
    Broadcaster,
    ConfigurationError,
    EventMap,
    Frame,
    InMemoryClientRegistry,
    InMemoryEventBus,
    InvalidArgumentError,
    Refusal,
    Scope,
    ServerSentEvent,
    SseConnection,
    SseEndpoint,
    Subscription,
)
from ssebus._metrics import Metrics
from ssebus.redis import RedisEventBus
from ssebus.testing import ParsedEvent

pytestmark = pytest.mark.anyio

EXPIRED_FRAME = b'event: credentials-expired\ndata: {"reason":"credentials-expired"}\n\n'


# --- the domain ----------------------------------------------------------------------------


@dataclass(frozen=True)
class OrderShipped:
    """Belongs to a tenant; on the topics of its order and of its customer."""

    tenant_id: str
    order_id: str
    customer_id: str = "c-0"


@dataclass(frozen=True)
class Announcement:
    """No tenant and no topics: for every connection without a topic filter."""

    text: str


@dataclass(frozen=True)
class InvoiceIssued:
    """Belongs to a tenant, and only its owner may see it (an ``allow`` predicate)."""

    tenant_id: str
    invoice_id: str
    owner: str


def only_the_owner(event: InvoiceIssued, subscription: Subscription) -> bool:
    """Raises KeyError for a connection without a ``user`` attribute."""
    return bool(subscription.attributes["user"] == event.owner)


def tenant_events() -> EventMap:
    events = EventMap()
    events.add(
        OrderShipped,
        "order-shipped",
        lambda e: {"tenantId": e.tenant_id, "orderId": e.order_id, "customerId": e.customer_id},
        tenant="{tenantId}",
        topics=["order:{orderId}", "customer:{customerId}"],
    )
    events.add(Announcement, "announcement", lambda e: {"text": e.text})

    @events.on(
        InvoiceIssued,
        "invoice-issued",
        tenant=lambda e: e.tenant_id,
        topics=lambda e: [f"invoice:{e.invoice_id}"],
        allow=only_the_owner,
    )
    def invoice(e: InvoiceIssued) -> dict[str, Any]:
        return {"invoiceId": e.invoice_id}

    return events


# --- simulated clients ---------------------------------------------------------------------


@dataclass(eq=False)
class Client(simulated.Client):
    """The shared simulated client, with the subscription it connects with."""

    subscription: Subscription | None = None

    def received(self) -> list[tuple[str, Any]]:
        """(type, decoded data) of every event the client's browser would dispatch."""
        return [(e.type, json.loads(e.data)) for e in self.events()]

    def orders(self) -> list[str]:
        """The order ids of the ``order-shipped`` events received, in order."""
        return [data["orderId"] for kind, data in self.received() if kind == "order-shipped"]


async def join(
    tasks: anyio.abc.TaskGroup,
    broadcaster: Broadcaster,
    subscription: Subscription | None = None,
    *,
    last_event_id: str | None = None,
) -> Client:
    """Start a client with ``subscription``; return once it is registered."""
    client = Client(subscription=subscription)
    await simulated.join(
        tasks, broadcaster, client, last_event_id=last_event_id, subscription=subscription
    )
    return client


def pipeline(
    events: EventMap | None = None, **options: Any
) -> AbstractAsyncContextManager[tuple[InMemoryEventBus, Broadcaster, anyio.abc.TaskGroup]]:
    """``running`` with the tenant events unless told: after the block each client's
    stream is complete."""
    return running(events or tenant_events(), **options)


def shipped(tenant: str, order: str, customer: str = "c-0") -> OrderShipped:
    return OrderShipped(tenant, order, customer)


def errors_about(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "ssebus" and r.levelno >= logging.ERROR and text in r.getMessage()
    ]


# --- the matching rule ---------------------------------------------------------------------

ACME = {"tenant": "acme"}


@pytest.mark.parametrize(
    ("subscription", "tenant", "topics", "expected"),
    [
        pytest.param({}, None, [], True, id="no-tenant-frame-reaches-a-tenantless-connection"),
        pytest.param({}, "acme", [], False, id="tenant-frame-never-reaches-a-tenantless-one"),
        pytest.param(ACME, None, [], True, id="no-tenant-frame-reaches-every-tenant"),
        pytest.param(ACME, "acme", [], True, id="tenant-frame-reaches-its-tenant"),
        pytest.param(ACME, "globex", [], False, id="tenant-frame-never-reaches-another-tenant"),
        pytest.param({}, None, ["order:1"], True, id="no-topic-filter-takes-every-topic"),
        pytest.param(
            {"topics": ["order:1"]}, None, ["order:1", "order:2"], True, id="one-shared-topic"
        ),
        pytest.param({"topics": ["order:1"]}, None, ["order:2"], False, id="no-shared-topic"),
        pytest.param({"topics": ["order:1"]}, None, [], False, id="topic-filter-no-topics"),
        pytest.param({"topics": []}, None, [], False, id="empty-topic-set-no-topics"),
        pytest.param({"topics": []}, None, ["order:1"], False, id="empty-topic-set-a-topic"),
        pytest.param(
            {**ACME, "topics": ["order:1"]},
            "globex",
            ["order:1"],
            False,
            id="topic-but-other-tenant",
        ),
        pytest.param(
            {**ACME, "topics": ["order:1"]}, None, ["order:1"], True, id="topic-and-no-tenant"
        ),
        pytest.param(
            {**ACME, "topics": ["order:1"]}, "acme", ["order:1"], True, id="topic-and-tenant"
        ),
    ],
)
def test_a_subscription_matches_a_frame_by_tenant_and_topics(
    subscription: dict[str, Any], tenant: str | None, topics: list[str], expected: bool
) -> None:
    frame = Frame("1", "e", b"data: x\n\n", tenant, frozenset(topics))
    assert Subscription(**subscription).matches(frame) is expected


@pytest.mark.parametrize(
    ("options", "name"),
    [
        pytest.param({"tenant": 5}, "tenant", id="tenant-int"),
        pytest.param({"tenant": b"acme"}, "tenant", id="tenant-bytes"),
        pytest.param({"topics": "order:1"}, "topics", id="topics-one-str"),
        pytest.param({"topics": ["order:1", 2]}, "topics", id="topics-non-str-member"),
        pytest.param({"topics": 5}, "topics", id="topics-not-a-collection"),
        pytest.param({"attributes": [("user", "ana")]}, "attributes", id="attributes-pairs"),
        pytest.param({"attributes": None}, "attributes", id="attributes-none"),
        pytest.param({"expires_at": "tomorrow"}, "expires_at", id="expires-at-str"),
        pytest.param({"expires_at": math.nan}, "expires_at", id="expires-at-nan"),
        pytest.param({"expires_at": math.inf}, "expires_at", id="expires-at-inf"),
        pytest.param({"expires_at": True}, "expires_at", id="expires-at-bool"),
    ],
)
def test_a_bad_subscription_value_is_refused_naming_the_field(
    options: dict[str, Any], name: str
) -> None:
    with pytest.raises(ConfigurationError, match=name) as caught:
        Subscription(**options)
    assert caught.value.setting == name


def test_a_subscription_is_a_frozen_value_whatever_it_was_given() -> None:
    attributes = {"user": "ana"}
    subscription = Subscription("acme", ["order:1", "order:1"], attributes, 1_700_000_000)
    attributes["user"] = "bob"
    assert subscription.topics == frozenset({"order:1"})
    assert isinstance(subscription.topics, frozenset)
    assert subscription.attributes == {"user": "ana"}
    with pytest.raises(TypeError):
        subscription.attributes["user"] = "eve"  # type: ignore[index]
    with pytest.raises(AttributeError):
        subscription.tenant = "globex"  # type: ignore[misc]
    assert subscription == Subscription("acme", frozenset({"order:1"}), {"user": "ana"}, 1.7e9)
    assert Subscription() == Subscription(None, None, {}, None)


# --- the route's tenant and topics ---------------------------------------------------------


@dataclass(frozen=True)
class Audited:
    tenant_id: str
    order_id: str


@pytest.mark.parametrize(
    ("spec", "name"),
    [
        pytest.param({"tenant": 5}, "tenant", id="tenant-not-str-or-function"),
        pytest.param({"topics": "order:{orderId}"}, "topics", id="topics-one-str"),
        pytest.param({"topics": ["order:{orderId}", 5]}, "topics", id="topics-non-str-template"),
        pytest.param({"topics": 5}, "topics", id="topics-not-a-list-or-function"),
        pytest.param({"allow": "owner-only"}, "allow", id="allow-not-callable"),
    ],
)
def test_a_bad_audience_spec_is_refused_when_the_route_is_added_naming_it(
    spec: dict[str, Any], name: str
) -> None:
    events = EventMap()
    with pytest.raises(ConfigurationError, match=name) as caught:
        events.add(Audited, "audited", lambda e: {"orderId": e.order_id}, **spec)
    assert caught.value.setting == name
    with pytest.raises(ConfigurationError, match=name):
        events.on(Audited, "audited", **spec)(lambda e: {"orderId": e.order_id})
    assert len(events) == 0


@pytest.mark.parametrize(
    "template", ["order:{orderId", "order:{0}", "order:{}"], ids=["unclosed", "positional", "auto"]
)
def test_a_malformed_template_is_refused_when_the_route_is_added(template: str) -> None:
    events = EventMap()
    with pytest.raises(ConfigurationError, match="topics"):
        events.add(Audited, "audited", lambda e: {"orderId": e.order_id}, topics=[template])
    with pytest.raises(ConfigurationError, match="tenant"):
        events.add(Audited, "audited", lambda e: {"orderId": e.order_id}, tenant=template)


async def test_tenant_and_topic_templates_are_filled_from_the_payload() -> None:
    async with pipeline() as (_, broadcaster, _):
        frame = broadcaster.publish(shipped("acme", "o-1", "c-9"))
    assert frame is not None
    assert frame.tenant == "acme"
    assert frame.topics == frozenset({"order:o-1", "customer:c-9"})


async def test_templates_format_any_payload_value() -> None:
    events = EventMap()
    events.add(
        Audited,
        "audited",
        lambda e: {"tenant": {"id": e.tenant_id}, "orderId": int(e.order_id)},
        tenant="{tenant[id]}",
        topics=["order:{orderId:05d}", "static"],
    )
    async with pipeline(events) as (_, broadcaster, _):
        frame = broadcaster.publish(Audited("acme", "42"))
    assert frame is not None
    assert (frame.tenant, frame.topics) == ("acme", frozenset({"order:00042", "static"}))


async def test_tenant_and_topics_may_be_functions_of_the_domain_event() -> None:
    async with pipeline() as (_, broadcaster, _):
        frame = broadcaster.publish(InvoiceIssued("acme", "inv-1", "ana"))
    assert frame is not None
    assert (frame.tenant, frame.topics) == ("acme", frozenset({"invoice:inv-1"}))


async def test_a_tenant_function_may_return_none_for_an_event_of_every_tenant() -> None:
    events = EventMap()
    events.add(Announcement, "announcement", lambda e: {"text": e.text}, tenant=lambda e: None)
    async with pipeline(events) as (_, broadcaster, tasks):
        clients = [await join(tasks, broadcaster, Subscription(t)) for t in ("acme", None)]
        frame = broadcaster.publish(Announcement("hello"))
    assert frame is not None
    assert frame.tenant is None
    for client in clients:
        assert client.received() == [("announcement", {"text": "hello"})]


@dataclass(frozen=True)
class Broken:
    """Mapped with an audience that cannot be worked out."""

    order_id: str


@pytest.mark.parametrize(
    ("payload", "spec", "logged"),
    [
        pytest.param(
            lambda e: {"orderId": e.order_id},
            {"tenant": "{tenantId}"},
            "names 'tenantId'",
            id="tenant-template-names-a-missing-key",
        ),
        pytest.param(
            lambda e: {"orderId": e.order_id},
            {"topics": ["order:{orderId}", "customer:{customerId}"]},
            "names 'customerId'",
            id="topic-template-names-a-missing-key",
        ),
        pytest.param(
            lambda e: [e.order_id],
            {"topics": ["order:{orderId}"]},
            "mapping payload",
            id="template-over-a-list-payload",
        ),
        pytest.param(
            lambda e: {"orderId": e.order_id},
            {"tenant": lambda e: 5},
            "must be a str",
            id="tenant-function-returns-an-int",
        ),
        pytest.param(
            lambda e: {"orderId": e.order_id},
            {"topics": lambda e: f"order:{e.order_id}"},
            "collection of str",
            id="topics-function-returns-one-str",
        ),
        pytest.param(
            lambda e: {"orderId": e.order_id},
            {"topics": lambda e: [1]},
            "each topic must be a str",
            id="topics-function-returns-an-int",
        ),
        pytest.param(
            lambda e: {"orderId": e.order_id},
            {"tenant": lambda e: e.tenant_id},
            "tenant_id",
            id="tenant-function-raises",
        ),
    ],
)
async def test_an_event_whose_audience_cannot_be_worked_out_is_dropped_alone_logged_and_counted(
    payload: Callable[[Broken], Any],
    spec: dict[str, Any],
    logged: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="ssebus")
    events = tenant_events()
    events.add(Broken, "broken", payload, **spec)
    async with pipeline(events) as (bus, broadcaster, tasks):
        clients = [await join(tasks, broadcaster, Subscription(t)) for t in ("acme", None)]
        await bus.publish(Announcement("before"))
        await bus.publish(Broken("o-1"))  # the publisher is not disturbed
        assert broadcaster.publish(Broken("o-2")) is None
        await bus.publish(Announcement("after"))
        metrics = broadcaster.metrics()
    assert metrics.events_dropped == 2
    assert metrics.events_published == 2
    for client in clients:
        assert client.received() == [
            ("announcement", {"text": "before"}),
            ("announcement", {"text": "after"}),
        ]
    dropped = errors_about(caplog, "Broken")
    assert len(dropped) == 2
    for record in dropped:  # one line each, naming the cause, without a traceback
        assert record.exc_info is None
        assert logged in record.getMessage()


# --- the registry's index ------------------------------------------------------------------


def connection(connection_id: str, **subscription: Any) -> SseConnection:
    return SseConnection(
        connection_id,
        max_queue=4,
        write_timeout=None,
        metrics=Metrics(),
        subscription=Subscription(**subscription),
    )


def overlapping_connections() -> list[SseConnection]:
    return [
        connection("acme-all", tenant="acme"),
        connection("acme-orders", tenant="acme", topics=["order:1", "order:2"]),
        connection("acme-order-1", tenant="acme", topics=["order:1"]),
        connection("acme-customer", tenant="acme", topics=["customer:9", "order:1"]),
        connection("acme-nothing", tenant="acme", topics=[]),
        connection("globex-order-1", tenant="globex", topics=["order:1"]),
        connection("tenantless-all"),
        connection("tenantless-order-1", topics=["order:1"]),
    ]


ACME_ORDER_1 = ["acme-all", "acme-orders", "acme-order-1", "acme-customer"]
SELECTIONS = [
    pytest.param(None, [], ["acme-all", "tenantless-all"], id="no-tenant-no-topics"),
    pytest.param("acme", [], ["acme-all"], id="tenant-no-topics"),
    pytest.param("acme", ["order:1"], ACME_ORDER_1, id="tenant-and-topic"),
    pytest.param("acme", ["order:1", "customer:9", "order:2"], ACME_ORDER_1, id="overlapping"),
    pytest.param("acme", ["order:2"], ["acme-all", "acme-orders"], id="tenant-other-topic"),
    pytest.param("acme", ["order:3"], ["acme-all"], id="tenant-unknown-topic"),
    pytest.param(
        None,
        ["order:1"],
        [*ACME_ORDER_1, "globex-order-1", "tenantless-all", "tenantless-order-1"],
        id="no-tenant-and-topic",
    ),
    pytest.param("globex", ["order:1", "order:2"], ["globex-order-1"], id="other-tenant"),
    pytest.param("initech", ["order:1"], [], id="tenant-nobody-has"),
]


@pytest.mark.parametrize(("tenant", "topics", "expected"), SELECTIONS)
def test_select_returns_each_matching_connection_once_and_nothing_else(
    tenant: str | None, topics: list[str], expected: list[str]
) -> None:
    registry = InMemoryClientRegistry()
    for each in overlapping_connections():
        registry.add(each)
    selected = registry.select(tenant, frozenset(topics))
    ids = [c.id for c in selected]
    assert sorted(ids) == sorted(expected)
    assert len(ids) == len(set(ids))
    frame = Frame("1", "e", b"", tenant, frozenset(topics))
    assert all(c.subscription.matches(frame) for c in selected)


def test_a_removed_connection_leaves_no_trace_in_the_index() -> None:
    registry = InMemoryClientRegistry()
    connections = overlapping_connections()
    for each in connections:
        registry.add(each)
    for removed in connections:
        assert registry.remove(removed.id) is removed
        for tenant in (None, "acme", "globex"):
            for topics in ([], ["order:1"], ["order:1", "order:2", "customer:9"]):
                selected = registry.select(tenant, topics)
                assert removed not in selected
    assert len(registry) == 0
    assert registry.snapshot() == ()
    # White box: no empty bucket or tenant index is left behind to grow forever.
    assert registry._by_topic == {}
    assert registry._by_tenant == {}


def test_a_connections_subscription_is_fixed_so_the_registry_index_stays_true() -> None:
    registry = InMemoryClientRegistry()
    fixed = connection("c-1", tenant="acme", topics=["order:1"])
    registry.add(fixed)
    with pytest.raises(AttributeError):
        fixed.subscription = Subscription("acme")  # type: ignore[misc]
    assert registry.select("acme", {"order:1"}) == (fixed,)
    registry.remove("c-1")
    assert registry.select("acme", {"order:1"}) == ()
    assert registry.select(None, set()) == ()


def test_a_selection_does_not_change_when_connections_come_and_go() -> None:
    registry = InMemoryClientRegistry()
    connections = overlapping_connections()
    for each in connections:
        registry.add(each)
    selected = registry.select("acme", ["order:1", "customer:9"])
    before = list(selected)
    registry.remove("acme-orders")
    registry.add(connection("acme-late", tenant="acme", topics=["order:1"]))
    assert list(selected) == before


# --- delivery through the broadcaster ------------------------------------------------------


async def test_each_connection_gets_exactly_the_events_its_subscription_matches() -> None:
    async with pipeline() as (bus, broadcaster, tasks):
        acme = await join(tasks, broadcaster, Subscription("acme"))
        globex = await join(tasks, broadcaster, Subscription("globex"))
        acme_o1 = await join(tasks, broadcaster, Subscription("acme", {"order:o-1"}))
        customer = await join(tasks, broadcaster, Subscription("acme", {"customer:c-7"}))
        nobody = await join(tasks, broadcaster)
        await bus.publish(shipped("acme", "o-1"))
        await bus.publish(shipped("globex", "o-1"))
        await bus.publish(shipped("acme", "o-2", "c-7"))
        await bus.publish(shipped("acme", "o-1", "c-7"))
        await bus.publish(Announcement("hello"))
    hello = ("announcement", {"text": "hello"})
    assert acme.orders() == ["o-1", "o-2", "o-1"]
    assert acme.received()[-1] == hello
    assert globex.orders() == ["o-1"]
    assert globex.received()[-1] == hello
    assert acme_o1.orders() == ["o-1", "o-1"]
    assert customer.orders() == ["o-2", "o-1"]
    assert hello not in acme_o1.received() + customer.received()
    assert nobody.received() == [hello]


async def test_a_connection_without_a_subscription_gets_only_events_without_a_tenant() -> None:
    async with pipeline() as (bus, broadcaster, _):
        async with broadcaster.connect() as default:
            assert default.subscription == Subscription()
            await bus.publish(shipped("acme", "o-1"))
            assert broadcaster.publish(Announcement("hello")) is not None
            client = Client()
            default.close("done")  # run() writes what is queued, then returns
            await default.run(client.write)
    assert client.received() == [("announcement", {"text": "hello"})]


async def test_broadcast_of_a_ready_made_event_reaches_the_tenant_and_topics_given() -> None:
    async with pipeline() as (_, broadcaster, tasks):
        acme = await join(tasks, broadcaster, Subscription("acme"))
        acme_news = await join(tasks, broadcaster, Subscription("acme", {"news"}))
        globex = await join(tasks, broadcaster, Subscription("globex"))
        broadcaster.broadcast(
            ServerSentEvent(data="acme news", event="n"), tenant="acme", topics=["news"]
        )
        broadcaster.broadcast(ServerSentEvent(data="acme", event="n"), tenant="acme")
        broadcaster.broadcast(ServerSentEvent(data="all news", event="n"), topics={"news"})
        broadcaster.broadcast(ServerSentEvent(data="all", event="n"))
    assert [e.data for e in acme.events()] == ["acme news", "acme", "all news", "all"]
    assert [e.data for e in acme_news.events()] == ["acme news", "all news"]
    assert [e.data for e in globex.events()] == ["all news", "all"]


async def test_broadcast_refuses_a_plain_str_as_topics() -> None:
    async with pipeline() as (_, broadcaster, tasks):
        letter_o = await join(tasks, broadcaster, Subscription(topics={"o"}))
        with pytest.raises(InvalidArgumentError, match="topics"):
            broadcaster.broadcast(ServerSentEvent(data="x"), topics="order:1")
        with pytest.raises(InvalidArgumentError, match="tenant"):
            broadcaster.broadcast(ServerSentEvent(data="x"), tenant=5)  # type: ignore[arg-type]
    assert letter_o.events() == []


async def test_each_frame_is_encoded_once_whatever_the_audiences() -> None:
    encoder = CountingEncoder()
    subscriptions = [
        Subscription("acme"),
        Subscription("acme", {"order:o-1"}),
        Subscription("acme", {"customer:c-0", "order:o-1"}),
        Subscription("acme", attributes={"user": "ana"}),
        Subscription("globex"),
        Subscription(),
    ]
    async with pipeline(encoder=encoder) as (bus, broadcaster, tasks):
        clients = [await join(tasks, broadcaster, s) for s in subscriptions]
        # Each stream starts with its position (an ``id:`` of its own tenant's view).
        await wait_until(lambda: all(len(c.writes) == 1 for c in clients))
        markers = len(encoder.outputs)
        # Each publish reaches 4, 1 and 4 of the clients; let every writer take the frame
        # alone, so that each write is exactly one frame.
        for event, total in [
            (shipped("acme", "o-1"), 4),
            (InvoiceIssued("acme", "inv-1", "ana"), 5),
            (Announcement("hello"), 9),
        ]:
            await bus.publish(event)
            await wait_until(
                lambda: sum(len(c.writes) for c in clients) == len(clients) + total  # noqa: B023
            )
        frames = encoder.outputs[markers:]
        assert len(frames) == 3
        # A tenant-less frame reaches each tenant with that tenant's own id (only the id
        # line differs, not re-encoded): one copy per tenant, shared by its connections.
        copies: dict[tuple[str | None, bytes], bytes] = {}
        for client in clients:
            assert client.subscription is not None
            view = client.subscription.tenant
            for write in client.writes[1:]:
                if view is None:
                    assert any(write is out for out in frames)
                assert write is copies.setdefault((view, write), write)


async def test_heartbeats_reach_every_connection_whatever_its_subscription() -> None:
    subscriptions = [
        Subscription("acme", topics=()),  # matches no event at all
        Subscription("globex", {"order:o-1"}),
        Subscription(),
    ]
    async with pipeline(heartbeat=0.02) as (_, broadcaster, tasks):
        clients = [await join(tasks, broadcaster, s) for s in subscriptions]
        await wait_until(lambda: all(c.stream.count(b": ping\n") >= 2 for c in clients))


# --- the allow predicate -------------------------------------------------------------------


async def test_an_allow_predicate_decides_per_connection() -> None:
    async with pipeline() as (bus, broadcaster, tasks):
        ana = await join(tasks, broadcaster, Subscription("acme", attributes={"user": "ana"}))
        bob = await join(tasks, broadcaster, Subscription("acme", attributes={"user": "bob"}))
        other = await join(tasks, broadcaster, Subscription("globex", attributes={"user": "ana"}))
        await bus.publish(InvoiceIssued("acme", "inv-1", "ana"))
        await bus.publish(InvoiceIssued("acme", "inv-2", "bob"))
        await bus.publish(InvoiceIssued("acme", "inv-3", "ana"))
    assert [d["invoiceId"] for _, d in ana.received()] == ["inv-1", "inv-3"]
    assert [d["invoiceId"] for _, d in bob.received()] == ["inv-2"]
    assert other.received() == []  # another tenant's invoice, whoever the user


async def test_a_raising_allow_predicate_delivers_nothing_to_that_connection_logs_and_counts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="ssebus")
    hooked: list[tuple[str, float]] = []
    async with pipeline(metrics_hook=lambda n, v: hooked.append((n, v))) as (
        bus,
        broadcaster,
        tasks,
    ):
        ana = await join(tasks, broadcaster, Subscription("acme", attributes={"user": "ana"}))
        anonymous = await join(tasks, broadcaster, Subscription("acme"))  # no "user": KeyError
        assert anonymous.connection is not None
        await bus.publish(InvoiceIssued("acme", "inv-1", "ana"))
        await bus.publish(shipped("acme", "o-1"))  # the failing connection carries on
        metrics = broadcaster.metrics()
    assert [kind for kind, _ in ana.received()] == ["invoice-issued", "order-shipped"]
    assert anonymous.received() == [("order-shipped", ana.received()[1][1])]
    assert anonymous.connection.close_reason == "server shutting down"
    assert metrics.predicate_errors == 1
    assert metrics.events_published == 2
    assert ("predicate_errors", 1) in hooked
    [logged] = errors_about(caplog, "allow predicate")
    assert "'invoice-issued'" in logged.getMessage()
    assert "for 1 connection(s)" in logged.getMessage()
    assert "KeyError('user')" in logged.getMessage()  # the cause, in one line
    assert logged.exc_info is None


async def test_a_predicate_raising_for_many_connections_counts_each(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="ssebus")
    async with pipeline() as (bus, broadcaster, tasks):
        anonymous = [await join(tasks, broadcaster, Subscription("acme")) for _ in range(3)]
        ana = await join(tasks, broadcaster, Subscription("acme", attributes={"user": "ana"}))
        await bus.publish(InvoiceIssued("acme", "inv-1", "ana"))
        metrics = broadcaster.metrics()
    assert metrics.predicate_errors == 3
    assert [kind for kind, _ in ana.received()] == ["invoice-issued"]
    assert all(client.received() == [] for client in anonymous)
    assert errors_about(caplog, "allow predicate")


@pytest.mark.parametrize(
    "verdict",
    [1, "yes", ["ana"], object(), 1.0],
    ids=["one", "non-empty-str", "non-empty-list", "object", "float"],
)
async def test_an_allow_predicate_returning_a_truthy_value_other_than_true_delivers_nothing(
    verdict: object,
) -> None:
    def allow(event: Audited, subscription: Subscription) -> Any:
        return verdict

    events = tenant_events()
    events.add(Audited, "audited", lambda e: {"orderId": e.order_id}, allow=allow)
    async with pipeline(events) as (bus, broadcaster, tasks):
        client = await join(tasks, broadcaster)
        await bus.publish(Audited("acme", "o-1"))
        await bus.publish(Announcement("after"))
        metrics = broadcaster.metrics()
    assert client.received() == [("announcement", {"text": "after"})]
    assert metrics.predicate_errors == 0


# --- replay --------------------------------------------------------------------------------


async def test_replay_sends_only_the_missed_events_of_the_connections_tenant() -> None:
    async with pipeline() as (bus, broadcaster, tasks):
        # Each client connected before any event: it resumes from the id it was given then.
        start = {tenant: broadcaster.position_id(tenant) for tenant in ("acme", "globex", None)}
        await bus.publish(shipped("acme", "o-1"))
        await bus.publish(shipped("globex", "o-2"))
        await bus.publish(Announcement("hello"))
        await bus.publish(shipped("acme", "o-3"))
        acme = await join(tasks, broadcaster, Subscription("acme"), last_event_id=start["acme"])
        globex = await join(
            tasks, broadcaster, Subscription("globex"), last_event_id=start["globex"]
        )
        tenantless = await join(tasks, broadcaster, last_event_id=start[None])
        # Replays share one budget per loop turn: o-4 comes once all three are live (one
        # still catching up at shutdown would drop it, as it should: rule 7 of _resume).
        await wait_until(
            lambda: all(
                c.connection is not None and not c.connection.catching_up
                for c in (acme, globex, tenantless)
            )
        )
        await bus.publish(shipped("globex", "o-4"))
    hello = ("announcement", {"text": "hello"})
    assert acme.orders() == ["o-1", "o-3"]
    assert [kind for kind, _ in acme.received()] == [
        "order-shipped",
        "announcement",
        "order-shipped",
    ]
    assert globex.orders() == ["o-2", "o-4"]
    assert hello in globex.received()
    assert tenantless.received() == [hello]


async def test_replay_sends_only_the_missed_events_on_the_connections_topics() -> None:
    async with pipeline() as (bus, broadcaster, tasks):
        start = broadcaster.position_id("acme")
        await bus.publish(shipped("acme", "o-1", "c-7"))
        await bus.publish(shipped("acme", "o-2"))
        await bus.publish(Announcement("hello"))
        await bus.publish(shipped("acme", "o-3", "c-7"))
        subscription = Subscription("acme", {"customer:c-7", "order:o-2"})
        client = await join(tasks, broadcaster, subscription, last_event_id=start)
        await bus.publish(shipped("acme", "o-4", "c-7"))
        await bus.publish(shipped("acme", "o-5"))
        await wait_until(lambda: "o-4" in client.orders())
    assert client.orders() == ["o-1", "o-2", "o-3", "o-4"]
    assert len(client.events()) == 4  # neither the announcement nor o-5


async def test_replay_asks_the_allow_predicate_and_skips_a_frame_it_fails_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="ssebus")
    async with pipeline() as (bus, broadcaster, tasks):
        start = broadcaster.position_id("acme")
        await bus.publish(InvoiceIssued("acme", "inv-1", "ana"))
        await bus.publish(InvoiceIssued("acme", "inv-2", "bob"))
        await bus.publish(shipped("acme", "o-1"))
        assert broadcaster.metrics().predicate_errors == 0  # nobody was connected
        ana = await join(
            tasks,
            broadcaster,
            Subscription("acme", attributes={"user": "ana"}),
            last_event_id=start,
        )
        anonymous = await join(tasks, broadcaster, Subscription("acme"), last_event_id=start)
        assert anonymous.connection is not None
        await wait_until(lambda: anonymous.orders() == ["o-1"] and len(ana.received()) == 2)
        metrics = broadcaster.metrics()
    assert [kind for kind, _ in ana.received()] == ["invoice-issued", "order-shipped"]
    assert ana.received()[0][1] == {"invoiceId": "inv-1"}
    assert anonymous.orders() == ["o-1"]
    assert len(anonymous.events()) == 1
    assert metrics.predicate_errors == 2  # both invoices, for the anonymous connection
    logged = errors_about(caplog, "allow predicate")
    assert len(logged) == 2
    for record in logged:
        message = record.getMessage()
        assert "'invoice-issued'" in message
        assert "for 1 connection(s)" in message
        assert "KeyError('user')" in message
        assert record.exc_info is None


async def test_replay_then_live_under_a_filter_has_no_gap_and_no_duplicate() -> None:
    async with pipeline() as (bus, broadcaster, tasks):
        seen = broadcaster.publish(shipped("acme", "o-1"))
        assert seen is not None
        assert seen.id is not None
        await bus.publish(shipped("globex", "o-2"))
        await bus.publish(shipped("acme", "o-3"))
        client = await join(tasks, broadcaster, Subscription("acme"), last_event_id=seen.id)
        await bus.publish(shipped("globex", "o-4"))
        last = broadcaster.publish(shipped("acme", "o-5"))
        assert last is not None
        await wait_until(lambda: "o-5" in client.orders())
    assert client.orders() == ["o-3", "o-5"]
    assert client.last_event_id() == last.id


# --- expiry --------------------------------------------------------------------------------


async def test_expiry_ends_the_stream_with_a_credentials_expired_event_that_has_no_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="ssebus")
    expires_at = time.time() + 0.3
    async with pipeline() as (bus, broadcaster, tasks):
        client = await join(tasks, broadcaster, Subscription("acme", expires_at=expires_at))
        assert client.connection is not None
        await bus.publish(shipped("acme", "o-1"))
        delivered = broadcaster.position_id("acme")  # the id o-1 carries
        await client.finished.wait()
        assert client.connection.id not in [c.id for c in broadcaster.registry.snapshot()]
        await bus.publish(shipped("acme", "o-2"))  # after the end: not written
    assert client.finished_at is not None
    assert client.finished_at >= expires_at - 0.05  # not before its time ...
    assert client.finished_at < expires_at + 1.0  # ... and not long after
    assert client.stream.endswith(b"\n\n" + EXPIRED_FRAME)
    assert client.orders() == ["o-1"]
    assert client.events()[-1] == ParsedEvent(
        "credentials-expired", '{"reason":"credentials-expired"}', last_event_id=delivered
    )
    assert client.last_event_id() == delivered  # the client resumes from its last event
    assert client.connection.close_reason == "credentials expired"
    assert any("credentials expired" in r.getMessage() for r in caplog.records)


async def test_a_subscription_expired_at_connect_gets_the_replay_then_the_expired_event() -> None:
    async with pipeline() as (bus, broadcaster, tasks):
        start = broadcaster.position_id("acme")
        await bus.publish(shipped("acme", "o-1"))
        await bus.publish(shipped("globex", "o-2"))
        with anyio.fail_after(1.0):  # "right away"
            client = await join(
                tasks,
                broadcaster,
                Subscription("acme", expires_at=time.time() - 60),
                last_event_id=start,
            )
            await client.finished.wait()
        assert client.connection is not None
        assert client.connection.close_reason == "credentials expired"
    assert client.orders() == ["o-1"]
    assert [e.type for e in client.events()] == ["order-shipped", "credentials-expired"]
    assert client.stream.endswith(EXPIRED_FRAME)


async def test_a_stream_that_ends_before_its_expiry_gets_no_credentials_expired_event() -> None:
    async with pipeline() as (bus, broadcaster, tasks):
        client = await join(tasks, broadcaster, Subscription(expires_at=time.time() + 60))
        await bus.publish(Announcement("hello"))
    assert client.received() == [("announcement", {"text": "hello"})]
    assert b"credentials-expired" not in client.stream
    assert client.connection is not None
    assert client.connection.close_reason == "server shutting down"


async def test_connections_expire_each_at_their_own_time() -> None:
    now = time.time()
    async with pipeline() as (_, broadcaster, tasks):
        position = f"id: {broadcaster.position_id()}\n\n".encode()  # no event: the same id
        soon = await join(tasks, broadcaster, Subscription(expires_at=now + 0.1))
        later = await join(tasks, broadcaster, Subscription(expires_at=now + 0.4))
        never = await join(tasks, broadcaster)
        await soon.finished.wait()
        assert not later.finished.is_set()
        await later.finished.wait()
        assert len(broadcaster.registry) == 1
        assert not never.finished.is_set()
    assert soon.stream == later.stream == position + EXPIRED_FRAME
    assert b"credentials-expired" not in never.stream


# --- refusals ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "name"),
    [
        pytest.param({"status": 200}, "status", id="status-2xx"),
        pytest.param({"status": 600}, "status", id="status-600"),
        pytest.param({"status": "401"}, "status", id="status-str"),
        pytest.param({"status": True}, "status", id="status-bool"),
        pytest.param({"headers": [("x-a", "1\r\nx-b: 2")]}, "headers", id="header-crlf"),
        pytest.param({"headers": [("x-a",)]}, "headers", id="header-not-a-pair"),
        pytest.param({"headers": [(b"x-a", b"1")]}, "headers", id="header-bytes"),
    ],
)
def test_a_bad_refusal_is_refused_naming_the_field(options: dict[str, Any], name: str) -> None:
    with pytest.raises(ConfigurationError, match=name) as caught:
        Refusal(**options)
    assert caught.value.setting == name


# --- over a real server --------------------------------------------------------------------
#
# ``tenant_app`` runs in a uvicorn subprocess (``uvicorn --factory
# test_subscriptions:tenant_app --app-dir tests``). ``GET /events?tenant=T[&topic=...]
# [&expires_in=SECONDS]`` streams tenant T's events; without ``tenant`` it is refused with
# 401 and a ``WWW-Authenticate`` challenge; ``tenant=raise`` makes the hook raise and
# ``tenant=confused`` makes it return neither a Subscription nor a Refusal.
# ``POST /orders {"tenant", "order", "customer"?}`` publishes ``OrderShipped`` and
# ``POST /announce {"text"}`` an ``Announcement`` on the app's bus: in memory, or a
# ``RedisEventBus`` in streams mode on the stream named by ``SSEBUS_TEST_STREAM``.

RETRY_MS = 3000
STREAM_ENV = "SSEBUS_TEST_STREAM"
CHALLENGE = 'Bearer realm="orders"'


async def authorize_by_query(scope: Scope) -> Subscription | Refusal | None:
    query = parse_qs(bytes(scope.get("query_string", b"")).decode())
    tenant = query.get("tenant", [None])[-1]
    if tenant is None:
        return Refusal(401, "Unauthorized", headers=[("WWW-Authenticate", CHALLENGE)])
    if tenant == "raise":
        raise RuntimeError("the token service is down")
    if tenant == "confused":
        return cast(Subscription, "yes")  # neither a Subscription nor a Refusal
    topics = query.get("topic")
    expires_in = query.get("expires_in")
    return Subscription(
        tenant,
        topics=topics or None,
        expires_at=time.time() + float(expires_in[-1]) if expires_in else None,
    )


def tenant_app() -> Starlette:
    """The app the server tests run (in the server's process, not pytest's)."""
    logger = logging.getLogger("ssebus")
    if not logger.handlers:  # the server's output is shown when a test fails
        logger.addHandler(logging.StreamHandler())
        logger.setLevel(logging.INFO)
    stream = os.environ.get(STREAM_ENV)
    bus: InMemoryEventBus | RedisEventBus
    if stream:
        bus = RedisEventBus(REDIS_URL, mode="streams", stream=stream, reconnect_backoff=(0.05, 0.5))
        bus.register(OrderShipped)
        bus.register(Announcement)
    else:
        bus = InMemoryEventBus()
    broadcaster = Broadcaster(bus, tenant_events(), heartbeat=None)

    async def orders(request: Request) -> Response:
        body = await request.json()
        await bus.publish(OrderShipped(body["tenant"], body["order"], body.get("customer", "c-0")))
        return JSONResponse({"published": True})

    async def announce(request: Request) -> Response:
        body = await request.json()
        await bus.publish(Announcement(body["text"]))
        return JSONResponse({"published": True})

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with bus, broadcaster:
            yield

    return Starlette(
        routes=[
            Route(
                "/events", SseEndpoint(broadcaster, retry=RETRY_MS, authorize=authorize_by_query)
            ),
            Route("/orders", orders, methods=["POST"]),
            Route("/announce", announce, methods=["POST"]),
        ],
        lifespan=lifespan,
    )


@contextmanager
def serve_tenant_app(env: dict[str, str] | None = None) -> Iterator[ServerProcess]:
    port = free_port()
    command = uvicorn_command(
        "test_subscriptions:tenant_app", port, "--app-dir", str(ROOT / "tests")
    )
    with run_server(command, port, env=env) as server:
        yield server


@pytest.fixture(scope="module")
def tenant_server() -> Iterator[ServerProcess]:
    with serve_tenant_app() as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=GUARD) as client:
        yield client


def dispatched(sse: ReceivedSse) -> bool:
    """Whether a browser would dispatch ``sse``: httpx-sse also yields a data-less "event"
    for each block that only sets an id (the stream's position) or follows one."""
    return not (sse.event == "message" and sse.data == "")


class Subscriber:
    """An httpx-sse client on ``GET /events``: ``next(n)`` returns its next n events."""

    def __init__(self, events: AsyncIterator[ReceivedSse]) -> None:
        self._events = events

    async def next(self, count: int) -> list[tuple[str, Any, str]]:
        """(event, decoded data, id) of the next ``count`` events."""
        got: list[tuple[str, Any, str]] = []
        with anyio.fail_after(GUARD):
            while len(got) < count:
                sse = await anext(self._events)
                if dispatched(sse):
                    got.append((sse.event, json.loads(sse.data), sse.id))
        return got

    async def rest(self) -> list[ReceivedSse]:
        """Every event until the server ends the stream."""
        with anyio.fail_after(GUARD):
            return [sse async for sse in self._events if dispatched(sse)]


@asynccontextmanager
async def subscriber(
    http: httpx.AsyncClient, base: str, **params: str | list[str]
) -> AsyncIterator[Subscriber]:
    """Connected (its ``retry:`` prelude read, so it is registered) until the block ends."""
    async with (
        aconnect_sse(http, "GET", f"{base}/events", params=params) as source,
        aclosing(source.aiter_sse()) as events,
    ):
        assert source.response.status_code == 200
        with anyio.fail_after(GUARD):
            first = await anext(events)
        assert (first.data, first.retry) == ("", RETRY_MS)
        yield Subscriber(events)


async def post(http: httpx.AsyncClient, url: str, body: dict[str, str]) -> None:
    response = await http.post(url, json=body)
    response.raise_for_status()


def tenant_name() -> str:
    """A tenant no other test uses: the module's server is shared."""
    return f"t-{uuid.uuid4().hex[:8]}"


async def test_a_refusal_answers_its_status_reason_and_headers_before_any_stream(
    tenant_server: ServerProcess, http: httpx.AsyncClient
) -> None:
    with anyio.fail_after(GUARD):
        response = await http.get(f"{tenant_server.url}/events")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == CHALLENGE
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.text == "Unauthorized"
    assert "x-accel-buffering" not in response.headers


@pytest.mark.parametrize("tenant", ["raise", "confused"], ids=["hook-raises", "hook-returns-str"])
async def test_a_failing_authorize_hook_answers_500_before_any_stream(
    tenant_server: ServerProcess, http: httpx.AsyncClient, tenant: str
) -> None:
    with anyio.fail_after(GUARD):
        response = await http.get(f"{tenant_server.url}/events", params={"tenant": tenant})
    assert response.status_code == 500
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.text == "Internal Server Error"


async def test_clients_of_two_tenants_each_get_only_their_tenants_events_over_a_real_server(
    tenant_server: ServerProcess, http: httpx.AsyncClient
) -> None:
    base = tenant_server.url
    acme, globex = tenant_name(), tenant_name()
    async with (
        subscriber(http, base, tenant=acme) as acme_client,
        subscriber(http, base, tenant=globex) as globex_client,
        subscriber(http, base, tenant=acme, topic="order:o-3") as acme_o3,
    ):
        await post(http, f"{base}/orders", {"tenant": acme, "order": "o-1"})
        await post(http, f"{base}/orders", {"tenant": globex, "order": "o-2"})
        await post(http, f"{base}/orders", {"tenant": acme, "order": "o-3"})
        await post(http, f"{base}/announce", {"text": "to everyone"})
        # Anything that should not have come would arrive before the last expected event.
        got_acme = await acme_client.next(3)
        got_globex = await globex_client.next(2)
        got_o3 = await acme_o3.next(1)
    assert [(kind, data.get("orderId")) for kind, data, _ in got_acme] == [
        ("order-shipped", "o-1"),
        ("order-shipped", "o-3"),
        ("announcement", None),
    ]
    assert [(kind, data.get("orderId")) for kind, data, _ in got_globex] == [
        ("order-shipped", "o-2"),
        ("announcement", None),
    ]
    assert got_o3 == [got_acme[1]]
    # The same announcement, each tenant with an id of its own (no id is shared).
    assert got_acme[2][:2] == got_globex[1][:2]
    assert got_acme[2][2] != got_globex[1][2]


async def test_resuming_over_a_real_server_replays_only_the_clients_tenant(
    tenant_server: ServerProcess, http: httpx.AsyncClient
) -> None:
    base = tenant_server.url
    acme, globex = tenant_name(), tenant_name()
    async with subscriber(http, base, tenant=acme) as first:
        await post(http, f"{base}/orders", {"tenant": acme, "order": "o-1"})
        [(_, _, seen)] = await first.next(1)
    await post(http, f"{base}/orders", {"tenant": globex, "order": "o-2"})
    await post(http, f"{base}/orders", {"tenant": acme, "order": "o-3"})
    async with subscriber(http, base, tenant=acme, lastEventId=seen) as resumed:
        await post(http, f"{base}/orders", {"tenant": acme, "order": "o-4"})
        got = await resumed.next(2)
    assert [data["orderId"] for _, data, _ in got] == ["o-3", "o-4"]


async def test_expiry_over_a_real_server_ends_the_stream_with_credentials_expired(
    tenant_server: ServerProcess, http: httpx.AsyncClient
) -> None:
    base = tenant_server.url
    acme = tenant_name()
    async with subscriber(http, base, tenant=acme, expires_in="0.3") as client:
        await post(http, f"{base}/orders", {"tenant": acme, "order": "o-1"})
        [(_, _, delivered)] = await client.next(1)
        rest = await client.rest()  # the server ends the stream
    assert [(sse.event, sse.data, sse.id) for sse in rest] == [
        ("credentials-expired", '{"reason":"credentials-expired"}', delivered),
    ]


# --- across two instances sharing a Redis stream -------------------------------------------


@pytest.fixture
async def redis_instances(need_redis: None) -> AsyncIterator[Sequence[ServerProcess]]:
    """Two servers of ``tenant_app`` on one fresh Redis stream, deleted afterwards."""
    async with fresh_bus_names("ssebus-test-") as new_name:
        stream = new_name()
        with ExitStack() as servers:
            yield [servers.enter_context(serve_tenant_app({STREAM_ENV: stream})) for _ in "ab"]


async def test_tenants_stay_apart_across_two_instances_sharing_a_redis_stream(
    redis_instances: Sequence[ServerProcess], http: httpx.AsyncClient
) -> None:
    a, b = (server.url for server in redis_instances)
    async with (
        subscriber(http, a, tenant="acme") as acme_on_a,
        subscriber(http, b, tenant="globex") as globex_on_b,
        subscriber(http, b, tenant="acme") as acme_on_b,
    ):
        await post(http, f"{a}/orders", {"tenant": "acme", "order": "o-1"})
        await post(http, f"{b}/orders", {"tenant": "globex", "order": "o-2"})
        await post(http, f"{a}/orders", {"tenant": "globex", "order": "o-3"})
        await post(http, f"{b}/announce", {"text": "to everyone"})
        got_acme_a = await acme_on_a.next(2)
        got_globex_b = await globex_on_b.next(3)
        got_acme_b = await acme_on_b.next(2)
    assert [(kind, data.get("orderId")) for kind, data, _ in got_acme_a] == [
        ("order-shipped", "o-1"),
        ("announcement", None),
    ]
    assert [(kind, data.get("orderId")) for kind, data, _ in got_globex_b] == [
        ("order-shipped", "o-2"),
        ("order-shipped", "o-3"),
        ("announcement", None),
    ]
    assert got_acme_b == got_acme_a  # same events, same ids on both instances
    assert got_globex_b[2][:2] == got_acme_a[1][:2]  # the same announcement ...
    assert got_globex_b[2][2] != got_acme_a[1][2]  # ... with each tenant's own id
