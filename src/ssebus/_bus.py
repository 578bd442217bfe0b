"""``InMemoryEventBus``: the default event bus, for one process."""

from __future__ import annotations

import logging
from contextvars import ContextVar
from types import TracebackType
from typing import Any, TypeVar

import anyio
from typing_extensions import Self

from ._exceptions import ClosedError, ConfigurationError
from ._protocols import Handler, Unsubscribe

__all__ = ["InMemoryEventBus", "SubscriberTable", "delivery_id"]

logger = logging.getLogger("ssebus")

_delivery_id: ContextVar[str | None] = ContextVar("ssebus_delivery_id", default=None)


def delivery_id() -> str | None:
    """The id the bus gave the event being handled (a Redis stream entry id), if any."""
    return _delivery_id.get()


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
    except Exception:
        logger.exception("handler %r failed on %s", handler, type(event).__name__)
        return
    if scope.cancelled_caught:
        logger.error("handler %r on %s cancelled after %s s", handler, type(event).__name__, limit)


async def dispatch(
    handlers: tuple[Handler[Any], ...],
    event: object,
    limit: float | None,
    *,
    event_id: str | None = None,
) -> None:
    """Run ``handlers`` on ``event`` concurrently and wait for them all.

    ``event_id`` (a bus-assigned id, e.g. a Redis stream entry id) is what
    :func:`delivery_id` returns inside the handlers.
    """
    if event_id is not None:
        token = _delivery_id.set(event_id)
        try:
            await dispatch(handlers, event, limit)
        finally:
            _delivery_id.reset(token)
        return
    if len(handlers) == 1:
        await run_handler(handlers[0], event, limit)
        return
    async with anyio.create_task_group() as tasks:
        for handler in handlers:
            tasks.start_soon(run_handler, handler, event, limit)


class InMemoryEventBus:
    """Delivers each published event to its subscribers in this process.

    The handlers of one event run concurrently and ``publish`` returns once they all have
    finished; each gets at most ``handler_timeout`` seconds (None: no limit). A handler that
    raises or overruns is logged with the event type; the others and the publisher carry on.
    Publishing an event nobody subscribed to does nothing.
    """

    def __init__(self, *, handler_timeout: float | None = 30.0) -> None:
        if handler_timeout is not None and not handler_timeout > 0:
            raise ConfigurationError("handler_timeout", handler_timeout, "must be > 0 or None")
        self.handler_timeout = handler_timeout
        self._subscribers = SubscriberTable()
        self._closed = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closed = True

    def subscribe(self, event_type: type[E], handler: Handler[E]) -> Unsubscribe:
        """Call ``handler`` for every published instance of ``event_type`` or a subclass."""
        return self._subscribers.subscribe(event_type, handler)

    async def publish(self, event: object) -> None:
        """Deliver ``event`` to its handlers and wait for them."""
        if self._closed:
            raise ClosedError("the event bus is closed")
        handlers = self._subscribers.handlers_for(type(event))
        if handlers:
            await dispatch(handlers, event, self.handler_timeout)
