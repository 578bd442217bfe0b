"""The default JSON serializer (``compact_json``) and ``orjson_dumps``: what the payload types
people actually use become in an event's data, and what is refused, naming where and why.

Every accepted type is checked by a round trip: the JSON text, parsed by ``json.loads``,
gives the original value back through the type's own parser (``datetime.fromisoformat``,
``UUID``, ``Decimal``, the enum, the dataclass, ``Model.model_validate``).
"""

from __future__ import annotations

import enum
import json
import logging
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any
from uuid import UUID

import pydantic
import pytest
from clients import join, running, wait_until
from hypothesis import given, settings
from hypothesis import strategies as st

from ssebus import EventMap, SerializationError, ServerSentEvent, compact_json, orjson_dumps

few = settings(max_examples=60)  # the machine is shared; each runs twice (two serializers)

DUMPS = [pytest.param(compact_json, id="compact_json"), pytest.param(orjson_dumps, id="orjson")]
Dumps = Callable[[Any], "str | bytes"]


def loads(dumps: Dumps, value: object) -> Any:
    """``value`` through ``dumps`` and back through ``json.loads``."""
    return json.loads(dumps(value))


class Status(enum.Enum):
    CREATED = "created"
    PAID = "paid"
    SHIPPED = 3


@dataclass(frozen=True)
class Line:
    sku: str
    quantity: int
    price: Decimal


@dataclass(frozen=True)
class Placed:
    order_id: UUID
    at: datetime
    lines: tuple[Line, ...]
    status: Status


class Order(pydantic.BaseModel):
    id: UUID
    placed_at: datetime
    total: Decimal
    status: Status
    tags: list[str]


offsets = st.builds(
    timezone,
    st.integers(min_value=-(24 * 60 - 1), max_value=24 * 60 - 1).map(
        lambda minutes: timedelta(minutes=minutes)
    ),
)
aware_datetimes = st.datetimes(timezones=offsets)
decimals = st.decimals(allow_nan=True, allow_infinity=True)
int64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)  # orjson's range (documented)
lines = st.builds(Line, st.text(), int64, st.decimals(allow_nan=False))
placed = st.builds(
    Placed,
    st.uuids(),
    aware_datetimes,
    st.lists(lines, max_size=3).map(tuple),
    st.sampled_from(Status),
)
orders = st.builds(
    Order,
    id=st.uuids(),
    placed_at=aware_datetimes,
    total=st.decimals(allow_nan=False, allow_infinity=False),
    status=st.sampled_from(Status),
    tags=st.lists(st.text()),
)


# --- round trips ------------------------------------------------------------------------


@pytest.mark.parametrize("dumps", DUMPS)
@few
@given(value=aware_datetimes)
def test_an_aware_datetime_is_iso_8601_with_its_offset(dumps: Dumps, value: datetime) -> None:
    text = loads(dumps, {"at": value})["at"]
    assert text == value.isoformat()
    back = datetime.fromisoformat(text)
    assert back == value
    assert back.utcoffset() == value.utcoffset()


@pytest.mark.parametrize("dumps", DUMPS)
@few
@given(value=st.datetimes())
def test_a_naive_datetime_is_iso_8601_without_an_offset(dumps: Dumps, value: datetime) -> None:
    text = loads(dumps, [value])[0]
    assert "+" not in text[10:]
    assert not text.endswith("Z")
    assert datetime.fromisoformat(text) == value


@pytest.mark.parametrize("dumps", DUMPS)
@few
@given(day=st.dates(), at=st.times(timezones=st.none() | offsets))
def test_a_date_and_a_time_are_iso_8601(dumps: Dumps, day: date, at: time) -> None:
    decoded = loads(dumps, {"day": day, "at": at})
    assert date.fromisoformat(decoded["day"]) == day
    assert time.fromisoformat(decoded["at"]) == at
    assert time.fromisoformat(decoded["at"]).utcoffset() == at.utcoffset()


@pytest.mark.parametrize("dumps", DUMPS)
@few
@given(value=st.uuids())
def test_a_uuid_is_its_canonical_string(dumps: Dumps, value: UUID) -> None:
    text = loads(dumps, {"id": value})["id"]
    assert text == str(value)
    assert UUID(text) == value


@pytest.mark.parametrize("dumps", DUMPS)
@few
@given(value=decimals)
def test_a_decimal_is_a_string_that_keeps_every_digit(dumps: Dumps, value: Decimal) -> None:
    text = loads(dumps, {"total": value})["total"]
    assert isinstance(text, str)  # a JSON number would be a float in JavaScript
    assert Decimal(text).as_tuple() == value.as_tuple()


@pytest.mark.parametrize("dumps", DUMPS)
@few
@given(value=st.sampled_from(Status))
def test_an_enum_is_its_value(dumps: Dumps, value: Status) -> None:
    assert Status(loads(dumps, {"status": value})["status"]) is value


@pytest.mark.parametrize("dumps", DUMPS)
@few
@given(value=placed)
def test_a_dataclass_is_an_object_of_its_fields(dumps: Dumps, value: Placed) -> None:
    decoded = loads(dumps, value)
    assert set(decoded) == {"order_id", "at", "lines", "status"}
    back = Placed(
        UUID(decoded["order_id"]),
        datetime.fromisoformat(decoded["at"]),
        tuple(
            Line(line["sku"], line["quantity"], Decimal(line["price"])) for line in decoded["lines"]
        ),
        Status(decoded["status"]),
    )
    assert back == value


@pytest.mark.parametrize("dumps", DUMPS)
@few
@given(value=orders)
def test_a_pydantic_model_is_its_json_mode_dump(dumps: Dumps, value: Order) -> None:
    decoded = loads(dumps, {"order": value})["order"]
    assert decoded == value.model_dump(mode="json")
    assert Order.model_validate(decoded) == value


json_scalars = (
    st.none() | st.booleans() | int64 | st.floats(allow_nan=False, allow_infinity=False) | st.text()
)
extended = json_scalars | aware_datetimes | st.uuids() | decimals | st.sampled_from(Status) | lines
payloads = st.recursive(
    extended,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@few
@given(payload=payloads)
def test_orjson_dumps_gives_the_same_json_as_compact_json(payload: object) -> None:
    assert json.loads(orjson_dumps(payload)) == json.loads(compact_json(payload))


def test_compact_json_stays_compact_and_keeps_non_ascii_text() -> None:
    assert (
        compact_json({"a": [1, "é"], "at": date(2026, 1, 2)}) == '{"a":[1,"é"],"at":"2026-01-02"}'
    )


# --- refusals -----------------------------------------------------------------------------


@pytest.mark.parametrize("dumps", DUMPS)
@pytest.mark.parametrize(
    ("value", "named"),
    [
        pytest.param(b"raw", "bytes", id="bytes"),
        pytest.param(bytearray(b"raw"), "bytearray", id="bytearray"),
        pytest.param({1, 2}, "set", id="set"),
        pytest.param(frozenset({"a"}), "frozenset", id="frozenset"),
        pytest.param(object(), "object", id="object"),
    ],
)
def test_a_value_without_one_json_form_is_refused_naming_its_type(
    dumps: Dumps, value: object, named: str
) -> None:
    with pytest.raises(TypeError, match=rf"\b{named}\b"):
        dumps({"field": value})


@pytest.mark.parametrize("dumps", DUMPS)
@pytest.mark.parametrize(
    ("payload", "path", "named"),
    [
        pytest.param({"lines": [{"sku": "a"}, {"blob": b"x"}]}, "payload.lines[1].blob", "bytes"),
        pytest.param({"order": Line("a", 1, {2})}, "payload.order.price", "set"),  # type: ignore[arg-type]
        pytest.param({"my key": [object()]}, "payload['my key'][0]", "object"),
        pytest.param(b"x", "payload", "bytes"),
    ],
)
def test_a_payload_that_cannot_be_serialized_names_the_field_and_the_type(
    dumps: Dumps, payload: object, path: str, named: str
) -> None:
    with pytest.raises(SerializationError) as caught:
        ServerSentEvent.json(payload, event="order-placed", dumps=dumps)
    assert caught.value.path == path
    message = str(caught.value)
    assert "'order-placed'" in message
    assert path in message
    assert named in message


@pytest.mark.parametrize("number", [float("nan"), float("inf"), -float("inf")])
def test_nan_and_infinities_are_refused_by_compact_json_and_null_in_orjson(number: float) -> None:
    with pytest.raises(SerializationError) as caught:
        ServerSentEvent.json([1, {"x": number}])
    assert caught.value.path == "payload[1].x"
    assert "not a JSON number" in str(caught.value)
    assert json.loads(orjson_dumps({"x": number})) == {"x": None}


def test_a_self_referencing_payload_is_refused_naming_where() -> None:
    payload: dict[str, Any] = {"a": {}}
    payload["a"]["loop"] = payload
    with pytest.raises(SerializationError, match="circular") as caught:
        ServerSentEvent.json(payload)
    assert caught.value.path == "payload.a.loop"


def test_importing_ssebus_and_encoding_imports_neither_pydantic_nor_orjson() -> None:
    script = (
        "import sys, datetime, ssebus;"
        "ssebus.compact_json({'at': datetime.datetime(2026, 1, 1), 'x': [1]});"
        "print(sorted({'pydantic', 'orjson'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- in the broadcaster -------------------------------------------------------------------


@dataclass(frozen=True)
class Shipped:
    order_id: str
    extra: object


def shipped_events(dumps: Dumps) -> tuple[EventMap, dict[str, Any]]:
    events = EventMap()
    events.add(Shipped, "order-shipped", lambda e: {"orderId": e.order_id, "extra": e.extra})
    return events, {"dumps": dumps}


@pytest.mark.anyio
@pytest.mark.parametrize("dumps", DUMPS)
async def test_the_broadcaster_delivers_payloads_with_datetimes_decimals_and_models(
    dumps: Dumps,
) -> None:
    at = datetime(2026, 12, 1, 13, 30, tzinfo=timezone.utc)
    order = Order(
        id=UUID(int=7), placed_at=at, total=Decimal("19.99"), status=Status.PAID, tags=["x"]
    )
    events, options = shipped_events(dumps)
    async with running(events, **options) as (bus, broadcaster, tasks):
        client = await join(tasks, broadcaster)
        await bus.publish(Shipped("ord-1", {"at": at, "total": Decimal("0.10"), "order": order}))
        await wait_until(lambda: len(client.events()) == 1)
    assert json.loads(client.events()[0].data) == {
        "orderId": "ord-1",
        "extra": {
            "at": "2026-12-01T13:30:00+00:00",
            "total": "0.10",
            "order": order.model_dump(mode="json"),
        },
    }


@pytest.mark.anyio
@pytest.mark.parametrize("dumps", DUMPS)
async def test_an_unserializable_payload_drops_that_event_with_one_line_naming_type_and_field(
    dumps: Dumps, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="ssebus")
    events, options = shipped_events(dumps)
    async with running(events, **options) as (bus, broadcaster, tasks):
        client = await join(tasks, broadcaster)
        await bus.publish(Shipped("ord-1", [{"blob": b"\x00"}]))
        await bus.publish(Shipped("ord-2", None))
        await wait_until(lambda: len(client.events()) == 1)
    assert json.loads(client.events()[0].data)["orderId"] == "ord-2"
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    line = errors[0].getMessage()
    assert errors[0].exc_info is None
    assert "\n" not in line
    assert "Shipped" in line
    assert "'order-shipped'" in line
    assert "payload.extra[0].blob" in line
    assert "bytes" in line
