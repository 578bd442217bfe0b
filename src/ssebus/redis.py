"""``RedisEventBus``: carry domain events between processes through Redis (needs coredis).

Two modes:

* ``"pubsub"`` - ``PUBLISH`` on a channel. At-most-once: a subscriber that is disconnected
  misses what was published meanwhile; each time the subscription comes back the gap is
  logged and counted in :attr:`RedisEventBus.gaps`.
* ``"streams"`` - ``XADD`` to a stream (trimmed with ``MAXLEN ~ maxlen``), read with
  ``XREAD BLOCK``. Every instance sees every entry once, in the stream's order, and the
  entry id becomes the SSE id (:func:`ssebus.delivery_id`), so every process's broadcaster
  emits identical ids and a client can resume on any instance. After a Redis outage the
  listener resumes from the last id it saw, so nothing still in the stream is lost.

The wire format is JSON ``{"type": name, "data": {...}}`` (in streams mode the entry
fields ``type`` and ``data``). Only registered types are ever decoded, see
:meth:`RedisEventBus.register`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, TypeVar, cast

import anyio
from typing_extensions import Self

try:
    import coredis
    from coredis.exceptions import ConnectionError as _RedisConnectionError
    from coredis.exceptions import RedisError, ResponseError
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "ssebus.redis needs coredis; install it with: pip install 'ssebus[redis]'"
    ) from exc

from ._bus import SubscriberTable, dispatch
from ._exceptions import (
    BusUnavailableError,
    ClosedError,
    ConfigurationError,
    SerializationError,
)
from ._protocols import Handler, Unsubscribe

__all__ = ["RedisEventBus"]

logger = logging.getLogger("ssebus.redis")

E = TypeVar("E")
Mode = Literal["pubsub", "streams"]

_STREAM_ID = re.compile(r"\A(\d+)-(\d+)\Z")
#: Errors that mean "Redis cannot be reached or used right now".
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    _RedisConnectionError,
    RedisError,
    OSError,
    TimeoutError,
)


def _parse_id(entry_id: str) -> tuple[int, int] | None:
    match = _STREAM_ID.match(entry_id)
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2))


def _id_key(entry_id: str) -> tuple[int, int]:
    parsed = _parse_id(entry_id)
    return parsed if parsed is not None else (0, 0)


@dataclass(frozen=True)
class _Codec:
    event_type: type[Any]
    name: str
    encode: Callable[[Any], Mapping[str, Any]]
    decode: Callable[[Mapping[str, Any]], Any]


class RedisEventBus:
    """An :class:`ssebus.IEventBus` (and, in streams mode, a
    :class:`ssebus.ReplayableEventBus`) shared by every process connected to one Redis.

    Use it as an async context manager: it owns the listener task and the Redis client,
    and leaving the context cancels the one and closes the other. ``publish`` sends the
    event to Redis; every instance's listener (this one included) receives it and calls the
    local subscribers, one event at a time in the order Redis gives them, each handler
    bounded by ``handler_timeout`` seconds. Event types must be :meth:`register`-ed.

    If Redis is down the listener retries with exponential backoff between
    ``reconnect_backoff`` (low, high) seconds, and ``publish`` raises
    :class:`ssebus.BusUnavailableError` after at most ``publish_timeout`` seconds.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        mode: Mode = "pubsub",
        channel: str = "domain-events",
        stream: str = "domain-events",
        maxlen: int = 10_000,
        handler_timeout: float | None = 30.0,
        reconnect_backoff: tuple[float, float] = (0.1, 5.0),
        publish_timeout: float = 5.0,
        startup_timeout: float = 5.0,
        block_ms: int = 5_000,
    ) -> None:
        if mode not in ("pubsub", "streams"):
            raise ConfigurationError("mode", mode, "is 'pubsub' or 'streams'")
        if not channel:
            raise ConfigurationError("channel", channel, "must be a non-empty string")
        if not stream:
            raise ConfigurationError("stream", stream, "must be a non-empty string")
        if isinstance(maxlen, bool) or not isinstance(maxlen, int) or maxlen < 1:
            raise ConfigurationError("maxlen", maxlen, "must be an int >= 1")
        if handler_timeout is not None and not handler_timeout > 0:
            raise ConfigurationError("handler_timeout", handler_timeout, "must be > 0 or None")
        low, high = reconnect_backoff
        if not 0 < low <= high:
            raise ConfigurationError(
                "reconnect_backoff", reconnect_backoff, "needs 0 < low <= high"
            )
        if not publish_timeout > 0:
            raise ConfigurationError("publish_timeout", publish_timeout, "must be > 0")
        if not startup_timeout >= 0:
            raise ConfigurationError("startup_timeout", startup_timeout, "must be >= 0")
        if isinstance(block_ms, bool) or not isinstance(block_ms, int) or block_ms < 1:
            raise ConfigurationError("block_ms", block_ms, "must be an int >= 1")
        self.url = url
        self.mode: Mode = mode
        self.channel = channel
        self.stream = stream
        self.maxlen = maxlen
        self.handler_timeout = handler_timeout
        self.reconnect_backoff = (float(low), float(high))
        self.publish_timeout = publish_timeout
        self.startup_timeout = startup_timeout
        self.block_ms = block_ms
        #: How many times the pub/sub subscription dropped and came back (events may be lost).
        self.gaps = 0
        #: How many times the listener lost Redis and had to reconnect.
        self.reconnects = 0
        self._subscribers = SubscriberTable()
        self._by_type: dict[type[Any], _Codec] = {}
        self._by_name: dict[str, _Codec] = {}
        self._last_id: str | None = None
        self._client: coredis.Redis[str] | None = None
        self._stack = AsyncExitStack()
        self._state: Literal["new", "running", "closed"] = "new"
        self._ready = anyio.Event()
        self._attempt_connected = False
        self._connected_before = False

    def __repr__(self) -> str:
        target = self.stream if self.mode == "streams" else self.channel
        return f"<RedisEventBus {self.mode} {target!r} at {self.url}>"

    # -- registry --------------------------------------------------------------------------

    def register(
        self,
        event_type: type[E],
        *,
        name: str | None = None,
        encode: Callable[[E], Mapping[str, Any]] | None = None,
        decode: Callable[[Mapping[str, Any]], E] | None = None,
    ) -> type[E]:
        """Allow ``event_type`` on the bus under ``name`` (default: the class name).

        A dataclass needs no codec (``dataclasses.asdict`` out, ``cls(**fields)`` in);
        any other type needs both ``encode`` (event -> JSON-able mapping) and ``decode``.
        Every process on the bus must register the same names. Returns ``event_type``.
        """
        if not isinstance(event_type, type):
            raise ConfigurationError("event_type", event_type, "must be a class")
        name = name if name is not None else event_type.__name__
        if not isinstance(name, str) or not name:
            raise ConfigurationError("name", name, "must be a non-empty string")
        if (encode is None) != (decode is None):
            raise ConfigurationError("encode/decode", event_type, "give both or neither")
        if encode is None or decode is None:
            if not dataclasses.is_dataclass(event_type):
                raise ConfigurationError(
                    "event_type",
                    event_type,
                    "is not a dataclass; register it with encode= and decode=",
                )
            encode = cast(Callable[[E], Mapping[str, Any]], dataclasses.asdict)

            def decode(fields: Mapping[str, Any]) -> E:
                return event_type(**fields)

        taken = self._by_name.get(name)
        if taken is not None and taken.event_type is not event_type:
            raise ConfigurationError("name", name, f"is already used by {taken.event_type!r}")
        old = self._by_type.pop(event_type, None)
        if old is not None:
            self._by_name.pop(old.name, None)
        codec = _Codec(event_type, name, encode, decode)
        self._by_type[event_type] = codec
        self._by_name[name] = codec
        return event_type

    def _encode(self, event: object) -> tuple[str, str]:
        codec = self._by_type.get(type(event))
        if codec is None:
            raise ConfigurationError(
                "event type",
                type(event).__qualname__,
                "is not registered on this RedisEventBus; call bus.register(...) first",
            )
        try:
            data = json.dumps(dict(codec.encode(event)), separators=(",", ":"), ensure_ascii=False)
        except Exception as exc:
            raise SerializationError(
                f"cannot serialize {type(event).__qualname__} for Redis: {exc}"
            ) from exc
        return codec.name, data

    def _decode(self, type_name: object, fields: object, where: str) -> object | None:
        """The event, or None (logged) when the message is not a registered, valid event."""
        if not isinstance(type_name, str):
            logger.warning("skipped a message without a type name at %s", where)
            return None
        codec = self._by_name.get(type_name)
        if codec is None:
            logger.warning("skipped a message of unknown type %r at %s", type_name, where)
            return None
        if not isinstance(fields, dict):
            logger.warning(
                "skipped a %r message whose data is not an object at %s", type_name, where
            )
            return None
        try:
            event: object = codec.decode(fields)
        except Exception as exc:
            logger.warning("skipped a malformed %r message at %s: %r", type_name, where, exc)
            return None
        return event

    def _decode_entry(self, entry_id: str, fields: Mapping[Any, Any]) -> object | None:
        where = f"stream {self.stream!r} entry {entry_id}"
        try:
            data = json.loads(fields.get("data", ""))
        except (TypeError, ValueError) as exc:
            logger.warning("skipped an entry whose data is not JSON at %s: %s", where, exc)
            return None
        return self._decode(fields.get("type"), data, where)

    # -- the bus ---------------------------------------------------------------------------

    def subscribe(self, event_type: type[E], handler: Handler[E]) -> Unsubscribe:
        """Call ``handler`` for every event of ``event_type`` (or a subclass) on the bus."""
        return self._subscribers.subscribe(event_type, handler)

    async def publish(self, event: object) -> None:
        """Send ``event`` to Redis; every instance's subscribers get it from its listener.

        Raises ``ConfigurationError`` for an unregistered type and ``BusUnavailableError``
        when Redis does not take it within ``publish_timeout`` seconds.
        """
        if self._state != "running" or self._client is None:
            raise ClosedError("the Redis event bus is not running; use 'async with bus'")
        name, data = self._encode(event)
        client = self._client
        try:
            with anyio.fail_after(self.publish_timeout):
                if self.mode == "streams":
                    await client.xadd(
                        self.stream,
                        {"type": name, "data": data},
                        trim_strategy=coredis.PureToken.MAXLEN,
                        trim_operator=coredis.PureToken.APPROXIMATELY,
                        threshold=self.maxlen,
                    )
                else:
                    body = f'{{"type":{json.dumps(name, ensure_ascii=False)},"data":{data}}}'
                    await client.publish(self.channel, body)
        except _UNAVAILABLE as exc:
            raise BusUnavailableError(
                f"cannot publish {name} to Redis at {self.url}: {_describe(exc)}"
            ) from exc

    def latest_id(self) -> str:
        """The id of the newest stream entry this bus has seen ("0-0" if none)."""
        return self._last_id or "0-0"

    def position(self, event_id: str) -> tuple[int, int] | None:
        """A stream id as ``(milliseconds, sequence)``, the order Redis gives entries in."""
        return _parse_id(event_id)

    async def replay(self, after_id: str) -> Sequence[tuple[str, object]] | None:
        """The stream entries after ``after_id``, oldest first, decoded.

        None when ``after_id`` is not a stream id, is newer than anything in the stream
        (the log was reset), or entries after it may have been trimmed away - and, logged,
        when Redis cannot be reached, so the client gets a ``reset`` rather than an error.
        Undecodable entries are logged and skipped.
        """
        if self.mode != "streams":
            return None
        after = _parse_id(after_id)
        if after is None or self._client is None:
            return None
        client = self._client
        try:
            with anyio.fail_after(self.publish_timeout):
                # Read first, then check: a trim in between can only cause a needless reset.
                entries = await client.xrange(self.stream, f"({after_id}", "+")
                info = await self._stream_info(client)
        except _UNAVAILABLE as exc:
            logger.warning("%r: cannot replay after %s: %s", self, after_id, _describe(exc))
            return None
        if info is None:  # no stream: only "nothing seen yet" is covered
            return [] if after == (0, 0) else None
        if not self._covers(after, info):
            return None
        replayed: list[tuple[str, object]] = []
        for entry in entries:
            entry_id = str(entry.identifier)
            event = self._decode_entry(entry_id, entry.field_values)
            if event is not None:
                replayed.append((entry_id, event))
        return replayed

    async def _stream_info(self, client: coredis.Redis[str]) -> Mapping[str, Any] | None:
        """``XINFO STREAM``, or None when there is no stream."""
        try:
            raw = await client.xinfo_stream(self.stream)
        except ResponseError:  # no such key
            return None
        return cast(Mapping[str, Any], raw)

    @staticmethod
    def _covers(after: tuple[int, int], info: Mapping[str, Any]) -> bool:
        """Whether the stream still holds every entry after ``after``."""
        if after > _id_key(str(info.get("last-generated-id", "0-0"))):
            return False  # newer than anything written: the stream was reset
        added, length = info.get("entries-added"), info.get("length")
        if added is not None and added == length:
            return True  # nothing was ever trimmed or deleted (Redis >= 7)
        deleted = info.get("max-deleted-entry-id")  # XDEL (Redis >= 7)
        if deleted is not None and after < _id_key(str(deleted)):
            return False
        first_entry = info.get("first-entry")  # trimming removes the oldest entries
        first = _id_key(str(first_entry[0])) if first_entry else None
        return first is None or after >= first

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._state != "new":
            raise ClosedError("a RedisEventBus can be started once")
        try:
            client: coredis.Redis[str] = coredis.Redis.from_url(self.url, decode_responses=True)
            self._client = await self._stack.enter_async_context(client)
            tasks = await self._stack.enter_async_context(anyio.create_task_group())
            self._stack.callback(tasks.cancel_scope.cancel)
            tasks.start_soon(self._listen)
            self._state = "running"
            with anyio.move_on_after(self.startup_timeout) as waiting:
                await self._ready.wait()
            if waiting.cancelled_caught:
                logger.warning(
                    "%r: Redis not reachable yet; the listener keeps retrying in the background",
                    self,
                )
        except BaseException:
            await self._stack.aclose()
            self._state = "closed"
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._state = "closed"
        await self._stack.aclose()
        self._client = None

    async def _listen(self) -> None:
        """Read from Redis forever; on any failure wait (exponential backoff) and reconnect."""
        low, high = self.reconnect_backoff
        delay = low
        while True:
            self._attempt_connected = False
            try:
                if self.mode == "streams":
                    await self._read_stream()
                else:
                    await self._read_channel()
            except Exception as exc:  # an ExceptionGroup from coredis too
                problem = _describe(exc)
            else:  # pragma: no cover - the loops end only by an error or cancellation
                problem = "the listener stopped"
            if self._attempt_connected:  # it was working: retry soon
                delay = low
                self._connected_before = True
            logger.warning(
                "%r: Redis unavailable (%s); reconnecting in %.2f s", self, problem, delay
            )
            await anyio.sleep(delay)
            delay = min(delay * 2, high)

    def _connected(self) -> None:
        self._attempt_connected = True
        if self._connected_before:
            self.reconnects += 1
        self._ready.set()

    async def _read_channel(self) -> None:
        assert self._client is not None
        async with self._client.pubsub(
            channels=[self.channel],
            ignore_subscribe_messages=True,
            retry_policy=None,
            max_idle_seconds=5,
        ) as pubsub:
            if self._connected_before:
                self.gaps += 1
                logger.warning(
                    "%r: resubscribed after a disconnection; events published on %r "
                    "meanwhile were lost (gap #%d)",
                    self,
                    self.channel,
                    self.gaps,
                )
            self._connected()
            async for message in pubsub:
                if message.get("type") != "message":
                    continue
                await self._deliver_message(message.get("data"))

    async def _deliver_message(self, body: object) -> None:
        where = f"channel {self.channel!r}"
        try:
            decoded = json.loads(body) if isinstance(body, (str, bytes)) else None
        except ValueError as exc:
            logger.warning("skipped a message that is not JSON at %s: %s", where, exc)
            return
        if not isinstance(decoded, dict):
            logger.warning("skipped a message that is not a JSON object at %s", where)
            return
        event = self._decode(decoded.get("type"), decoded.get("data"), where)
        if event is None:
            return
        handlers = self._subscribers.handlers_for(type(event))
        if handlers:
            await dispatch(handlers, event, self.handler_timeout)

    async def _read_stream(self) -> None:
        assert self._client is not None
        client = self._client
        with anyio.fail_after(self.publish_timeout):
            if self._last_id is None:
                newest = await client.xrevrange(self.stream, "+", "-", count=1)
                self._last_id = str(newest[0].identifier) if newest else "0-0"
            else:
                await client.ping()
        if self._connected_before:
            logger.warning(
                "%r: reconnected; resuming stream %r after %s", self, self.stream, self._last_id
            )
        self._connected()
        timeout = self.block_ms / 1000 + self.publish_timeout
        while True:
            with anyio.fail_after(timeout):
                batches = await client.xread(
                    {self.stream: self._last_id}, count=100, block=self.block_ms
                )
            for entries in (batches or {}).values():
                for entry in entries:
                    await self._deliver_entry(str(entry.identifier), entry.field_values)

    async def _deliver_entry(self, entry_id: str, fields: Mapping[Any, Any]) -> None:
        self._last_id = entry_id
        event = self._decode_entry(entry_id, fields)
        if event is None:
            return
        handlers = self._subscribers.handlers_for(type(event))
        if handlers:
            await dispatch(handlers, event, self.handler_timeout, event_id=entry_id)


def _describe(exc: BaseException) -> str:
    inner = getattr(exc, "exceptions", None)  # an exception group: show its first error
    if isinstance(inner, (list, tuple)) and inner and isinstance(inner[0], BaseException):
        return _describe(inner[0])
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
