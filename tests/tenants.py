"""A small multi-tenant domain for the delivery tests: one event type, tenant optional."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ssebus import EventMap


@dataclass(frozen=True)
class Noted:
    """Something happened for ``tenant`` (None: for everyone), on ``topic``."""

    n: int
    tenant: str | None = None
    topic: str = "general"


def noted_events() -> EventMap:
    events = EventMap()

    def payload(event: Noted) -> dict[str, Any]:
        return {"n": event.n, "tenant": event.tenant, "topic": event.topic}

    events.add(
        Noted,
        "noted",
        payload,
        tenant=lambda e: e.tenant,
        topics=lambda e: [e.topic],
    )
    return events
