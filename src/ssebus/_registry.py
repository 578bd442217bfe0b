"""``InMemoryClientRegistry``: the live connections of this process, indexed by audience."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from ._connection import SseConnection
from ._exceptions import DuplicateConnectionError

__all__ = ["InMemoryClientRegistry"]


class _Bucket:
    """Connections under one index key, with an immutable view rebuilt only after a change."""

    __slots__ = ("_view", "members")

    def __init__(self) -> None:
        self.members: dict[str, SseConnection] = {}
        self._view: tuple[SseConnection, ...] | None = ()

    def add(self, connection: SseConnection) -> None:
        self.members[connection.id] = connection
        self._view = None

    def discard(self, connection_id: str) -> None:
        if self.members.pop(connection_id, None) is not None:
            self._view = None

    def view(self) -> tuple[SseConnection, ...]:
        if self._view is None:
            self._view = tuple(self.members.values())
        return self._view


#: The index key of connections that take every topic.
_ALL_TOPICS = None
_Index = dict[str | None, _Bucket]


class InMemoryClientRegistry:
    """Connections by id, and by tenant and topic so that a broadcast only visits the
    connections its frame is for. Every view returned is an immutable tuple, so a
    broadcast iterates it safely while connections come and go."""

    def __init__(self) -> None:
        self._connections: dict[str, SseConnection] = {}
        self._everyone = _Bucket()
        # topic (None: no topic filter) -> connections, over all tenants ...
        self._by_topic: _Index = {}
        # ... within each tenant, and for the connections without one.
        self._by_tenant: dict[str, _Index] = {}
        self._tenantless: _Index = {}

    def __len__(self) -> int:
        return len(self._connections)

    def __contains__(self, connection_id: object) -> bool:
        return connection_id in self._connections

    def add(self, connection: SseConnection) -> None:
        """Register ``connection``; an id already registered is refused."""
        if connection.id in self._connections:
            raise DuplicateConnectionError(connection.id)
        self._connections[connection.id] = connection
        self._everyone.add(connection)
        for index, topic in self._keys(connection):
            bucket = index.get(topic)
            if bucket is None:
                bucket = index[topic] = _Bucket()
            bucket.add(connection)

    def remove(self, connection_id: str) -> SseConnection | None:
        """Forget the connection with ``connection_id``; None if it was not registered."""
        connection = self._connections.pop(connection_id, None)
        if connection is None:
            return None
        self._everyone.discard(connection_id)
        for index, topic in self._keys(connection):
            bucket = index[topic]
            bucket.discard(connection_id)
            if not bucket.members:
                del index[topic]
        tenant = connection.subscription.tenant
        if tenant is not None and not self._by_tenant[tenant]:
            del self._by_tenant[tenant]
        return connection

    def tenants(self) -> bool:
        """Whether any connection has a tenant (then tenant-less frames go out per view)."""
        return bool(self._by_tenant)

    def select_views(
        self, topics: Collection[str]
    ) -> list[tuple[str | None, Sequence[SseConnection]]]:
        """The connections a tenant-less frame of ``topics`` is for, grouped by tenant."""
        groups: list[tuple[str | None, Sequence[SseConnection]]] = [
            (None, _select(self._tenantless, topics))
        ]
        groups.extend((tenant, _select(index, topics)) for tenant, index in self._by_tenant.items())
        return groups

    def get(self, connection_id: str) -> SseConnection | None:
        """The connection with ``connection_id``, if registered."""
        return self._connections.get(connection_id)

    def snapshot(self) -> Sequence[SseConnection]:
        """The registered connections at this moment."""
        return self._everyone.view()

    def select(self, tenant: str | None, topics: Collection[str]) -> Sequence[SseConnection]:
        """The connections whose subscription matches a frame of ``tenant`` and ``topics``
        (see ``Subscription.matches``), each once."""
        index = self._by_topic if tenant is None else self._by_tenant.get(tenant)
        return _select(index, topics) if index else ()

    def _keys(self, connection: SseConnection) -> list[tuple[_Index, str | None]]:
        subscription = connection.subscription
        topics = subscription.topics if subscription.topics is not None else (_ALL_TOPICS,)
        keys = [(self._by_topic, topic) for topic in topics]
        index = (
            self._tenantless
            if subscription.tenant is None
            else self._by_tenant.setdefault(subscription.tenant, {})
        )
        keys.extend((index, topic) for topic in topics)
        return keys


def _select(index: _Index, topics: Collection[str]) -> Sequence[SseConnection]:
    """The connections of ``index`` that take a frame of ``topics``, each once."""
    # A connection sits under its topics or under _ALL_TOPICS, never both: only the
    # topic buckets can overlap.
    everyone = index.get(_ALL_TOPICS)
    buckets = [bucket for topic in topics if (bucket := index.get(topic)) is not None]
    if not buckets:
        return everyone.view() if everyone is not None else ()
    if len(buckets) == 1:
        topical = buckets[0].view()
    else:
        merged: dict[str, SseConnection] = {}
        for bucket in buckets:
            merged.update(bucket.members)
        topical = tuple(merged.values())
    return topical if everyone is None else everyone.view() + topical
