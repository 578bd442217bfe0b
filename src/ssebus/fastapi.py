"""FastAPI glue: a router holding the stream's route and the broadcaster's lifespan.

app.include_router(sse_router("/events", broadcaster))
"""

from __future__ import annotations

from fastapi import APIRouter

from ._asgi import SseEndpoint
from ._broadcaster import Broadcaster
from .starlette import lifespan, sse_route

__all__ = ["sse_router"]


def sse_router(path: str, stream: Broadcaster | SseEndpoint) -> APIRouter:
    """An ``APIRouter`` whose ``path`` answers the stream (no 307) and whose lifespan, merged
    into the app's by ``include_router``, runs the broadcaster; not in the OpenAPI schema."""
    endpoint = stream if isinstance(stream, SseEndpoint) else SseEndpoint(stream)
    router = APIRouter(lifespan=lifespan(endpoint))
    route = sse_route(path, endpoint)
    route.include_in_schema = False
    router.routes.append(route)
    return router
