"""Buses for the delivery tests, shared by their modules. Not a test module."""

from __future__ import annotations

from ssebus import BusGap, EventBusBase


class LossyBus(EventBusBase):
    """A bus whose transport can lose events, as pub/sub does while it is disconnected.

    ``publish`` delivers at once; ``lose`` drops events and reports the gap, as a real bus
    that notices a sequence jump or a resubscription does.
    """

    async def publish(self, event: object, *, idempotency_key: str | None = None) -> None:
        await self.deliver(event)

    async def lose(self, count: int) -> None:
        await self.report_gap(BusGap(count, "resubscribed"))
