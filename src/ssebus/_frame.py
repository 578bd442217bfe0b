"""``Frame``: an event already encoded, as it is queued, kept in history and sent."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Frame"]


@dataclass(frozen=True, slots=True)
class Frame:
    """The bytes of one encoded event, with the id and name they carry."""

    id: str | None
    event: str | None
    data: bytes
