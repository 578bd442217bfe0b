"""The contracts between ssebus's parts, as ``typing.Protocol``s.

Any object with the right methods fits; the defaults are ``InMemoryEventBus``,
``InMemoryClientRegistry``, ``Broadcaster``, ``StandardFrameEncoder``,
``SequentialIdGenerator`` and ``InMemoryHistory``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Protocol, TypeVar, runtime_checkable

if TYPE_CHECKING:
    from ._connection import SseConnection
    from ._event import ServerSentEvent
    from ._frame import Frame
    from ._subscription import Subscription
    from ._types import Receive

__all__ = [
    "EventHistory",
    "EventIdGenerator",
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

    async def publish(self, event: object) -> None:
        """Deliver ``event`` to every handler subscribed to its type or a base of it."""

    def subscribe(self, event_type: type[E], handler: Handler[E]) -> Unsubscribe:
        """Call ``handler`` for every published instance of ``event_type``."""


@runtime_checkable
class ReplayableEventBus(IEventBus, Protocol):
    """A bus with a durable, ordered log (Redis Streams): its entry ids become the SSE ids.

    While a handler runs, ``ssebus.delivery_id()`` returns the entry id of its event.
    """

    def latest_id(self) -> str:
        """The id of the newest entry this bus has seen (a position before any entry if none)."""

    async def replay(self, after_id: str) -> Sequence[tuple[str, object]] | None:
        """Entries after ``after_id``, oldest first, or None when the log no longer has it."""

    def position(self, event_id: str) -> tuple[int, ...] | None:
        """Where ``event_id`` sits in the log, comparable with ``<``; None if not an entry id.

        Lets the broadcaster drop live entries a resuming client already has, when this
        instance's reader is still behind the id the client brings.
        """


@runtime_checkable
class FrameEncoder(Protocol):
    """Turns one event into the bytes of one frame."""

    def encode(self, event: ServerSentEvent) -> bytes:
        """Encode ``event``; raise ``InvalidEventError`` rather than emit a broken frame."""


@runtime_checkable
class EventIdGenerator(Protocol):
    """Hands out the ids of broadcast events, in increasing order; thread- and task-safe."""

    def next_id(self) -> str:
        """Return a new id, never handed out before by this generator."""


@runtime_checkable
class EventHistory(Protocol):
    """Keeps recent frames so a reconnecting client can be sent what it missed."""

    def append(self, frame: Frame) -> None:
        """Remember ``frame`` (which has an id) as the newest one."""

    async def since(self, last_event_id: str) -> Sequence[Frame] | None:
        """Frames after ``last_event_id``, oldest first, or None when it is not covered."""


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
    ) -> AbstractAsyncContextManager[SseConnection]:
        """Register a connection, replay what it missed, and remove it on exit; abort it
        when ``watch`` (an ASGI ``receive``) reports the client's disconnect."""
