"""Django glue: an ASGI app that answers one path with the stream and the rest with Django.

    application = sse_application(get_asgi_application(), "/events", broadcaster)

It handles the ASGI lifespan itself (Django's handler refuses it): the broadcaster starts
with the server and closes at shutdown; under daphne, which sends none, at the first request.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from ._asgi import SseEndpoint
from ._broadcaster import Broadcaster
from ._types import ASGIApp, Receive, Scope, Send

__all__ = ["sse_application"]


def sse_application(
    django: Callable[[Any, Any, Any], Awaitable[None]], path: str, stream: Broadcaster | SseEndpoint
) -> ASGIApp:
    """``path`` (exactly; query string and headers untouched) to the stream, other HTTP and
    websocket requests to ``django`` (``get_asgi_application()``), lifespan to the stream."""
    endpoint = stream if isinstance(stream, SseEndpoint) else SseEndpoint(stream)

    async def application(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan" or (scope["type"] == "http" and scope["path"] == path):
            await endpoint(scope, receive, send)
        else:
            await django(scope, receive, send)

    return application
