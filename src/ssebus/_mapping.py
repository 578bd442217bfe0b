"""``EventMap``: which domain events become which SSE events, with what payload."""

from __future__ import annotations

import string
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from ._event import _check_line
from ._exceptions import ConfigurationError, InvalidEventError
from ._frame import NO_TOPICS

if TYPE_CHECKING:
    from ._subscription import Subscription

__all__ = ["EventMap", "Route"]

E = TypeVar("E")
PayloadFn = Callable[[Any], Any]
#: Event names ``EventSource`` fires itself: a listener could not tell a route's events from
#: its own. ``message`` is allowed: it is the default type, what ``onmessage`` receives.
_RESERVED_NAMES = {
    "error": "EventSource fires 'error' when the connection fails",
    "open": "EventSource fires 'open' when the connection opens",
}
#: A template over the payload (``"{tenantId}"``) or a function of the domain event.
TenantSpec = str | Callable[[E], "str | None"]
#: Templates over the payload (``["order:{orderId}"]``) or a function of the domain event.
TopicsSpec = Iterable[str] | Callable[[E], Iterable[str]]
#: Decides, per connection, whether it may receive this domain event.
Allow = Callable[[E, "Subscription"], bool]


@dataclass(frozen=True, slots=True)
class Route:
    """How one domain event type is broadcast: the SSE event name and its payload, and
    optionally the tenant and topics it belongs to and a per-connection ``allow`` check."""

    event_type: type[Any]
    name: str
    payload: PayloadFn
    tenant: str | Callable[[Any], str | None] | None = None
    topics: tuple[str, ...] | Callable[[Any], Iterable[str]] = ()
    allow: Callable[[Any, Subscription], bool] | None = None

    def audience(self, event: object, payload: object) -> tuple[str | None, frozenset[str]]:
        """The tenant and topics of ``event``, whose payload is ``payload``.

        Raises ``InvalidEventError`` naming the template or value that does not work.
        """
        tenant = self.tenant
        if isinstance(tenant, str):
            tenant = _fill("tenant", tenant, payload)
        elif tenant is not None:
            tenant = tenant(event)
            if tenant is not None and not isinstance(tenant, str):
                raise InvalidEventError("tenant", tenant, "must be a str or None")
        if not self.topics:
            topics = NO_TOPICS
        elif isinstance(self.topics, tuple):
            topics = frozenset(_fill("topics", template, payload) for template in self.topics)
        else:
            produced = self.topics(event)
            if isinstance(produced, str):
                raise InvalidEventError("topics", produced, "must be a collection of str")
            topics = frozenset(produced) or NO_TOPICS
            for topic in topics:
                if not isinstance(topic, str):
                    raise InvalidEventError("topics", topic, "each topic must be a str")
        return tenant, topics


def _fill(field: str, template: str, payload: object) -> str:
    if not isinstance(payload, Mapping):
        raise InvalidEventError(field, template, "a template needs a mapping payload")
    try:
        return template.format_map(payload)
    except KeyError as exc:
        raise InvalidEventError(
            field, template, f"names {exc.args[0]!r}, which the payload does not have"
        ) from None
    except (ValueError, IndexError, AttributeError) as exc:
        raise InvalidEventError(field, template, f"is not a usable template: {exc}") from None


class EventMap:
    """A table from domain event types to SSE event names and JSON payloads.

    Build it with :meth:`add`, the :meth:`on` decorator, or a dict
    ``{OrderCreated: ("order-created", lambda e: {...})}``. An event matches its own type
    first, then its base classes in method resolution order.

    A route may say who receives its events: ``tenant="{tenantId}"`` and
    ``topics=["order:{orderId}"]`` are filled in from the payload (or are functions of the
    domain event), and ``allow(event, subscription)`` vets each connection for rules the
    tenant and topics cannot express. See ``Subscription`` for how they match.
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

    def add(
        self,
        event_type: type[E],
        name: str,
        payload: Callable[[E], Any],
        *,
        tenant: TenantSpec[E] | None = None,
        topics: TopicsSpec[E] = (),
        allow: Allow[E] | None = None,
    ) -> None:
        """Broadcast every ``event_type`` as SSE event ``name`` with data ``payload(event)``,
        to the connections its ``tenant``, ``topics`` and ``allow`` select."""
        if not isinstance(event_type, type):
            raise ConfigurationError("event_type", event_type, "must be a class")
        try:
            _check_line("event", name)
        except InvalidEventError as exc:
            raise ConfigurationError("name", name, exc.problem) from None
        if not name:
            raise ConfigurationError("name", name, "must not be empty")
        if name in _RESERVED_NAMES:
            raise ConfigurationError(
                "name",
                name,
                f"{_RESERVED_NAMES[name]}, so its listeners could not tell this event from "
                f"that; choose another name, like 'order-{name}'",
            )
        if not callable(payload):
            raise ConfigurationError("payload", payload, "must be callable")
        if event_type in self._routes:
            raise ConfigurationError("event_type", event_type, "already has a route")
        if isinstance(tenant, str):
            _check_template("tenant", tenant)
        elif tenant is not None and not callable(tenant):
            raise ConfigurationError("tenant", tenant, "must be a template str or a function")
        if allow is not None and not callable(allow):
            raise ConfigurationError("allow", allow, "must be callable")
        self._routes[event_type] = Route(
            event_type, name, payload, tenant, _topics_spec(topics), allow
        )
        self._cache.clear()

    def on(
        self,
        event_type: type[E],
        name: str,
        *,
        tenant: TenantSpec[E] | None = None,
        topics: TopicsSpec[E] = (),
        allow: Allow[E] | None = None,
    ) -> Callable[[Callable[[E], Any]], Callable[[E], Any]]:
        """Decorator form of :meth:`add`: the decorated function builds the payload."""

        def register(payload: Callable[[E], Any]) -> Callable[[E], Any]:
            self.add(event_type, name, payload, tenant=tenant, topics=topics, allow=allow)
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


def _topics_spec(
    topics: Iterable[str] | Callable[[Any], Iterable[str]],
) -> tuple[str, ...] | Callable[[Any], Iterable[str]]:
    if callable(topics):
        return topics
    if isinstance(topics, str):
        raise ConfigurationError("topics", topics, "must be a list of templates, not one str")
    try:
        templates = tuple(topics)
    except TypeError:
        raise ConfigurationError(
            "topics", topics, "must be a list of templates or a function"
        ) from None
    for template in templates:
        if not isinstance(template, str):
            raise ConfigurationError("topics", template, "each topic template must be a str")
        _check_template("topics", template)
    return templates


def _check_template(setting: str, template: str) -> None:
    """Refuse now a template no payload could fill: bad braces, or positional fields."""
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise ConfigurationError(setting, template, f"is not a valid template: {exc}") from None
    for name in fields:
        key = name.split(".", 1)[0].split("[", 1)[0]
        if not key or key.isdigit():
            raise ConfigurationError(
                setting, template, "fields must name a payload key, like {orderId}"
            )
