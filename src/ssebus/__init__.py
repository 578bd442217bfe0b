"""ssebus: broadcast domain events to every connected client as Server-Sent Events."""

from ._encoder import StandardFrameEncoder, encode_comment, encode_event
from ._event import JsonDumps, ServerSentEvent, compact_json
from ._exceptions import (
    BusUnavailableError,
    ClosedError,
    ConfigurationError,
    InvalidEventError,
    SerializationError,
    SseBusError,
)

__all__ = [
    "BusUnavailableError",
    "ClosedError",
    "ConfigurationError",
    "InvalidEventError",
    "JsonDumps",
    "SerializationError",
    "ServerSentEvent",
    "SseBusError",
    "StandardFrameEncoder",
    "compact_json",
    "encode_comment",
    "encode_event",
]
