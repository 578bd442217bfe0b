"""``Frame``: an event already encoded, as it is queued, kept in history and sent."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._subscription import Subscription

__all__ = ["Frame"]


@dataclass(frozen=True, slots=True)
class Frame:
    """The bytes of one encoded event, with the id and name they carry and who may see them.

    ``tenant`` and ``topics`` select the connections it goes to (see ``Subscription``);
    ``allow``, when set, is the route's predicate bound to the domain event, asked per
    connection - live and on replay.
    """

    id: str | None
    event: str | None
    data: bytes
    tenant: str | None = None
    topics: frozenset[str] = frozenset()
    allow: Callable[[Subscription], bool] | None = None
