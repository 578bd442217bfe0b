"""Quart glue: serve the stream at one path in front of the app, run it while serving.

    app = Quart(__name__)
    add_sse(app, "/events", broadcaster)

Quart's own routes answer every other path; its lifespan (``while_serving``) runs the
broadcaster, or, under daphne, which sends none, the endpoint does from its first request.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import AbstractAsyncContextManager
from typing import Any

from quart import Quart

from ._asgi import SseEndpoint
from ._broadcaster import Broadcaster

__all__ = ["add_sse"]


def add_sse(app: Quart, path: str, stream: Broadcaster | SseEndpoint) -> SseEndpoint:
    """Answer ``path`` (exactly; query string and headers untouched) with the stream, ahead
    of Quart's routing, and run the broadcaster ``while_serving``; returns the endpoint."""
    endpoint = stream if isinstance(stream, SseEndpoint) else SseEndpoint(stream)
    quart_app = app.asgi_app

    async def asgi_app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == path:
            await endpoint(scope, receive, send)
        else:
            await quart_app(scope, receive, send)

    app.asgi_app = asgi_app  # type: ignore[method-assign]  # Quart's documented middleware hook

    @app.while_serving
    async def run() -> AsyncGenerator[None, None]:
        broadcaster = endpoint.broadcaster
        if not isinstance(broadcaster, AbstractAsyncContextManager):
            raise TypeError(f"{broadcaster!r} is no async context manager: run it yourself")
        async with broadcaster:
            yield

    return endpoint
