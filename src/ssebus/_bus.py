"""``InMemoryEventBus``: the default event bus, for one process."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar, TypeVar

import anyio
from typing_extensions import Self

from ._exceptions import ClosedError, ConfigurationError
from ._protocols import Handler, Unsubscribe

__all__ = [
    "BusGap",
    "EventBusBase",
    "IdempotencyWindow",
    "InMemoryEventBus",
    "SubscriberTable",
    "delivery_position",
]

logger = logging.getLogger("ssebus")

_delivery_position: ContextVar[int | None] = ContextVar("ssebus_delivery_position", default=None)


def delivery_position() -> int | None:
    """The log position the bus gave the event being handled (its place in the bus's
    total order, e.g. a Redis tick), or None on a bus that assigns none."""
    return _delivery_position.get()


@dataclass(frozen=True, slots=True)
class BusGap:
    """A bus noticed that events may have been lost on the way to this process.

    ``lost`` is how many events it knows were lost (0 when it cannot tell), ``reason``
    says why (``"resubscribed"``, ``"sequence-jump"``, ``"log-trimmed"``...), and
    ``position`` is the bus position the gap ends at (None if unknown).
    """

    lost: int
    reason: str
    position: int | None = None


E = TypeVar("E")


class SubscriberTable:
    """Handlers by event type; an event reaches the handlers of its type and of its bases."""

    def __init__(self) -> None:
        self._handlers: dict[type[Any], list[Handler[Any]]] = {}
        self._cache: dict[type[Any], tuple[Handler[Any], ...]] = {}

    def subscribe(self, event_type: type[E], handler: Handler[E]) -> Unsubscribe:
        """Add ``handler`` for ``event_type`` and its subclasses; return its remover."""
        if not isinstance(event_type, type):
            raise ConfigurationError("event_type", event_type, "must be a class")
        if not callable(handler):
            raise ConfigurationError("handler", handler, "must be an async callable")
        self._handlers.setdefault(event_type, []).append(handler)
        self._cache.clear()

        def unsubscribe() -> None:
            handlers = self._handlers.get(event_type, [])
            if handler in handlers:
                handlers.remove(handler)
                self._cache.clear()

        return unsubscribe

    def handlers_for(self, event_type: type[Any]) -> tuple[Handler[Any], ...]:
        """Every handler an event of ``event_type`` is delivered to."""
        try:
            return self._cache[event_type]
        except KeyError:
            pass
        found = tuple(
            handler for base in event_type.__mro__ for handler in self._handlers.get(base, ())
        )
        self._cache[event_type] = found
        return found


async def run_handler(handler: Handler[Any], event: object, limit: float | None) -> None:
    """Await one handler; log (never raise) its failure or its overrunning ``limit`` seconds."""
    try:
        with anyio.move_on_after(limit) as scope:
            await handler(event)
    except Exception as exc:
        logger.error("handler %r failed on %s: %r", handler, type(event).__name__, exc)
        return
    if scope.cancelled_caught:
        logger.error("handler %r on %s cancelled after %s s", handler, type(event).__name__, limit)


async def dispatch(
    handlers: tuple[Handler[Any], ...],
    event: object,
    limit: float | None,
    *,
    position: int | None = None,
) -> None:
    """Run ``handlers`` on ``event`` concurrently and wait for them all.

    ``position`` (a bus-assigned log position) is what :func:`delivery_position` returns
    inside the handlers.
    """
    if position is not None:
        token = _delivery_position.set(position)
        try:
            await dispatch(handlers, event, limit)
        finally:
            _delivery_position.reset(token)
        return
    if len(handlers) == 1:
        await run_handler(handlers[0], event, limit)
        return
    async with anyio.create_task_group() as tasks:
        for handler in handlers:
            tasks.start_soon(run_handler, handler, event, limit)


GapHandler = Callable[[BusGap], Awaitable[None]]


class EventBusBase:
    """The public base of a bus: handlers by type, gap handlers, and delivery to both.

    A custom bus derives from it and writes ``publish`` (send the event over its
    transport; :class:`IdempotencyWindow` honours ``idempotency_key``), calls
    :meth:`deliver` for each event it receives (with its log position, if it has one) and
    :meth:`report_gap` when it knows events were lost. ``subscribe`` and ``on_gap`` come
    with it, so the result is an ``IEventBus`` the ``Broadcaster`` takes as it is.
    """

    def __init__(self, *, handler_timeout: float | None = 30.0) -> None:
        if handler_timeout is not None and not handler_timeout > 0:
            raise ConfigurationError("handler_timeout", handler_timeout, "must be > 0 or None")
        self.handler_timeout = handler_timeout
        self._subscribers = SubscriberTable()
        self._gap_handlers: list[GapHandler] = []

    def subscribe(self, event_type: type[E], handler: Handler[E]) -> Unsubscribe:
        """Call ``handler`` for every event of ``event_type`` or a subclass."""
        return self._subscribers.subscribe(event_type, handler)

    def has_subscribers(self, event_type: type[Any]) -> bool:
        """Whether an event of ``event_type`` would reach a handler (of it or of a base)."""
        return bool(self._subscribers.handlers_for(event_type))

    def on_gap(self, handler: GapHandler) -> Unsubscribe:
        """Call ``handler`` with a :class:`BusGap` whenever events may have been lost."""
        if not callable(handler):
            raise ConfigurationError("handler", handler, "must be an async callable")
        self._gap_handlers.append(handler)

        def unsubscribe() -> None:
            if handler in self._gap_handlers:
                self._gap_handlers.remove(handler)

        return unsubscribe

    async def deliver(self, event: object, position: int | None = None) -> None:
        """Run the handlers of ``event`` (see :func:`dispatch`)."""
        handlers = self._subscribers.handlers_for(type(event))
        if handlers:
            await dispatch(handlers, event, self.handler_timeout, position=position)

    async def report_gap(self, gap: BusGap) -> None:
        """Tell every gap handler about ``gap``; a failing one is logged, never raised."""
        logger.warning("%r: %d event(s) lost (%s)", self, gap.lost, gap.reason)
        for handler in tuple(self._gap_handlers):
            await run_handler(handler, gap, self.handler_timeout)


class IdempotencyWindow:
    """Idempotency keys seen in the last ``seconds`` (at most ``max_keys``), so a retried
    publish is delivered once: ``publish`` sends only when ``first_time(key)``."""

    def __init__(self, seconds: float, max_keys: int = 100_000) -> None:
        if not seconds > 0:
            raise ConfigurationError("dedupe_window", seconds, "must be > 0 seconds")
        self.seconds = seconds
        self.max_keys = max_keys
        self._seen: OrderedDict[str, float] = OrderedDict()

    def first_time(self, key: str) -> bool:
        """Record ``key``; False when it was already seen within the window."""
        now = time.monotonic()
        seen = self._seen
        while seen:
            oldest, at = next(iter(seen.items()))
            if now - at < self.seconds and len(seen) < self.max_keys:
                break
            del seen[oldest]
        if key in seen:
            return False
        seen[key] = now
        return True


class InMemoryEventBus(EventBusBase):
    """Delivers each published event to its subscribers in this process.

    The handlers of one event run concurrently and ``publish`` returns once they all have
    finished; each gets at most ``handler_timeout`` seconds (None: no limit). A handler that
    raises or overruns is logged with the event type; the others and the publisher carry on.
    Publishing an event nobody subscribed to does nothing but log it: a warning the first
    time for each event type (usually the broadcaster is not running yet), then at debug
    level. A publish given an ``idempotency_key`` already seen in the last
    ``dedupe_window`` seconds does nothing.
    """

    #: An event published here reaches this process only (several workers need Redis).
    crosses_processes: ClassVar[bool] = False

    def __init__(
        self, *, handler_timeout: float | None = 30.0, dedupe_window: float = 300.0
    ) -> None:
        super().__init__(handler_timeout=handler_timeout)
        self._dedupe = IdempotencyWindow(dedupe_window)
        self._closed = False
        #: Event types published while nobody subscribed to them, each warned about once.
        self._unheard: set[type[Any]] = set()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closed = True

    async def publish(self, event: object, *, idempotency_key: str | None = None) -> None:
        """Deliver ``event`` to its handlers and wait for them."""
        if self._closed:
            raise ClosedError("the event bus is closed")
        if idempotency_key is not None and not self._dedupe.first_time(idempotency_key):
            logger.debug("publish with idempotency key %r already done; skipped", idempotency_key)
            return
        if not self.has_subscribers(type(event)):
            self._unheard_of(type(event))
            return
        await self.deliver(event)

    def _unheard_of(self, event_type: type[Any]) -> None:
        level = logging.DEBUG if event_type in self._unheard else logging.WARNING
        self._unheard.add(event_type)
        logger.log(
            level,
            "nobody subscribes to %s: is the Broadcaster running? The event was dropped",
            event_type.__name__,
        )
