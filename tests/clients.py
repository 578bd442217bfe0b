"""Simulated clients of an in-process ``Broadcaster``, shared by the delivery tests.

A client is ``async with broadcaster.connect(...) as conn: await conn.run(write)`` where
``write`` keeps what it is given (or stalls, or raises); what it received is read back
with ``ssebus.testing`` as a browser would. Not a test module.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import anyio
import anyio.abc

from ssebus import Broadcaster, SseConnection, Subscription
from ssebus.testing import EventStreamParser, ParsedEvent, parse_events

GUARD = 5.0  # seconds; only a guard against hangs, never reached by a passing test


@dataclass(eq=False)
class Client:
    """A client that keeps every write; ``stall`` makes its writes hang (a client that
    stopped reading), ``pace`` makes each take that long."""

    writes: list[bytes] = field(default_factory=list)
    connection: SseConnection | None = None
    finished: anyio.Event = field(default_factory=anyio.Event)
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
        return b"".join(self.writes)

    def events(self) -> list[ParsedEvent]:
        """What an ``EventSource`` would dispatch."""
        return parse_events(self.stream)

    def last_event_id(self) -> str:
        """The id an ``EventSource`` would send on reconnect, after all it has read."""
        parser = EventStreamParser()
        parser.feed(self.stream)
        return parser.last_event_id

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
    task_status: anyio.abc.TaskStatus[SseConnection] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """One client's whole life: connect, report the connection, write until the end."""
    try:
        async with broadcaster.connect(
            last_event_id=last_event_id, subscription=subscription, retry=retry
        ) as connection:
            client.connection = connection
            task_status.started(connection)
            await connection.run(client.write)
    finally:
        client.finished.set()


async def join(
    tasks: anyio.abc.TaskGroup,
    broadcaster: Broadcaster,
    client: Client | None = None,
    *,
    last_event_id: str | None = None,
    subscription: Subscription | None = None,
    retry: int | None = None,
) -> Client:
    """Start a client and return once it is registered."""
    client = client or Client()
    await tasks.start(
        functools.partial(serve, broadcaster, client, last_event_id, subscription, retry)
    )
    return client


async def leave(client: Client) -> None:
    """The client goes away (as a proxy cutting it would) and its stream ends."""
    assert client.connection is not None
    client.connection.abort("client disconnected")
    with anyio.fail_after(GUARD):
        await client.finished.wait()


async def wait_until(condition: Callable[[], bool | Awaitable[bool]]) -> None:
    """Poll ``condition`` (plain data written by client tasks) until it holds."""
    with anyio.fail_after(GUARD):
        while not condition():  # noqa: ASYNC110
            await anyio.sleep(0.001)
