"""Shared fixtures: every async test runs on asyncio and on trio; Redis is required in CI."""

from __future__ import annotations

import os

import pytest
from redis_support import REDIS_URL, reachable


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Run each ``@pytest.mark.anyio`` test once per backend."""
    return str(request.param)


@pytest.fixture
def need_redis() -> None:
    """Skip without Redis, unless ``SSEBUS_REQUIRE_REDIS=1`` (then fail)."""
    if reachable(REDIS_URL):
        return
    reason = f"Redis is not reachable at {REDIS_URL} (set REDIS_URL)"
    if os.environ.get("SSEBUS_REQUIRE_REDIS") == "1":
        pytest.fail(reason + " and SSEBUS_REQUIRE_REDIS=1")
    pytest.skip(reason)
