"""Where the tests find Redis, whether it answers, and private ``redis-server`` processes
to stop, restart and freeze: the support the Redis test modules share. Not a test module."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import anyio
import pytest
from anyio.abc import Process

from ssebus import BusUnavailableError

if TYPE_CHECKING:  # conftest imports this module: it must import without coredis
    import coredis

    from ssebus.redis import RedisEventBus

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


def reachable(url: str = REDIS_URL) -> bool:
    """Whether something accepts connections at the host and port of ``url``."""
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 6379), 1):
            return True
    except OSError:
        return False


@asynccontextmanager
async def raw_client(url: str = REDIS_URL) -> AsyncIterator[coredis.Redis[str]]:
    import coredis

    async with coredis.Redis.from_url(url, decode_responses=True) as client:
        yield client


async def delete_bus(redis: coredis.Redis[str], name: str) -> None:
    """Delete every key of the bus ``name`` (all under its hash tag)."""
    keys = [key async for key in redis.scan_iter(match=f"{{{name}}}:*")]
    if keys:
        await redis.delete(keys)


@asynccontextmanager
async def fresh_bus_names(prefix: str) -> AsyncIterator[Callable[[], str]]:
    """Makes bus names ``<prefix><random>`` on ``REDIS_URL``; on exit every key of theirs
    is deleted."""
    made: list[str] = []

    def new() -> str:
        made.append(f"{prefix}{uuid.uuid4().hex}")
        return made[-1]

    try:
        yield new
    finally:
        with anyio.CancelScope(shield=True):
            if made and reachable(REDIS_URL):
                async with raw_client() as redis:
                    for name in made:
                        await delete_bus(redis, name)


async def eventually(condition: Callable[[], bool], within: float = 5.0) -> None:
    with anyio.fail_after(within):
        while not condition():  # noqa: ASYNC110 - polling test state
            await anyio.sleep(0.01)


async def publish_when_back(
    bus: RedisEventBus, event: object, key: str | None = None, within: float = 15
) -> None:
    """Publish, retrying with one idempotency key until Redis takes it."""
    with anyio.fail_after(within):
        while True:
            try:
                await bus.publish(event, idempotency_key=key)
            except BusUnavailableError as exc:
                key = exc.idempotency_key
                await anyio.sleep(0.05)
            else:
                return


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def need_redis_server() -> None:
    """Skip without a ``redis-server`` binary, unless ``SSEBUS_REQUIRE_REDIS=1`` (then fail)."""
    if shutil.which("redis-server") is not None:
        return
    if os.environ.get("SSEBUS_REQUIRE_REDIS") == "1":
        pytest.fail("redis-server is not on PATH and SSEBUS_REQUIRE_REDIS=1")
    pytest.skip("redis-server is not on PATH")


class RedisServer:
    """A private redis-server on a free port: stopped, started again, frozen, thawed.

    ``persistent``: append-only file on, so a stop and start loses nothing; ``config``:
    more ``--name value`` settings.
    """

    def __init__(
        self, directory: Path, *, persistent: bool, config: dict[str, str] | None = None
    ) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.directory = directory
        self.persistent = persistent
        self.config = dict(config or {})
        self.process: Process | None = None

    async def start(self) -> None:
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--dir", str(self.directory)]
        command += ["--appendonly", "yes" if self.persistent else "no"]
        for name, value in self.config.items():
            command += [f"--{name}", value]
        self.process = await anyio.open_process(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        with anyio.fail_after(10):
            while not reachable(self.url):  # noqa: ASYNC110 - polling a port
                await anyio.sleep(0.02)

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()  # SIGTERM: with AOF on, the data survives the restart
            with anyio.fail_after(10):
                await self.process.wait()
        self.process = None

    @property
    def running(self) -> bool:
        return self.process is not None

    def freeze(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)


@pytest.fixture(name="redis_server")
async def redis_server_fixture(
    tmp_path: Path,
) -> AsyncIterator[Callable[[bool], Awaitable[RedisServer]]]:
    """Start private redis-servers (persistent: AOF on); every one is stopped afterwards.

    A test module that uses it imports ``redis_server_fixture``."""
    need_redis_server()
    servers: list[RedisServer] = []

    async def start(persistent: bool) -> RedisServer:
        server = RedisServer(tmp_path / str(len(servers)), persistent=persistent)
        server.directory.mkdir()
        servers.append(server)
        await server.start()
        return server

    yield start
    with anyio.CancelScope(shield=True):
        for server in servers:
            await server.stop()
