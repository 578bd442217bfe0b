"""Litestar glue: a plugin that adds the stream's ASGI route and runs the broadcaster.

app = Litestar(route_handlers=[...], plugins=[SsePlugin("/events", broadcaster)])
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from litestar import Litestar
from litestar.config.app import AppConfig
from litestar.handlers import ASGIRouteHandler, asgi
from litestar.plugins import InitPluginProtocol
from litestar.types import Receive, Scope, Send

from ._asgi import SseEndpoint
from ._broadcaster import Broadcaster

__all__ = ["SsePlugin", "sse_handler"]


def sse_handler(path: str, stream: Broadcaster | SseEndpoint) -> ASGIRouteHandler:
    """An ``asgi`` route handler answering the stream at ``path``, scope untouched."""
    endpoint = stream if isinstance(stream, SseEndpoint) else SseEndpoint(stream)

    async def events(scope: Scope, receive: Receive, send: Send) -> None:
        await endpoint(scope, receive, send)  # type: ignore[arg-type]

    return asgi(path, copy_scope=False, name=f"ssebus:{path}")(events)


class SsePlugin(InitPluginProtocol):
    """Adds :func:`sse_handler` at ``path`` and runs the broadcaster for the app's life."""

    def __init__(self, path: str, stream: Broadcaster | SseEndpoint) -> None:
        self.endpoint = stream if isinstance(stream, SseEndpoint) else SseEndpoint(stream)
        self.path = path

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        app_config.route_handlers.append(sse_handler(self.path, self.endpoint))
        app_config.lifespan.append(self._run)
        return app_config

    @asynccontextmanager
    async def _run(self, app: Litestar) -> AsyncIterator[None]:
        broadcaster = self.endpoint.broadcaster
        if not isinstance(broadcaster, AbstractAsyncContextManager):
            raise TypeError(f"{broadcaster!r} is no async context manager: run it yourself")
        async with broadcaster:
            yield
