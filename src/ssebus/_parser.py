"""The WHATWG "event stream interpretation", exactly: what a browser's ``EventSource``
would dispatch from a stream's bytes (re-exported by ``ssebus.testing``)."""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass

__all__ = ["EventStreamParser", "ParsedEvent", "parse_events"]

_LINE_END = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True, slots=True)
class ParsedEvent:
    """An event as ``EventSource`` dispatches it.

    ``type`` defaults to ``"message"``; ``last_event_id`` is the id in force when it fired
    (carried over from earlier events); ``retry`` is the reconnection time last set, if any.
    """

    type: str
    data: str
    last_event_id: str = ""
    retry: int | None = None


class EventStreamParser:
    """An incremental, spec-exact event stream parser: ``feed`` bytes, get dispatched events."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._started = False
        self._partial = ""
        self._skip_lf = False
        self._data: list[str] = []
        self._has_data = False
        self._event_type = ""
        self._id_buffer = ""
        #: The last event id committed at a dispatch (what a reconnect would send).
        self.last_event_id = ""
        #: The reconnection time in milliseconds, once a valid ``retry`` field was seen.
        self.retry: int | None = None

    def feed(self, chunk: bytes) -> list[ParsedEvent]:
        """Parse the next bytes of the stream; return the events they complete."""
        return self._feed_text(self._decoder.decode(chunk))

    def close(self) -> list[ParsedEvent]:
        """End the stream: an unterminated event is discarded, as the spec requires."""
        self._feed_text(self._decoder.decode(b"", final=True))
        self._partial = ""
        self._data = []
        self._has_data = False
        self._event_type = ""
        return []

    def _feed_text(self, text: str) -> list[ParsedEvent]:
        if not self._started and text:
            self._started = True
            if text.startswith("\ufeff"):
                text = text[1:]
        if self._skip_lf and text:
            self._skip_lf = False
            if text.startswith("\n"):
                text = text[1:]
        text = self._partial + text
        events: list[ParsedEvent] = []
        start = 0
        for match in _LINE_END.finditer(text):
            if match.group() == "\r" and match.end() == len(text):
                # A CR at the end of the chunk may be the first half of CRLF.
                self._skip_lf = True
            self._line(text[start : match.start()], events)
            start = match.end()
        self._partial = text[start:]
        return events

    def _line(self, line: str, events: list[ParsedEvent]) -> None:
        if not line:
            self._dispatch(events)
            return
        if line.startswith(":"):
            return
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
            self._has_data = True
        elif name == "event":
            self._event_type = value
        elif name == "id":
            if "\x00" not in value:
                self._id_buffer = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self.retry = int(value)

    def _dispatch(self, events: list[ParsedEvent]) -> None:
        self.last_event_id = self._id_buffer
        if not self._has_data:
            self._event_type = ""
            return
        events.append(
            ParsedEvent(
                type=self._event_type or "message",
                data="\n".join(self._data),
                last_event_id=self.last_event_id,
                retry=self.retry,
            )
        )
        self._data = []
        self._has_data = False
        self._event_type = ""


def parse_events(stream: bytes) -> list[ParsedEvent]:
    """Parse a whole event stream and return every event a browser would dispatch."""
    parser = EventStreamParser()
    events = parser.feed(stream)
    parser.close()
    return events
