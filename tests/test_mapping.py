"""``EventMap``: which domain events are broadcast, under which SSE name and payload.

The rules: routes are added with ``add``, the ``on`` decorator or a dict; an event matches
its own type first, then its base classes in method resolution order; an unmapped event
has no route; a type gets one route only; a name that cannot be an ``event:`` line, a
payload that is not callable or an event type that is not a class is refused, naming it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from domain import DomainEvent, OrderCreatedDomainEvent, OrderStatusChangedDomainEvent

from ssebus import ConfigurationError, EventMap, Route


@dataclass(frozen=True)
class PriorityOrderCreatedDomainEvent(OrderCreatedDomainEvent):
    priority: int = 1


class Audited:
    """A mixin, to check multiple inheritance."""


@dataclass(frozen=True)
class AuditedOrderCreatedDomainEvent(Audited, OrderCreatedDomainEvent):
    pass


def created_payload(event: OrderCreatedDomainEvent) -> dict[str, Any]:
    return {"orderId": event.order_id, "status": event.status}


def changed_payload(event: OrderStatusChangedDomainEvent) -> dict[str, Any]:
    return {
        "orderId": event.order_id,
        "oldStatus": event.old_status,
        "newStatus": event.new_status,
    }


def payload_of(events: EventMap, event: object) -> tuple[str, Any]:
    route = events.route(event)
    assert route is not None
    return route.name, route.payload(event)


CREATED = OrderCreatedDomainEvent("ord-1")
CHANGED = OrderStatusChangedDomainEvent("ord-1", "created", "paid")
EXPECTED = {
    CREATED: ("order-created", {"orderId": "ord-1", "status": "created"}),
    CHANGED: (
        "order-status-changed",
        {"orderId": "ord-1", "oldStatus": "created", "newStatus": "paid"},
    ),
}


# --- the three ways to build a map ---------------------------------------------------------


def test_add_routes_an_event_type_to_a_name_and_payload() -> None:
    events = EventMap()
    events.add(OrderCreatedDomainEvent, "order-created", created_payload)
    events.add(OrderStatusChangedDomainEvent, "order-status-changed", changed_payload)
    assert payload_of(events, CREATED) == EXPECTED[CREATED]
    assert payload_of(events, CHANGED) == EXPECTED[CHANGED]


def test_add_accepts_a_lambda_payload() -> None:
    events = EventMap()
    events.add(
        OrderCreatedDomainEvent,
        "order-created",
        lambda e: {"orderId": e.order_id, "status": e.status},
    )
    assert payload_of(events, CREATED) == EXPECTED[CREATED]


def test_the_on_decorator_routes_and_returns_the_payload_function_unchanged() -> None:
    events = EventMap()

    @events.on(OrderCreatedDomainEvent, "order-created")
    def created(event: OrderCreatedDomainEvent) -> dict[str, Any]:
        return {"orderId": event.order_id, "status": event.status}

    @events.on(OrderStatusChangedDomainEvent, "order-status-changed")
    def changed(event: OrderStatusChangedDomainEvent) -> dict[str, Any]:
        return changed_payload(event)

    assert created(CREATED) == {"orderId": "ord-1", "status": "created"}
    assert payload_of(events, CREATED) == EXPECTED[CREATED]
    assert payload_of(events, CHANGED) == EXPECTED[CHANGED]


def test_a_dict_of_type_to_name_and_payload_builds_the_same_map() -> None:
    events = EventMap(
        {
            OrderCreatedDomainEvent: ("order-created", created_payload),
            OrderStatusChangedDomainEvent: ("order-status-changed", changed_payload),
        }
    )
    assert len(events) == 2
    assert payload_of(events, CREATED) == EXPECTED[CREATED]
    assert payload_of(events, CHANGED) == EXPECTED[CHANGED]


def test_route_carries_type_name_and_payload() -> None:
    events = EventMap({OrderCreatedDomainEvent: ("order-created", created_payload)})
    assert events.route(CREATED) == Route(OrderCreatedDomainEvent, "order-created", created_payload)


def test_len_and_event_types_list_the_routes_in_order_added() -> None:
    events = EventMap()
    assert len(events) == 0
    assert len(events.event_types) == 0
    events.add(OrderStatusChangedDomainEvent, "order-status-changed", changed_payload)
    events.add(OrderCreatedDomainEvent, "order-created", created_payload)
    assert len(events) == 2
    assert list(events.event_types) == [OrderStatusChangedDomainEvent, OrderCreatedDomainEvent]


# --- routing -------------------------------------------------------------------------------


def test_an_unmapped_event_has_no_route() -> None:
    events = EventMap({OrderCreatedDomainEvent: ("order-created", created_payload)})
    assert events.route(CHANGED) is None
    assert events.route("a string") is None
    assert events.route(DomainEvent()) is None


def test_a_subclass_event_takes_its_base_class_route() -> None:
    events = EventMap({OrderCreatedDomainEvent: ("order-created", created_payload)})
    assert payload_of(events, PriorityOrderCreatedDomainEvent("ord-2", priority=3)) == (
        "order-created",
        {"orderId": "ord-2", "status": "created"},
    )


def test_an_events_own_type_wins_over_its_base_class() -> None:
    events = EventMap()
    events.add(DomainEvent, "domain-event", lambda e: {"kind": type(e).__name__})
    events.add(OrderCreatedDomainEvent, "order-created", created_payload)
    assert payload_of(events, CREATED) == EXPECTED[CREATED]
    assert payload_of(events, CHANGED) == (
        "domain-event",
        {"kind": "OrderStatusChangedDomainEvent"},
    )


def test_the_nearest_base_in_method_resolution_order_wins() -> None:
    events = EventMap()
    events.add(DomainEvent, "domain-event", lambda e: "domain")
    events.add(OrderCreatedDomainEvent, "order-created", lambda e: "created")
    assert payload_of(events, PriorityOrderCreatedDomainEvent("ord-1")) == (
        "order-created",
        "created",
    )


def test_with_multiple_inheritance_the_first_base_in_the_mro_wins() -> None:
    events = EventMap()
    events.add(OrderCreatedDomainEvent, "order-created", lambda e: "created")
    events.add(Audited, "audited", lambda e: "audited")
    # MRO: AuditedOrderCreatedDomainEvent, Audited, OrderCreatedDomainEvent, ...
    assert payload_of(events, AuditedOrderCreatedDomainEvent("ord-1")) == (
        "audited",
        "audited",
    )


def test_a_route_added_after_a_lookup_is_found() -> None:
    events = EventMap()
    assert events.route(PriorityOrderCreatedDomainEvent("ord-1")) is None  # cached miss
    events.add(OrderCreatedDomainEvent, "order-created", created_payload)
    assert payload_of(events, PriorityOrderCreatedDomainEvent("ord-1"))[0] == "order-created"


def test_a_more_specific_route_added_after_a_lookup_takes_over() -> None:
    events = EventMap({DomainEvent: ("domain-event", lambda e: "domain")})
    assert payload_of(events, CREATED)[0] == "domain-event"  # cached base-class hit
    events.add(OrderCreatedDomainEvent, "order-created", created_payload)
    assert payload_of(events, CREATED) == EXPECTED[CREATED]


# --- refusals ------------------------------------------------------------------------------


def test_a_second_route_for_the_same_type_is_refused() -> None:
    events = EventMap()
    events.add(OrderCreatedDomainEvent, "order-created", created_payload)
    with pytest.raises(ConfigurationError, match="already has a route") as caught:
        events.add(OrderCreatedDomainEvent, "order-created-again", created_payload)
    assert caught.value.setting == "event_type"
    assert payload_of(events, CREATED) == EXPECTED[CREATED]


def test_a_second_route_via_the_decorator_is_refused() -> None:
    events = EventMap({OrderCreatedDomainEvent: ("order-created", created_payload)})
    with pytest.raises(ConfigurationError):

        @events.on(OrderCreatedDomainEvent, "again")
        def again(event: OrderCreatedDomainEvent) -> str:
            return "again"


@pytest.mark.parametrize(
    "name",
    ["", "order\ncreated", "order\rcreated", "order-created\r\n", "bad\ud800name"],
)
def test_a_name_that_cannot_be_an_event_line_is_refused_naming_name(name: str) -> None:
    events = EventMap()
    with pytest.raises(ConfigurationError, match="name") as caught:
        events.add(OrderCreatedDomainEvent, name, created_payload)
    assert caught.value.setting == "name"
    assert len(events) == 0


@pytest.mark.parametrize("name", [None, 42, b"order-created"])
def test_a_name_that_is_not_a_str_is_refused_naming_name(name: object) -> None:
    with pytest.raises(ConfigurationError) as caught:
        EventMap().add(OrderCreatedDomainEvent, name, created_payload)  # type: ignore[arg-type]
    assert caught.value.setting == "name"


def test_a_bad_name_in_the_dict_form_is_refused_naming_name() -> None:
    with pytest.raises(ConfigurationError) as caught:
        EventMap({OrderCreatedDomainEvent: ("order\ncreated", created_payload)})
    assert caught.value.setting == "name"


def test_a_payload_that_is_not_callable_is_refused_naming_payload() -> None:
    with pytest.raises(ConfigurationError) as caught:
        EventMap().add(OrderCreatedDomainEvent, "order-created", {"a": 1})  # type: ignore[arg-type]
    assert caught.value.setting == "payload"


def test_an_event_type_that_is_not_a_class_is_refused_naming_event_type() -> None:
    with pytest.raises(ConfigurationError) as caught:
        EventMap().add(CREATED, "order-created", created_payload)  # type: ignore[arg-type]
    assert caught.value.setting == "event_type"


@pytest.mark.parametrize(
    ("name", "reason"),
    [("error", "connection fails"), ("open", "connection opens")],
)
def test_a_name_eventsource_fires_itself_is_refused_naming_name_and_why(
    name: str, reason: str
) -> None:
    events = EventMap()
    with pytest.raises(ConfigurationError, match=reason) as caught:
        events.add(OrderCreatedDomainEvent, name, created_payload)
    assert caught.value.setting == "name"
    assert caught.value.value == name
    assert len(events) == 0


@pytest.mark.parametrize("name", ["message", "Error", "OPEN", "order-error", "opened"])
def test_the_default_message_type_and_lookalikes_of_reserved_names_are_allowed(
    name: str,
) -> None:
    events = EventMap()
    events.add(OrderCreatedDomainEvent, name, created_payload)
    route = events.route(CREATED)
    assert route is not None
    assert route.name == name
