"""Disconnect watching: ASGI reports a client's leaving only through ``receive``."""

from __future__ import annotations

from collections.abc import Callable

from ._connection import SseConnection
from ._seam import Background
from ._types import Receive

__all__ = ["watch_disconnect"]


def watch_disconnect(
    background: Background, connection: SseConnection, receive: Receive
) -> Callable[[], object]:
    """Read ``receive`` until ``http.disconnect``, then abort ``connection``; returns the
    function that stops watching. Every open stream needs such a pending read."""

    async def read_until_disconnect() -> None:
        try:
            while (await receive())["type"] != "http.disconnect":
                pass
        except Exception as exc:  # one request's failure never reaches anyone else
            connection.abort(f"receive failed: {exc!r}")
        else:
            connection.left = True
            connection.abort("client disconnected")

    return background.start(read_until_disconnect)
