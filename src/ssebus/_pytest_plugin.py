"""The pytest plugin ssebus installs: an ``sse_client`` fixture for the app under test.

Define a fixture named ``sse_app`` that returns your ASGI app (call your app factory
there to get a fresh broadcaster for every test); ``sse_client`` is then an entered
:class:`ssebus.testing.SseTestClient` on it. Async tests run with anyio's plugin
(``@pytest.mark.anyio``), on asyncio or trio.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from ._testclient import SseTestClient


@pytest.fixture
async def sse_client(sse_app: Any) -> AsyncIterator[SseTestClient]:
    """An :class:`~ssebus.testing.SseTestClient` on your ``sse_app`` fixture's app."""
    async with SseTestClient(sse_app) as client:
        yield client
