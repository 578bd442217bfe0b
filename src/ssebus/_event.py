"""``ServerSentEvent``: one event as an immutable value, checked when it is built."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._exceptions import InvalidEventError, SerializationError

__all__ = ["JsonDumps", "ServerSentEvent", "compact_json"]

#: Turns a payload into JSON text; ``orjson.dumps`` (bytes) and ``json.dumps`` (str) both fit.
JsonDumps = Callable[[Any], "str | bytes"]


def compact_json(payload: Any) -> str:
    """Serialize ``payload`` as compact JSON, keeping non-ASCII text as is and refusing NaN."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


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
    collide with ``EventSource``'s own handlers (``message`` is the default type).

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
            raise SerializationError(
                f"cannot serialize {type(payload).__name__} payload"
                f"{f' of event {event!r}' if event else ''} as JSON: {exc}"
            ) from exc
        return cls(data=text, event=event, id=id, retry=retry)
