"""A small multi-tenant domain for the delivery tests: one event type, tenant optional."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from clients import Client

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


def numbers(client: Client) -> list[int]:
    """The ``n`` of every ``noted`` event the client received, in order."""
    return [json.loads(e.data)["n"] for e in client.events() if e.type == "noted"]
