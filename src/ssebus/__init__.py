"""ssebus: broadcast domain events to every connected client as Server-Sent Events.

The flow: domain code -> ``IEventBus.publish`` -> ``Broadcaster`` (map, id, encode once) ->
history and each connection's bounded queue -> writer -> the client.
"""

from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _distribution_version

from ._asgi import Authorize, Refusal, SseEndpoint
from ._broadcaster import Broadcaster
from ._bus import BusGap, EventBusBase, IdempotencyWindow, InMemoryEventBus, delivery_position
from ._connection import SseConnection
from ._encoder import StandardFrameEncoder, encode_comment, encode_event
from ._event import JsonDumps, ServerSentEvent, compact_json, orjson_dumps
from ._exceptions import (
    BusUnavailableError,
    ClosedError,
    ConfigurationError,
    DuplicateConnectionError,
    InvalidArgumentError,
    InvalidEventError,
    SerializationError,
    SseBusError,
    TooManyConnectionsError,
    UnregisteredEventError,
)
from ._frame import Frame
from ._history import InMemoryHistory
from ._mapping import EventMap, Route
from ._metrics import RESET_REASONS, Metric, MetricKind, MetricsHook, MetricsSnapshot
from ._protocols import (
    EventHistory,
    FrameEncoder,
    Handler,
    IEventBus,
    ISseClientRegistry,
    ReplayableEventBus,
    SseBroadcaster,
    Unsubscribe,
)
from ._registry import InMemoryClientRegistry
from ._subscription import Subscription
from ._types import Scope

try:
    __version__ = _distribution_version("ssebus")
except _PackageNotFoundError:  # a source tree on sys.path, never installed
    __version__ = "0+unknown"

__all__ = [
    "Authorize",
    "Broadcaster",
    "BusGap",
    "BusUnavailableError",
    "ClosedError",
    "ConfigurationError",
    "DuplicateConnectionError",
    "EventBusBase",
    "EventHistory",
    "EventMap",
    "Frame",
    "FrameEncoder",
    "Handler",
    "IEventBus",
    "ISseClientRegistry",
    "IdempotencyWindow",
    "InMemoryClientRegistry",
    "InMemoryEventBus",
    "InMemoryHistory",
    "InvalidArgumentError",
    "InvalidEventError",
    "JsonDumps",
    "Metric",
    "MetricKind",
    "MetricsHook",
    "MetricsSnapshot",
    "RESET_REASONS",
    "Refusal",
    "ReplayableEventBus",
    "Route",
    "Scope",
    "SerializationError",
    "ServerSentEvent",
    "SseBroadcaster",
    "SseBusError",
    "SseConnection",
    "SseEndpoint",
    "StandardFrameEncoder",
    "Subscription",
    "TooManyConnectionsError",
    "UnregisteredEventError",
    "Unsubscribe",
    "compact_json",
    "delivery_position",
    "encode_comment",
    "encode_event",
    "orjson_dumps",
]
