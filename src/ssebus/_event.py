"""``ServerSentEvent``: one event as an immutable value, checked when it is built."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, time
from decimal import Decimal
from enum import Enum
from types import ModuleType
from typing import Any
from uuid import UUID

from ._exceptions import InvalidEventError, SerializationError

__all__ = ["JsonDumps", "ServerSentEvent", "compact_json", "orjson_dumps"]

#: Turns a payload into JSON text; ``orjson.dumps`` (bytes) and ``json.dumps`` (str) both fit.
JsonDumps = Callable[[Any], "str | bytes"]


def _json_form(value: object) -> object:
    """The JSON form of a value ``json`` cannot encode by itself (its ``default=`` hook).

    datetime, date, time: ISO 8601 (a naive one stays naive: no offset, no ``Z``); UUID: its
    canonical string; Decimal: a string, since a JSON number is a float in JavaScript; Enum:
    its value; a dataclass: an object of its fields; a pydantic v2 model: its
    ``model_dump(mode="json")``. Sets and bytes have no single JSON form and are refused.
    """
    if isinstance(value, (date, time)):  # datetime is a date
        return value.isoformat()
    if isinstance(value, (UUID, Decimal)):
        return str(value)
    if isinstance(value, Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: getattr(value, field.name) for field in dataclasses.fields(value)}
    pydantic = sys.modules.get("pydantic")  # a model's class imported it already
    if pydantic is not None and isinstance(value, pydantic.BaseModel):
        return value.model_dump(mode="json")
    kind = type(value).__name__
    if isinstance(value, (set, frozenset)):
        raise TypeError(f"a {kind} has no order, so no one JSON form: return sorted(...) or a list")
    if isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(
            f"{kind} has no one JSON form: decode it to text, or base64-encode it, in the "
            "payload function"
        )
    raise TypeError(
        f"{type(value).__qualname__} is not JSON-serializable: return JSON types (or a "
        "datetime, UUID, Decimal, Enum, dataclass or pydantic model) from the payload function"
    )


_ENCODER = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_json_form
)


def compact_json(payload: Any) -> str:
    """Serialize ``payload`` as compact JSON, keeping non-ASCII text as is and refusing NaN;
    datetimes, UUIDs, Decimals, enums, dataclasses and pydantic models as :func:`_json_form`."""
    return _ENCODER.encode(payload)


@functools.cache
def _orjson() -> ModuleType:
    try:
        import orjson
    except ImportError:
        raise ImportError("dumps=orjson_dumps needs orjson: pip install 'ssebus[orjson]'") from None
    return orjson


def orjson_dumps(payload: Any) -> bytes:
    """:func:`compact_json` through orjson, several times faster (``ssebus[orjson]``).

    The same JSON for the same payload, except that orjson writes NaN and infinities as
    ``null`` (``compact_json`` refuses them) and refuses ints beyond 64 bits.
    """
    orjson = _orjson()
    option = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_NON_STR_KEYS
    return bytes(orjson.dumps(payload, default=_json_form, option=option))


def _child(path: str, key: object) -> str:
    if isinstance(key, str) and key.isidentifier():
        return f"{path}.{key}"
    return f"{path}[{key!r}]"


def _locate(value: object, path: str, within: frozenset[int]) -> tuple[str, str] | None:
    """Where in ``value`` :func:`compact_json` fails, and why; None if it does not."""
    if value is None or isinstance(value, (str, int)):
        return None
    if isinstance(value, float):
        if math.isfinite(value):
            return None
        return path, f"{value!r} (a float) is not a JSON number"
    if id(value) in within:
        return path, f"a {type(value).__name__} that contains itself (a circular reference)"
    within = within | {id(value)}
    if isinstance(value, dict):
        for key, item in value.items():
            if not (key is None or isinstance(key, (str, int, float))):
                return path, (
                    f"a key of type {type(key).__name__} ({key!r}); JSON keys are str "
                    "(int, float, bool and None are converted)"
                )
            found = _locate(item, _child(path, key), within)
            if found is not None:
                return found
        return None
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            found = _locate(item, f"{path}[{index}]", within)
            if found is not None:
                return found
        return None
    try:
        converted = _json_form(value)
    except (TypeError, ValueError) as exc:
        return path, str(exc)
    return _locate(converted, path, within)


def _check_utf8(field: str, value: str) -> None:
    # Only lone surrogates make a str unencodable; ASCII text (the usual case) cannot hold one.
    if value.isascii():
        return
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidEventError(
            field,
            value,
            f"lone surrogate {value[exc.start]!r} at index {exc.start} cannot be encoded as UTF-8",
        ) from None


def _check_line(field: str, value: object) -> None:
    if not isinstance(value, str):
        raise InvalidEventError(field, value, f"must be str, not {type(value).__name__}")
    if "\n" in value or "\r" in value:
        raise InvalidEventError(field, value, "must not contain a line break (CR or LF)")
    _check_utf8(field, value)


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    """One Server-Sent Event.

    ``data`` may hold any text: it is split into one ``data:`` line per line, and since the
    wire format has only one line separator, CR and CRLF inside it arrive as LF. ``event`` and
    ``id`` are single lines (a line break is refused, never stripped); an empty ``id`` resets
    the client's last event id. ``retry`` is the reconnection delay in milliseconds.
    ``comment`` lines are ignored by clients. Names ``error``, ``open`` and ``message``
    collide with ``EventSource``'s own handlers (``message`` is the default type); this
    wire-level value allows them, an ``EventMap`` route refuses ``error`` and ``open``.

    A frame with ``event`` but no ``data`` is refused: browsers never dispatch it. A frame
    with only ``id``, ``retry`` or ``comment`` is allowed: it changes the client's state
    without firing a handler.
    """

    data: str | None = None
    event: str | None = None
    id: str | None = None
    retry: int | None = None
    comment: str | None = None

    def __post_init__(self) -> None:
        if self.data is not None:
            if not isinstance(self.data, str):
                raise InvalidEventError(
                    "data",
                    self.data,
                    f"must be str, not {type(self.data).__name__} "
                    "(ServerSentEvent.json() serializes objects)",
                )
            _check_utf8("data", self.data)
        if self.event is not None:
            _check_line("event", self.event)
            if not self.event:
                raise InvalidEventError(
                    "event", self.event, "must not be empty; leave it None for 'message'"
                )
            if self.data is None:
                raise InvalidEventError(
                    "data",
                    None,
                    f"event {self.event!r} has no data, and EventSource never dispatches "
                    "an event without data; pass data='' for an empty payload",
                )
        if self.id is not None:
            _check_line("id", self.id)
            if "\x00" in self.id:
                raise InvalidEventError("id", self.id, "must not contain NUL")
        if self.retry is not None and (
            isinstance(self.retry, bool) or not isinstance(self.retry, int) or self.retry < 0
        ):
            raise InvalidEventError(
                "retry", self.retry, "must be a non-negative int of milliseconds"
            )
        if self.comment is not None:
            if not isinstance(self.comment, str):
                raise InvalidEventError(
                    "comment", self.comment, f"must be str, not {type(self.comment).__name__}"
                )
            _check_utf8("comment", self.comment)
        if self.data is None and self.id is None and self.retry is None and self.comment is None:
            raise InvalidEventError(
                "data", None, "an event needs at least one of data, id, retry or comment"
            )

    @classmethod
    def json(
        cls,
        payload: Any,
        *,
        event: str | None = None,
        id: str | None = None,
        retry: int | None = None,
        dumps: JsonDumps = compact_json,
    ) -> ServerSentEvent:
        """Build an event whose data is ``payload`` as JSON (compact, via ``dumps``)."""
        try:
            text = dumps(payload)
            if isinstance(text, (bytes, bytearray, memoryview)):
                text = bytes(text).decode("utf-8")
        except (TypeError, ValueError) as exc:
            found = _locate(payload, "payload", frozenset())
            path, problem = found if found is not None else (None, str(exc))
            raise SerializationError(
                f"cannot serialize the {type(payload).__name__} payload"
                f"{f' of event {event!r}' if event else ''} as JSON: "
                f"{f'{path}: ' if path else ''}{problem}",
                path=path,
            ) from exc
        return cls(data=text, event=event, id=id, retry=retry)
