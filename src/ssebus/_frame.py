"""``Frame``: an event already encoded, as it is queued, kept in history and sent."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._subscription import Subscription

__all__ = ["NO_TOPICS", "Frame"]

#: The topics of a frame with none: one set for all of them (a set is gc-tracked, and a
#: frame may stay in history a long time).
NO_TOPICS: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Frame:
    """The bytes of one encoded event, with the id and name they carry and who may see them.

    ``tick`` is the frame's place in the total order (None: an ephemeral frame, delivered
    live and never replayed); ``id`` is the opaque SSE id that carries it. ``tenant`` and
    ``topics`` select the connections it goes to (see ``Subscription``); ``allow``, when
    set, is the route's predicate bound to the domain event, asked per connection - live
    and on replay.
    """

    id: str | None
    event: str | None
    data: bytes
    tenant: str | None = None
    topics: frozenset[str] = NO_TOPICS
    allow: Callable[[Subscription], bool] | None = None
    tick: int | None = None
    #: The bytes as another view sees them (see :meth:`in_view`), made on first use.
    views: dict[str, Frame] | None = field(default=None, compare=False, repr=False)

    def in_view(self, view: str | None, token: Callable[[str, int], str]) -> Frame:
        """The bytes a client of tenant ``view`` gets: a tenant-less frame carries, for each
        tenant, an id of that tenant's own (``token(view, tick)``), so no id is ever shared
        by two tenants. The data lines are encoded once; only the ``id:`` line differs."""
        if view is None or self.tenant is not None or self.tick is None or self.id is None:
            return self
        views = self.views
        if views is None:
            views = {}
            object.__setattr__(self, "views", views)
        frame = views.get(view)
        if frame is None:
            own = token(view, self.tick)
            data = self.data.replace(f"id: {self.id}\n".encode(), f"id: {own}\n".encode(), 1)
            frame = views[view] = Frame(
                own, self.event, data, None, self.topics, self.allow, self.tick
            )
        return frame
