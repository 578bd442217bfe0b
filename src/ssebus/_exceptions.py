"""The exceptions ssebus raises, each shown by its public path (``ssebus.ClosedError``).

SseBusError
 ├── InvalidEventError          a ServerSentEvent field cannot be put on the wire
 ├── SerializationError         a payload cannot be turned into event data
 ├── ConfigurationError         a setting (constructor argument, route, registration) is wrong
 ├── InvalidArgumentError       an argument of a run-time call (publish, replay) is wrong
 ├── DuplicateConnectionError   a connection id is already registered
 ├── UnregisteredEventError     the bus has no codec for the event's type (Redis publish)
 ├── ClosedError                the broadcaster or bus is not running
 ├── TooManyConnectionsError    a connection was refused: a connection limit is reached
 └── BusUnavailableError        the bus backend (e.g. Redis) cannot take the event now

The first six are also ``ValueError``s, ``ClosedError`` and ``TooManyConnectionsError``
``RuntimeError``s, ``BusUnavailableError`` a ``ConnectionError``.
"""

from __future__ import annotations

__all__ = [
    "SseBusError",
    "InvalidEventError",
    "SerializationError",
    "ConfigurationError",
    "InvalidArgumentError",
    "DuplicateConnectionError",
    "UnregisteredEventError",
    "ClosedError",
    "TooManyConnectionsError",
    "BusUnavailableError",
]


class SseBusError(Exception):
    """Base class of every error ssebus raises on purpose."""


class InvalidEventError(SseBusError, ValueError):
    """A field of an event cannot be encoded as Server-Sent Events.

    ``field`` names the field, ``value`` is what was given and the message says why.
    """

    def __init__(self, field: str, value: object, problem: str) -> None:
        self.field = field
        self.value = value
        self.problem = problem
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        super().__init__(f"invalid {field!s} {shown}: {problem}")


class SerializationError(SseBusError, ValueError):
    """A payload could not be serialized to the event's data.

    ``path`` is where in the payload it failed (``payload.lines[1].blob``), when known.
    """

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class ConfigurationError(SseBusError, ValueError):
    """A setting is outside what ssebus can work with: a constructor argument, a route, a
    registered type or handler. ``setting`` names it; raised while setting up, not later."""

    def __init__(self, setting: str, value: object, problem: str) -> None:
        self.setting = setting
        self.value = value
        super().__init__(f"invalid {setting}={value!r}: {problem}")


class InvalidArgumentError(SseBusError, ValueError):
    """An argument of a run-time call (``publish``, ``replay``) is out of range; ``argument``
    names it and nothing was done."""

    def __init__(self, argument: str, value: object, problem: str) -> None:
        self.argument = argument
        self.value = value
        super().__init__(f"invalid {argument}={value!r}: {problem}")


class DuplicateConnectionError(SseBusError, ValueError):
    """A connection with ``connection_id`` is already registered; the new one was not."""

    def __init__(self, connection_id: str) -> None:
        self.connection_id = connection_id
        super().__init__(f"connection id {connection_id!r} is already registered")


class UnregisteredEventError(SseBusError, ValueError):
    """``event_type`` is not registered on the bus, which cannot encode it; not published."""

    def __init__(self, event_type: type[object], bus: str = "this bus") -> None:
        self.event_type = event_type
        super().__init__(
            f"event type {event_type.__qualname__} is not registered on {bus}; "
            "call bus.register(...) first"
        )


class ClosedError(SseBusError, RuntimeError):
    """The component was used before it started or after it was closed."""


class TooManyConnectionsError(SseBusError, RuntimeError):
    """A new connection was refused because ``setting`` (``max_connections`` or
    ``max_connections_per_key``, for ``key``) is at its ``limit``; streams already open
    are untouched. ``retry_after``: the seconds (jittered) the client should wait."""

    def __init__(self, setting: str, limit: int, *, key: str | None, retry_after: int) -> None:
        self.setting = setting
        self.limit = limit
        self.key = key
        self.retry_after = retry_after
        of = "" if key is None else f" for key {key!r}"
        super().__init__(f"connection refused{of}: {setting}={limit:,} reached")


class BusUnavailableError(SseBusError, ConnectionError):
    """The event bus backend did not answer in time; the event may or may not be published.

    ``idempotency_key`` (when the bus deduplicates) is the key that publish used: a retry
    with it, within the bus's dedupe window, publishes the event at most once.
    """

    def __init__(self, message: str, *, idempotency_key: str | None = None) -> None:
        super().__init__(message)
        self.idempotency_key = idempotency_key


for _name in __all__:  # tracebacks show ssebus.ClosedError, where users import it from
    globals()[_name].__module__ = "ssebus"
del _name
