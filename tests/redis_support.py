"""Where the tests find Redis, and whether it answers."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


def reachable(url: str = REDIS_URL) -> bool:
    """Whether something accepts connections at the host and port of ``url``."""
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 6379), 1):
            return True
    except OSError:
        return False
