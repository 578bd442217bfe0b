"""Simulated clients of an in-process ``Broadcaster``, shared by the delivery tests.

A client is ``async with broadcaster.connect(...) as conn: await conn.run(write)`` where
``write`` keeps what it is given (or stalls, or raises); what it received is read back
with ``ssebus.testing`` as a browser would. ``running`` is a broadcaster on an in-memory
bus with a task group for such clients. Not a test module.
"""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc

from ssebus import Broadcaster, EventMap, IEventBus, InMemoryEventBus, SseConnection, Subscription
from ssebus.testing import EventStreamParser, ParsedEvent, parse_events

GUARD = 5.0  # seconds; only a guard against hangs, never reached by a passing test

Write = Callable[[bytes], Awaitable[None]]


@dataclass(eq=False)
class Client:
    """A client that keeps every write; ``stall`` makes its writes hang (a client that
    stopped reading), ``pace`` makes each take that long."""

    writes: list[bytes] = field(default_factory=list)
    connection: SseConnection | None = None
    #: The scope its connection's task runs in: cancelling it is the client going away.
    scope: anyio.CancelScope | None = None
    finished: anyio.Event = field(default_factory=anyio.Event)
    finished_at: float | None = None  # time.time() when its stream ended
    stall: bool = False
    pace: float = 0.0  # seconds each write takes (a slow network)

    async def write(self, data: bytes) -> None:
        if self.stall:
            await anyio.sleep_forever()
        if self.pace:
            await anyio.sleep(self.pace)
        self.writes.append(data)

    @property
    def stream(self) -> bytes:
        return b"".join(list(self.writes))  # a copy: another thread may be writing

    def events(self) -> list[ParsedEvent]:
        """What an ``EventSource`` would dispatch."""
        return parse_events(self.stream)

    def frames(self) -> int:
        """How many blank-line-terminated frames arrived (cheaper than parsing); a fresh
        stream's first one is its position marker."""
        return sum(data.count(b"\n\n") for data in self.writes)

    def parser(self) -> EventStreamParser:
        """A parser that has read the whole stream (for ``retry`` and ``last_event_id``)."""
        parser = EventStreamParser()
        parser.feed(self.stream)
        return parser

    def last_event_id(self) -> str:
        """The id an ``EventSource`` would send on reconnect, after all it has read."""
        return self.parser().last_event_id

    def ids(self) -> set[str]:
        """Every id any frame carried (those of events, markers, resets alike)."""
        found = set()
        for line in self.stream.split(b"\n"):
            if line.startswith(b"id: "):
                found.add(line[4:].decode())
        return found


async def serve(
    broadcaster: Broadcaster,
    client: Client,
    last_event_id: str | None = None,
    subscription: Subscription | None = None,
    retry: int | None = None,
    *,
    write: Write | None = None,
    scope: anyio.CancelScope | None = None,
    task_status: anyio.abc.TaskStatus[SseConnection] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """One client's whole life: connect, report the connection, write (with ``write``, by
    default the client's own) until the end; inside ``scope`` when given, to cancel it
    even before it has connected."""
    try:
        with scope or anyio.CancelScope() as client.scope:
            async with broadcaster.connect(
                last_event_id=last_event_id, subscription=subscription, retry=retry
            ) as connection:
                client.connection = connection
                task_status.started(connection)
                await connection.run(write or client.write)
    finally:
        client.finished_at = time.time()
        client.finished.set()


async def join(
    tasks: anyio.abc.TaskGroup,
    broadcaster: Broadcaster,
    client: Client | None = None,
    *,
    last_event_id: str | None = None,
    subscription: Subscription | None = None,
    retry: int | None = None,
    write: Write | None = None,
) -> Client:
    """Start a client and return once it is registered."""
    client = client or Client()
    await tasks.start(
        functools.partial(
            serve, broadcaster, client, last_event_id, subscription, retry, write=write
        )
    )
    return client


async def leave(client: Client) -> None:
    """The client goes away (as a proxy cutting it would) and its stream ends."""
    assert client.connection is not None
    client.connection.abort("client disconnected")
    with anyio.fail_after(GUARD):
        await client.finished.wait()


async def wait_until(condition: Callable[[], bool | Awaitable[bool]], guard: float = GUARD) -> None:
    """Poll ``condition`` (plain data written by client tasks) until it holds."""
    with anyio.fail_after(guard):
        while not condition():  # noqa: ASYNC110
            await anyio.sleep(0.001)


@asynccontextmanager
async def broadcasting(
    bus: IEventBus, events: EventMap, **options: Any
) -> AsyncIterator[tuple[Broadcaster, anyio.abc.TaskGroup]]:
    """A broadcaster on ``bus`` (no heartbeat unless asked) and a task group for clients.

    The broadcaster is left before the task group: its shutdown writes out every queue and
    ends every client, so after the block each client's stream is complete.
    """
    options.setdefault("heartbeat", None)
    async with (
        anyio.create_task_group() as tasks,
        Broadcaster(bus, events, **options) as broadcaster,
    ):
        yield broadcaster, tasks


@asynccontextmanager
async def running(
    events: EventMap, *, guard: float | None = GUARD, **options: Any
) -> AsyncIterator[tuple[InMemoryEventBus, Broadcaster, anyio.abc.TaskGroup]]:
    """``broadcasting`` on a fresh ``InMemoryEventBus``, all within ``guard`` seconds."""
    with anyio.fail_after(guard):
        async with (
            InMemoryEventBus() as bus,
            broadcasting(bus, events, **options) as (broadcaster, tasks),
        ):
            yield bus, broadcaster, tasks
