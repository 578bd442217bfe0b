"""Connections whose streams run on another event loop, in another thread, than the code
that publishes and shuts down (granian's thread workers, a publisher in a worker thread)."""

from __future__ import annotations

import asyncio
import threading
import time

import anyio
import pytest

from ssebus import Broadcaster, EventMap, InMemoryEventBus, ServerSentEvent

pytestmark = pytest.mark.anyio


class StreamOnAnotherLoop:
    """One connection of ``broadcaster`` whose writer runs on a new asyncio loop in a thread."""

    def __init__(self, broadcaster: Broadcaster) -> None:
        self.broadcaster = broadcaster
        self.received = b""
        self.changed = threading.Condition()
        self.ended = threading.Event()
        self.thread = threading.Thread(target=asyncio.run, args=(self._stream(),))

    async def _stream(self) -> None:
        async def write(data: bytes) -> None:
            with self.changed:
                self.received += data
                self.changed.notify_all()

        try:
            async with self.broadcaster.connect() as connection:
                await connection.run(write)
        finally:
            self.ended.set()

    def wait_for(self, text: bytes, timeout: float = 5.0) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: text in self.received, timeout)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_stream_on_another_event_loop_gets_each_frame_and_its_goodbye() -> None:
    # No heartbeat and no watchdog: nothing else wakes either loop.
    broadcaster = Broadcaster(InMemoryEventBus(), EventMap(), heartbeat=None, write_timeout=None)
    async with broadcaster:
        streams = [StreamOnAnotherLoop(broadcaster) for _ in range(3)]
        for stream in streams:
            stream.thread.start()
        for stream in streams:  # its position handed over: registered
            assert await anyio.to_thread.run_sync(stream.wait_for, b"id: ")
        for n in range(3):
            broadcaster.broadcast(ServerSentEvent(data=f"frame {n}"))
            for stream in streams:
                arrived = await anyio.to_thread.run_sync(stream.wait_for, f"frame {n}".encode())
                assert arrived, stream.received
        asked = time.monotonic()
        await broadcaster.aclose()
        took = time.monotonic() - asked
    for stream in streams:
        await anyio.to_thread.run_sync(stream.thread.join, 5.0)
        assert stream.ended.is_set()
        assert b": server shutting down\nretry: " in stream.received, stream.received
    # The streams ended by themselves, so the broadcaster had not to cut them at its timeout.
    assert took < broadcaster.shutdown_timeout, took
