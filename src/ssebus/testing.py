"""Helpers for testing code that emits Server-Sent Events.

:class:`SseTestClient` opens event streams on an ASGI app in process and reads events until
a count, a predicate or a timeout. :func:`parse_events` and :class:`EventStreamParser`
implement the WHATWG "event stream interpretation" exactly, so a test sees what a
browser's ``EventSource`` would dispatch.
"""

from __future__ import annotations

from ._parser import EventStreamParser, ParsedEvent, parse_events
from ._testclient import Response, SseTestClient, StreamEnded, TestStream

__all__ = [
    "EventStreamParser",
    "ParsedEvent",
    "Response",
    "SseTestClient",
    "StreamEnded",
    "TestStream",
    "parse_events",
]
