"""``InMemoryClientRegistry``: the live connections of this process."""

from __future__ import annotations

from collections.abc import Sequence

from ._connection import SseConnection
from ._exceptions import ConfigurationError

__all__ = ["InMemoryClientRegistry"]


class InMemoryClientRegistry:
    """Connections by id. ``snapshot`` is an immutable tuple, rebuilt only after a change,
    so a broadcast iterates it safely while connections come and go."""

    def __init__(self) -> None:
        self._connections: dict[str, SseConnection] = {}
        self._snapshot: tuple[SseConnection, ...] | None = ()

    def __len__(self) -> int:
        return len(self._connections)

    def __contains__(self, connection_id: object) -> bool:
        return connection_id in self._connections

    def add(self, connection: SseConnection) -> None:
        """Register ``connection``; an id already registered is refused."""
        if connection.id in self._connections:
            raise ConfigurationError("connection_id", connection.id, "is already registered")
        self._connections[connection.id] = connection
        self._snapshot = None

    def remove(self, connection_id: str) -> SseConnection | None:
        """Forget the connection with ``connection_id``; None if it was not registered."""
        connection = self._connections.pop(connection_id, None)
        if connection is not None:
            self._snapshot = None
        return connection

    def get(self, connection_id: str) -> SseConnection | None:
        """The connection with ``connection_id``, if registered."""
        return self._connections.get(connection_id)

    def snapshot(self) -> Sequence[SseConnection]:
        """The registered connections at this moment."""
        if self._snapshot is None:
            self._snapshot = tuple(self._connections.values())
        return self._snapshot
