"""``RedisEventBus``: carry domain events between processes through Redis (needs coredis).

Every published event gets a *position* (a "tick"): an int from one Redis counter, so the
positions are contiguous (1, 2, 3...) and every process sees the same total order. While a
handler runs, :func:`ssebus.delivery_position` returns it; the broadcaster turns it into an
opaque SSE id keyed by :meth:`RedisEventBus.position_secret`, shared by every instance.

Two modes:

* ``"streams"`` - each event is appended to a feed stream every instance reads (``XREAD
  BLOCK``) and to a retention stream for its partition (its tenant, see
  :meth:`RedisEventBus.partition_by`), each trimmed to ``maxlen`` on its own, so one
  tenant's burst never shortens another's resume window. :meth:`RedisEventBus.replay`
  pages through those streams; entries trimmed before a slow reader got them, or a log
  reset, are reported through :meth:`RedisEventBus.on_gap`.
* ``"pubsub"`` - each event is ``PUBLISH``-ed with its sequence number: a subscriber that
  was disconnected misses what was published meanwhile, but it always knows how many
  events it missed and reports them through :meth:`RedisEventBus.on_gap`. No replay.

Keys (one hash tag per bus, so Redis Cluster keeps them in one slot; ``{s}`` is
``{<stream>}``, ``{c}`` is ``{<channel>}``): streams mode ``{s}:tick`` (counter),
``{s}:feed`` (every event, entry id ``<tick>-0``), ``{s}:global`` (events without a
partition), ``{s}:tenant:<tenant>``; pub/sub mode ``{c}:seq`` (counter) and the channel
itself; both ``{tag}:idem:<key>`` (idempotency keys, expire after ``dedupe_window``),
``{tag}:secret`` and ``{tag}:epoch`` (a random value set by whoever starts a log, so a
listener that reconnects to a flushed or restarted Redis knows the counter began again,
however far publishes have taken it since). Entries and messages hold JSON ``{"type":
name, "data": {...}}`` (stream fields ``type`` and ``data``; messages add ``seq``). Only
registered types are decoded, see :meth:`RedisEventBus.register`.

What a raised ``publish`` means: ``UnregisteredEventError``, ``InvalidArgumentError`` (the
idempotency key), ``SerializationError`` and ``ClosedError`` are raised before anything is
sent: the event was not published. ``BusUnavailableError`` means Redis did not confirm within
``publish_timeout``: the event may or may not have been published. Every publish carries
an idempotency key (given, or generated and put on the error as ``idempotency_key``);
retrying with ``idempotency_key=err.idempotency_key`` within ``dedupe_window`` seconds
publishes it at most once in all.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import secrets
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar, Literal, TypeVar, cast

import anyio
from typing_extensions import Self

try:
    import coredis
    from coredis.commands.script import Script
    from coredis.exceptions import ConnectionError as _RedisConnectionError
    from coredis.exceptions import RedisError
    from coredis.retry import NoRetryPolicy
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "ssebus.redis needs coredis; install it with: pip install 'ssebus[redis]'"
    ) from exc

from ._bus import BusGap, EventBusBase
from ._exceptions import (
    BusUnavailableError,
    ClosedError,
    ConfigurationError,
    InvalidArgumentError,
    SerializationError,
    UnregisteredEventError,
)
from ._pace import current as current_share

__all__ = ["RedisEventBus"]

logger = logging.getLogger("ssebus.redis")

E = TypeVar("E")
Mode = Literal["pubsub", "streams"]
PartitionKey = Callable[[object], "str | None"]

#: Errors that mean "Redis cannot be reached or used right now".
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    _RedisConnectionError,
    RedisError,
    OSError,
    TimeoutError,
)

#: streams publish. KEYS: idempotency key, tick counter, feed, partition stream, epoch.
#: ARGV: type, data, feed maxlen, partition maxlen, dedupe window (ms), a fresh epoch.
#: -> {new?, tick}. The epoch is (re)created with the first tick of a new log.
_PUBLISH_STREAMS = """
local done = redis.call('GET', KEYS[1])
if done then return {0, tonumber(done)} end
redis.call('SET', KEYS[5], ARGV[6], 'NX')
local tick = redis.call('INCR', KEYS[2])
local id = string.format('%d-0', tick)
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], id, 'type', ARGV[1], 'data', ARGV[2])
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[4], id, 'type', ARGV[1], 'data', ARGV[2])
redis.call('SET', KEYS[1], tick, 'PX', ARGV[5])
return {1, tick}
"""

#: pub/sub publish. KEYS: idempotency key, sequence counter, epoch.
#: ARGV: channel, type as JSON, data (JSON), dedupe window (ms), a fresh epoch. -> {new?, seq}
_PUBLISH_PUBSUB = """
local done = redis.call('GET', KEYS[1])
if done then return {0, tonumber(done)} end
redis.call('SET', KEYS[3], ARGV[5], 'NX')
local seq = redis.call('INCR', KEYS[2])
local body = '{"type":' .. ARGV[2] .. ',"data":' .. ARGV[3] .. string.format(',"seq":%d}', seq)
redis.call('PUBLISH', ARGV[1], body)
redis.call('SET', KEYS[1], seq, 'PX', ARGV[4])
return {1, seq}
"""

#: A listener's (re)connection. KEYS: epoch, secret, counter. ARGV: a fresh epoch, the
#: secret to share (ours, or a fresh one). -> {epoch, secret, counter}: whoever creates
#: a key first (after a log reset too) decides its value.
_SYNC = """
redis.call('SET', KEYS[1], ARGV[1], 'NX')
redis.call('SET', KEYS[2], ARGV[2], 'NX')
return {redis.call('GET', KEYS[1]), redis.call('GET', KEYS[2]), redis.call('GET', KEYS[3]) or '0'}
"""

#: One replay page. KEYS: tick counter, partition streams. ARGV: after, limit.
#: -> {1, tick, type, data, tick, type, data...} (at most limit entries, merged by tick),
#: {-1} when after is past the counter (from the future, or the log was reset), {-2} when
#: a partition was trimmed past after. A missing partition stream never held anything.
_REPLAY = """
local after, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
if after > tonumber(redis.call('GET', KEYS[1]) or '0') then return {-1} end
local function tick(id) return tonumber(string.match(id, '^%d+')) end
local pages, heads, at = {}, {}, {}
for i = 2, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    local info, f = redis.call('XINFO', 'STREAM', KEYS[i]), {}
    for j = 1, #info, 2 do f[info[j]] = info[j + 1] end
    local added = f['entries-added']
    if not added or added > f['length'] then
      local first = f['first-entry']
      local floor = first and tick(first[1]) - 1 or tick(f['last-generated-id'])
      if after < floor then return {-2} end
    end
    local deleted = f['max-deleted-entry-id']
    if deleted and after < tick(deleted) then return {-2} end
    local start = string.format('%d-0', after + 1)
    local page = redis.call('XRANGE', KEYS[i], start, '+', 'COUNT', limit)
    if #page > 0 then
      pages[#pages + 1], heads[#heads + 1], at[#at + 1] = page, tick(page[1][1]), 1
    end
  end
end
local out, n = {1}, 0
while n < limit do
  local best = nil
  for k = 1, #pages do
    if heads[k] and (not best or heads[k] < heads[best]) then best = k end
  end
  if not best then break end
  local fields, kind, data = pages[best][at[best]][2], false, false
  for j = 1, #fields, 2 do
    if fields[j] == 'type' then kind = fields[j + 1] end
    if fields[j] == 'data' then data = fields[j + 1] end
  end
  out[#out + 1], out[#out + 2], out[#out + 3] = heads[best], kind, data
  n = n + 1
  at[best] = at[best] + 1
  local following = pages[best][at[best]]
  heads[best] = following and tick(following[1]) or nil
end
return out
"""


@dataclass(frozen=True)
class _Codec:
    event_type: type[Any]
    name: str
    encode: Callable[[Any], Mapping[str, Any]]
    decode: Callable[[Mapping[str, Any]], Any]


@dataclass(frozen=True)
class _Keys:
    """The Redis keys of one bus, all under one hash tag."""

    tag: str

    @property
    def counter(self) -> str:
        return f"{self.tag}:tick"

    @property
    def seq(self) -> str:
        return f"{self.tag}:seq"

    @property
    def feed(self) -> str:
        return f"{self.tag}:feed"

    @property
    def secret(self) -> str:
        return f"{self.tag}:secret"

    @property
    def epoch(self) -> str:
        return f"{self.tag}:epoch"

    def idempotency(self, key: str) -> str:
        return f"{self.tag}:idem:{key}"

    def partition(self, tenant: str | None) -> str:
        return f"{self.tag}:global" if tenant is None else f"{self.tag}:tenant:{tenant}"


def _tick(entry_id: object) -> int:
    """The tick of a ``<tick>-0`` stream id (0 for anything else)."""
    head, _, _ = str(entry_id).partition("-")
    return int(head) if head.isdigit() else 0


class RedisEventBus(EventBusBase):
    """An :class:`ssebus.ReplayableEventBus` shared by every process connected to one Redis.

    Use it as an async context manager: it owns the listener task and the Redis client.
    ``publish`` runs one Lua script (deduplicate, number, append or publish); every
    instance's listener (this one included) receives the event and calls the local
    subscribers, one event at a time in tick order, each handler bounded by
    ``handler_timeout`` seconds. Event types must be :meth:`register`-ed.

    If Redis is down the listener retries with exponential backoff between
    ``reconnect_backoff`` (low, high) seconds and reports what it missed through
    :meth:`on_gap`; ``publish`` raises :class:`ssebus.BusUnavailableError` after at most
    ``publish_timeout`` seconds. ``maxlen`` bounds each partition's retention stream and
    ``feed_maxlen`` (default ``maxlen``) the feed every instance reads.
    """

    #: An event published here reaches every process on the same Redis.
    crosses_processes: ClassVar[bool] = True

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        mode: Mode = "pubsub",
        channel: str = "domain-events",
        stream: str = "domain-events",
        maxlen: int = 10_000,
        feed_maxlen: int | None = None,
        partition: PartitionKey | None = None,
        dedupe_window: float = 300.0,
        handler_timeout: float | None = 30.0,
        reconnect_backoff: tuple[float, float] = (0.1, 5.0),
        publish_timeout: float = 5.0,
        startup_timeout: float = 5.0,
        block_ms: int = 5_000,
    ) -> None:
        super().__init__(handler_timeout=handler_timeout)
        if mode not in ("pubsub", "streams"):
            raise ConfigurationError("mode", mode, "is 'pubsub' or 'streams'")
        for setting, name in (("channel", channel), ("stream", stream)):
            if not isinstance(name, str) or not name or "{" in name or "}" in name:
                raise ConfigurationError(setting, name, "must be a non-empty string without { }")
        feed_maxlen = maxlen if feed_maxlen is None else feed_maxlen
        for setting, value in (("maxlen", maxlen), ("feed_maxlen", feed_maxlen)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(setting, value, "must be an int >= 1")
        if not dedupe_window > 0:
            raise ConfigurationError("dedupe_window", dedupe_window, "must be > 0 seconds")
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
        self.feed_maxlen = feed_maxlen
        self.dedupe_window = float(dedupe_window)
        self.reconnect_backoff = (float(low), float(high))
        self.publish_timeout = publish_timeout
        self.startup_timeout = startup_timeout
        self.block_ms = block_ms
        #: How many gaps (events possibly lost on the way to this process) were reported.
        self.gaps = 0
        #: How many times the listener lost Redis and had to reconnect.
        self.reconnects = 0
        self._keys = _Keys("{" + (stream if mode == "streams" else channel) + "}")
        self._partition: PartitionKey | None = None
        self._partition_warned = False
        if partition is not None:
            self.partition_by(partition)
        self._by_type: dict[type[Any], _Codec] = {}
        self._by_name: dict[str, _Codec] = {}
        self._position = 0
        self._baseline_taken = False
        self._secret: bytes | None = None
        self._epoch: str | None = None
        self._client: coredis.Redis[str] | None = None
        self._reader: coredis.Redis[str] | None = None  # the listener's: no silent retries
        self._publish_script: Script[str] | None = None
        self._replay_script: Script[str] | None = None
        self._sync_script: Script[str] | None = None
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
            raise UnregisteredEventError(type(event), "this RedisEventBus")
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

    # -- the bus ---------------------------------------------------------------------------

    def partition_by(self, key: PartitionKey) -> None:
        """Retain each event this process publishes under ``key(event)`` (its tenant).

        A key that raises or returns neither a str nor None puts the event in the
        tenant-less partition (logged once).
        """
        if not callable(key):
            raise ConfigurationError("partition", key, "must be a callable")
        self._partition = key

    def latest_position(self) -> int:
        """The tick this process's listener has reached: the newest event it delivered, or
        the newest on the bus when it started (0 before any)."""
        return self._position

    def position_secret(self) -> bytes:
        """The key of the SSE ids, the same on every instance of this bus (raises before it
        has one). It is the shared secret bound to the log's epoch: after a log reset the
        ticks start again, so the ids of the old log must mean nothing in the new one."""
        if self._secret is None:
            raise ClosedError("the Redis event bus has no position secret until it connects")
        epoch = (self._epoch or "").encode()
        return hashlib.blake2b(epoch, key=self._secret[:64], digest_size=32).digest()

    async def publish(self, event: object, *, idempotency_key: str | None = None) -> None:
        """Send ``event`` to Redis (at most once per ``idempotency_key`` within
        ``dedupe_window``); every instance's subscribers get it from its listener.

        See the module docstring for what each raised error means.
        """
        if self._state != "running" or self._client is None:
            raise ClosedError("the Redis event bus is not running; use 'async with bus'")
        if idempotency_key is None:
            idempotency_key = uuid.uuid4().hex
        elif not isinstance(idempotency_key, str) or not idempotency_key:
            raise InvalidArgumentError(
                "idempotency_key", idempotency_key, "must be a non-empty str"
            )
        name, data = self._encode(event)
        keys = self._keys
        window_ms = max(1, round(self.dedupe_window * 1000))
        if self.mode == "streams":
            partition = keys.partition(self._partition_of(event))
            script_keys = [
                keys.idempotency(idempotency_key),
                keys.counter,
                keys.feed,
                partition,
                keys.epoch,
            ]
            args: list[str | int] = [name, data, self.feed_maxlen, self.maxlen, window_ms]
        else:
            script_keys = [keys.idempotency(idempotency_key), keys.seq, keys.epoch]
            args = [self.channel, json.dumps(name, ensure_ascii=False), data, window_ms]
        args.append(uuid.uuid4().hex)  # the epoch, if this publish starts a new log
        assert self._publish_script is not None
        try:
            with anyio.fail_after(self.publish_timeout):
                reply = cast(list[int], await self._publish_script(script_keys, args))
        except _UNAVAILABLE as exc:
            raise BusUnavailableError(
                f"cannot publish {name} to Redis at {self.url}: {_describe(exc)}; it may or "
                f"may not have been published: publish(..., idempotency_key="
                f"{idempotency_key!r}) within {self.dedupe_window:g} s publishes it at most once",
                idempotency_key=idempotency_key,
            ) from exc
        if reply[0] == 0:
            logger.debug("%r: idempotency key %r already published; skipped", self, idempotency_key)

    def _partition_of(self, event: object) -> str | None:
        """``key(event)``; None (logged once) when the key raises or gives a non-str."""
        key = self._partition
        if key is None:
            return None
        try:
            partition = key(event)
        except Exception as exc:
            problem = f"raised {_describe(exc)}"
        else:
            if partition is None or isinstance(partition, str):
                return partition
            problem = f"returned {type(partition).__name__}, not str or None"
        if not self._partition_warned:
            self._partition_warned = True
            logger.warning(
                "%r: partition key %r %s on %s; such events go to the tenant-less partition "
                "(logged once)",
                self,
                key,
                problem,
                type(event).__name__,
            )
        return None

    async def replay(
        self, partitions: Collection[str | None], after: int, limit: int
    ) -> Sequence[tuple[int, object]] | None:
        """Up to ``limit`` events of ``partitions`` with a tick after ``after``, by tick, as
        ``(tick, event)``: one Redis round trip per page.

        None when the log does not hold all of them: ``after`` is past the counter (from
        the future, or the log was reset), a partition was trimmed past it, the bus is in
        pub/sub mode, or Redis cannot be reached (logged). Undecodable entries are logged
        and skipped (and the page topped up, so only the last page is short).
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InvalidArgumentError("limit", limit, "must be an int >= 1")
        script, client = self._replay_script, self._client
        if self.mode != "streams" or script is None or client is None or after < 0:
            return None
        keys = [self._keys.counter, *(self._keys.partition(p) for p in dict.fromkeys(partitions))]
        replayed: list[tuple[int, object]] = []
        share = current_share()  # decoding shares the broadcaster's replay budget
        while True:
            share.release()  # nobody else's replay waits on our round trip
            wanted = limit - len(replayed)
            try:
                with anyio.fail_after(self.publish_timeout):
                    reply = cast(list[Any], await script(keys, [after, wanted]))
            except _UNAVAILABLE as exc:
                logger.warning("%r: cannot replay after tick %d: %s", self, after, _describe(exc))
                return None
            if reply[0] != 1:
                logger.debug("%r: tick %d is not covered (%d)", self, after, reply[0])
                return None
            rows = len(reply) // 3
            for row in range(rows):
                if share.due():
                    await share.turn()  # other requests, then other replays, get a turn
                tick, kind, data = reply[3 * row + 1 : 3 * row + 4]
                event = self._decode_json(kind, data, tick)
                if event is not None:
                    replayed.append((tick, event))
            if rows < wanted or len(replayed) == limit:
                return replayed
            after = reply[-3]  # some were undecodable: top the page up

    def _decode_json(self, kind: object, data: object, tick: int) -> object | None:
        where = f"stream {self.stream!r} tick {tick}"
        try:
            fields = json.loads(cast(str, data))
        except (TypeError, ValueError) as exc:
            logger.warning("skipped an entry whose data is not JSON at %s: %s", where, exc)
            return None
        return self._decode(kind, fields, where)

    async def _gap(self, gap: BusGap) -> None:
        self.gaps += 1
        await self.report_gap(gap)

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._state != "new":
            raise ClosedError("a RedisEventBus can be started once")
        try:
            client: coredis.Redis[str] = coredis.Redis.from_url(self.url, decode_responses=True)
            self._client = await self._stack.enter_async_context(client)
            # A command retried on a new connection would hide an outage from the listener.
            reader: coredis.Redis[str] = coredis.Redis.from_url(
                self.url, decode_responses=True, retry_policy=NoRetryPolicy()
            )
            self._reader = await self._stack.enter_async_context(reader)
            streams = self.mode == "streams"
            self._publish_script = client.register_script(
                _PUBLISH_STREAMS if streams else _PUBLISH_PUBSUB
            )
            self._replay_script = client.register_script(_REPLAY) if streams else None
            self._sync_script = reader.register_script(_SYNC)
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
        self._client = self._reader = None

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

    async def _sync(self, counter: str) -> tuple[bool, int]:
        """Agree on the epoch and the position secret (the first instance's wins; ours is
        kept once known) and read ``counter``: (whether the log was reset, the counter)."""
        assert self._sync_script is not None
        secret = self._secret.hex() if self._secret is not None else secrets.token_hex(32)
        keys = [self._keys.epoch, self._keys.secret, counter]
        reply = cast(list[str], await self._sync_script(keys, [uuid.uuid4().hex, secret]))
        epoch, shared, count = reply
        if self._secret is None:
            try:
                self._secret = bytes.fromhex(shared)
            except ValueError:
                self._secret = shared.encode()
        reset = self._epoch is not None and epoch != self._epoch
        self._epoch = epoch
        return reset, int(count)

    def _connected(self) -> None:
        self._attempt_connected = True
        if self._connected_before:
            self.reconnects += 1
        self._ready.set()

    async def _read_channel(self) -> None:
        assert self._reader is not None
        client = self._reader
        async with client.pubsub(
            channels=[self.channel],
            ignore_subscribe_messages=True,
            retry_policy=None,
            max_idle_seconds=5,
        ) as pubsub:
            with anyio.fail_after(self.publish_timeout):  # subscribed: now read the counter
                reset, counter = await self._sync(self._keys.seq)
            await self._rebase(counter, reset)
            self._connected()
            async for message in pubsub:
                if message.get("type") == "message":
                    await self._on_message(message.get("data"))

    async def _rebase(self, counter: int, reset: bool) -> None:
        """Take ``counter`` as the last sequence number seen; report what was missed (all
        of ``counter`` when the bus was ``reset``: a new epoch, or a counter gone back)."""
        last, self._position = self._position, counter
        if not self._baseline_taken:
            self._baseline_taken = True
        elif reset or counter < last:
            await self._gap(BusGap(counter, "bus-restarted", position=counter))
        elif counter > last:
            await self._gap(BusGap(counter - last, "resubscribed", position=counter))

    async def _on_message(self, body: object) -> None:
        where = f"channel {self.channel!r}"
        try:
            decoded = json.loads(body) if isinstance(body, (str, bytes)) else None
        except ValueError as exc:
            logger.warning("skipped a message that is not JSON at %s: %s", where, exc)
            return
        seq = decoded.get("seq") if isinstance(decoded, dict) else None
        if isinstance(seq, bool) or not isinstance(seq, int) or not isinstance(decoded, dict):
            logger.warning("skipped a message that is not an ssebus event at %s", where)
            return
        last = self._position
        if seq <= last:  # published before this subscription, or counted in a gap
            return
        if seq > last + 1:
            await self._gap(BusGap(seq - last - 1, "sequence-jump", position=seq - 1))
        self._position = seq
        event = self._decode(decoded.get("type"), decoded.get("data"), where)
        if event is not None:
            await self.deliver(event, position=seq)

    async def _read_stream(self) -> None:
        assert self._reader is not None
        client = self._reader
        with anyio.fail_after(self.publish_timeout):
            reset, head = await self._sync(self._keys.counter)
        if not self._baseline_taken:
            self._baseline_taken = True
            self._position = head
        elif reset or head < self._position:  # flushed, or restarted without persistence
            self._position = 0  # read the new log from its start
            await self._gap(BusGap(0, "log-reset", position=0))
        self._connected()
        feed = self._keys.feed
        timeout = self.block_ms / 1000 + self.publish_timeout
        while True:
            with anyio.fail_after(timeout):
                batches = await client.xread(
                    {feed: f"{self._position}-0"}, count=100, block=self.block_ms
                )
            for entries in (batches or {}).values():
                for entry in entries:
                    await self._on_entry(_tick(entry.identifier), entry.field_values)

    async def _on_entry(self, tick: int, fields: Mapping[Any, Any]) -> None:
        last = self._position
        if tick <= last:
            return
        if tick > last + 1:  # trimmed before this reader got them
            await self._gap(BusGap(tick - last - 1, "log-trimmed", position=tick - 1))
        self._position = tick
        event = self._decode_json(fields.get("type"), fields.get("data"), tick)
        if event is not None:
            await self.deliver(event, position=tick)


def _describe(exc: BaseException) -> str:
    inner = getattr(exc, "exceptions", None)  # an exception group: show its first error
    if isinstance(inner, (list, tuple)) and inner and isinstance(inner[0], BaseException):
        return _describe(inner[0])
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
