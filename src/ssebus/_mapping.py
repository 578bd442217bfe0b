"""``EventMap``: which domain events become which SSE events, with what payload."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from ._event import _check_line
from ._exceptions import ConfigurationError, InvalidEventError

__all__ = ["EventMap", "Route"]

E = TypeVar("E")
PayloadFn = Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class Route:
    """How one domain event type is broadcast: the SSE event name and its payload."""

    event_type: type[Any]
    name: str
    payload: PayloadFn


class EventMap:
    """A table from domain event types to SSE event names and JSON payloads.

    Build it with :meth:`add`, the :meth:`on` decorator, or a dict
    ``{OrderCreated: ("order-created", lambda e: {...})}``. An event matches its own type
    first, then its base classes in method resolution order.
    """

    def __init__(self, routes: Mapping[type[Any], tuple[str, PayloadFn]] | None = None) -> None:
        self._routes: dict[type[Any], Route] = {}
        self._cache: dict[type[Any], Route | None] = {}
        for event_type, (name, payload) in (routes or {}).items():
            self.add(event_type, name, payload)

    def __len__(self) -> int:
        return len(self._routes)

    @property
    def event_types(self) -> tuple[type[Any], ...]:
        """The domain event types that have a route."""
        return tuple(self._routes)

    def add(self, event_type: type[E], name: str, payload: Callable[[E], Any]) -> None:
        """Broadcast every ``event_type`` as SSE event ``name`` with data ``payload(event)``."""
        if not isinstance(event_type, type):
            raise ConfigurationError("event_type", event_type, "must be a class")
        try:
            _check_line("event", name)
        except InvalidEventError as exc:
            raise ConfigurationError("name", name, exc.problem) from None
        if not name:
            raise ConfigurationError("name", name, "must not be empty")
        if not callable(payload):
            raise ConfigurationError("payload", payload, "must be callable")
        if event_type in self._routes:
            raise ConfigurationError("event_type", event_type, "already has a route")
        self._routes[event_type] = Route(event_type, name, payload)
        self._cache.clear()

    def on(
        self, event_type: type[E], name: str
    ) -> Callable[[Callable[[E], Any]], Callable[[E], Any]]:
        """Decorator form of :meth:`add`: the decorated function builds the payload."""

        def register(payload: Callable[[E], Any]) -> Callable[[E], Any]:
            self.add(event_type, name, payload)
            return payload

        return register

    def route(self, event: object) -> Route | None:
        """The route for ``event``, or None when its type (and every base) is unmapped."""
        cls = type(event)
        try:
            return self._cache[cls]
        except KeyError:
            pass
        found = next((self._routes[base] for base in cls.__mro__ if base in self._routes), None)
        self._cache[cls] = found
        return found
