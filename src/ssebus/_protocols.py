"""The contracts between ssebus's parts, as ``typing.Protocol``s.

Any object with the right methods fits; the defaults are ``InMemoryEventBus``,
``InMemoryClientRegistry``, ``Broadcaster``, ``StandardFrameEncoder`` and
``InMemoryHistory``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

if TYPE_CHECKING:
    from ._bus import BusGap
    from ._connection import SseConnection
    from ._event import ServerSentEvent
    from ._frame import Frame
    from ._subscription import Subscription
    from ._types import Receive

__all__ = [
    "EventHistory",
    "FrameEncoder",
    "Handler",
    "IEventBus",
    "ISseClientRegistry",
    "ReplayableEventBus",
    "SseBroadcaster",
    "Unsubscribe",
]

E = TypeVar("E")
E_contra = TypeVar("E_contra", contravariant=True)

#: An async callable that receives one published event.
Handler = Callable[[E], Awaitable[None]]
#: Returned by ``subscribe``; call it to stop receiving events.
Unsubscribe = Callable[[], None]


@runtime_checkable
class IEventBus(Protocol):
    """Carries domain events from publishers to subscribers."""

    async def publish(self, event: object, *, idempotency_key: str | None = None) -> None:
        """Deliver ``event`` to every handler subscribed to its type or a base of it.

        A publish repeated with the same ``idempotency_key`` within the bus's dedupe
        window is delivered once, so a caller may retry one that raised.
        """

    def subscribe(self, event_type: type[E], handler: Handler[E]) -> Unsubscribe:
        """Call ``handler`` for every published instance of ``event_type``."""


@runtime_checkable
class ReplayableEventBus(IEventBus, Protocol):
    """A bus that puts every event in one total order shared by all processes (Redis).

    Each event gets a *position*, an int that grows with the order; while a handler runs,
    ``ssebus.delivery_position()`` returns it. The broadcaster turns positions into opaque
    SSE ids (``position_secret`` keys them the same on every instance), keeps its own
    history by position, and asks ``replay`` for what its history no longer holds.
    Events are retained per *partition* (the tenant of an event, None for none), so one
    tenant's burst never trims another's history.
    """

    def partition_by(self, key: Callable[[object], str | None]) -> None:
        """Retain each event this process publishes under ``key(event)`` (its tenant)."""

    def latest_position(self) -> int:
        """The position of the newest event this process has delivered (0 before any)."""

    def position_secret(self) -> bytes:
        """A secret shared by every process on this bus, once the bus is running."""

    def on_gap(self, handler: Callable[[BusGap], Awaitable[None]]) -> Unsubscribe:
        """Call ``handler`` whenever events may have been lost on the way to this process."""

    async def replay(
        self, partitions: Collection[str | None], after: int, limit: int
    ) -> Sequence[tuple[int, object]] | None:
        """Up to ``limit`` events of ``partitions`` with a position after ``after``, in
        order, as ``(position, event)``; None when the log no longer holds all of them
        (trimmed, reset, unreachable, or a bus without a log)."""


@runtime_checkable
class FrameEncoder(Protocol):
    """Turns one event into the bytes of one frame."""

    def encode(self, event: ServerSentEvent) -> bytes:
        """Encode ``event``; raise ``InvalidEventError`` rather than emit a broken frame."""


@runtime_checkable
class EventHistory(Protocol):
    """Keeps recent frames, by partition (tenant), so a reconnecting client can be sent
    what it missed."""

    def append(self, frame: Frame) -> None:
        """Remember ``frame`` (which has a tick, newer than any before) as the newest one."""

    async def since(
        self, partitions: Collection[str | None], after: int, limit: int
    ) -> Sequence[Frame] | None:
        """Up to ``limit`` frames of ``partitions`` after tick ``after``, oldest first, or
        None when some of them may no longer be kept."""


@runtime_checkable
class ISseClientRegistry(Protocol):
    """The set of live connections of this process."""

    def add(self, connection: SseConnection) -> None:
        """Register ``connection``; its id must be unique."""

    def remove(self, connection_id: str) -> SseConnection | None:
        """Forget a connection; return it, or None if it was not registered."""

    def snapshot(self) -> Sequence[SseConnection]:
        """The connections now, safe to iterate while others come and go."""

    def select(self, tenant: str | None, topics: Collection[str]) -> Sequence[SseConnection]:
        """The connections a frame of ``tenant`` and ``topics`` is for, as ``snapshot`` does.

        Exactly those whose ``subscription.matches`` the frame, each once.
        """

    def __len__(self) -> int:
        """How many connections are registered."""


@runtime_checkable
class SseBroadcaster(Protocol):
    """What the bus and the ASGI layer need from a broadcaster."""

    async def handle(self, event: object) -> None:
        """Map a domain event to a frame and queue it on every connection (a bus handler)."""

    def connect(
        self,
        *,
        last_event_id: str | None = None,
        retry: int | None = None,
        connection_id: str | None = None,
        subscription: Subscription | None = None,
        watch: Receive | None = None,
        on_stall: Callable[[SseConnection], Coroutine[Any, Any, None]] | None = None,
    ) -> AbstractAsyncContextManager[SseConnection]:
        """Register a connection, replay what it missed, and remove it on exit; abort it
        when ``watch`` (an ASGI ``receive``) reports the client's disconnect; run
        ``on_stall(connection)`` if it is cut while its client is connected but not reading."""
