"""``Subscription``: who a connection belongs to and which events it may receive."""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from ._exceptions import ConfigurationError, InvalidArgumentError
from ._frame import NO_TOPICS

if TYPE_CHECKING:
    from ._frame import Frame

__all__ = ["Subscription"]


@dataclass(frozen=True, slots=True)
class Subscription:
    """What an authorization hook grants one connection.

    * ``tenant``: the connection receives events of this tenant and events with no tenant,
      never another tenant's. None receives only events with no tenant.
    * ``topics``: None receives every topic (of its tenant); a collection (kept as a
      frozenset) receives only events that carry at least one of these topics - so an
      event with no topics reaches only connections without a topic filter.
    * ``attributes``: anything else a route's ``allow`` predicate needs (user id, roles).
    * ``expires_at``: Unix time at which the credentials run out; the stream is then
      closed with a final ``credentials-expired`` event so the client re-authenticates.
    * ``key``: who the connection counts against for the broadcaster's
      ``max_connections_per_key`` (a user id, say); None counts it against its tenant.
    """

    tenant: str | None = None
    topics: Collection[str] | None = None
    attributes: Mapping[str, Any] = field(default_factory=dict, hash=False)
    expires_at: float | None = None
    key: str | None = None

    def __post_init__(self) -> None:
        if self.tenant is not None and not isinstance(self.tenant, str):
            raise ConfigurationError("tenant", self.tenant, "must be a str or None")
        if self.topics is not None:
            object.__setattr__(self, "topics", topic_set("topics", self.topics))
        if not isinstance(self.attributes, Mapping):
            raise ConfigurationError("attributes", self.attributes, "must be a mapping")
        object.__setattr__(self, "attributes", MappingProxyType(dict(self.attributes)))
        if self.expires_at is not None and (
            isinstance(self.expires_at, bool)
            or not isinstance(self.expires_at, (int, float))
            or not math.isfinite(self.expires_at)
        ):
            raise ConfigurationError(
                "expires_at", self.expires_at, "must be Unix time in seconds, or None"
            )
        if self.key is not None and not isinstance(self.key, str):
            raise ConfigurationError("key", self.key, "must be a str or None")

    @property
    def limit_key(self) -> str | None:
        """What ``max_connections_per_key`` counts this connection under: ``key``, else
        the tenant (None: not limited per key)."""
        return self.key if self.key is not None else self.tenant

    def matches(self, frame: Frame) -> bool:
        """Whether ``frame``'s tenant and topics let this connection receive it.

        A route's ``allow`` predicate is not consulted here; see :meth:`admits`.
        """
        if frame.tenant is not None and frame.tenant != self.tenant:
            return False
        return self.topics is None or not frame.topics.isdisjoint(self.topics)

    def admits(self, frame: Frame) -> bool:
        """:meth:`matches` and the frame's ``allow`` predicate; raises what the predicate raises."""
        return self.matches(frame) and (frame.allow is None or frame.allow(self) is True)


#: The subscription of a connection opened without one: every event with no tenant.
EVERYTHING = Subscription()


def topic_set(
    name: str,
    topics: Iterable[str],
    error: type[ConfigurationError | InvalidArgumentError] = ConfigurationError,
) -> frozenset[str]:
    """``topics`` as a frozenset of str, or ``error`` naming ``name`` (a constructor's
    setting, or a run-time call's argument)."""
    if isinstance(topics, str):
        raise error(name, topics, "must be a collection of str, not one str")
    try:
        result = frozenset(topics) or NO_TOPICS
    except TypeError:
        raise error(name, topics, "must be a collection of str") from None
    for topic in result:
        if not isinstance(topic, str):
            raise error(name, topic, "each topic must be a str")
    return result
