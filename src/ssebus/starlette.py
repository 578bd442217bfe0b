"""Starlette glue: a ``Route`` that serves a broadcaster, and a lifespan that runs it.

app = Starlette(routes=[sse_route("/events", broadcaster)], lifespan=lifespan(broadcaster))
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from starlette.routing import Route

from ._asgi import SseEndpoint
from ._broadcaster import Broadcaster

__all__ = ["lifespan", "sse_route"]


def sse_route(path: str, stream: Broadcaster | SseEndpoint) -> Route:
    """A route whose ``path`` itself (no redirect) answers the stream; pass an
    ``SseEndpoint(broadcaster, ...)`` for options (``retry=``, ``authorize=`` ...)."""
    return Route(path, stream if isinstance(stream, SseEndpoint) else SseEndpoint(stream))


def lifespan(
    stream: Broadcaster | SseEndpoint,
) -> Callable[[object], AbstractAsyncContextManager[None]]:
    """An app ``lifespan=`` that starts the broadcaster with the app and closes it (every
    stream getting its goodbye) at shutdown; in a lifespan of your own, ``async with`` it."""
    broadcaster = stream.broadcaster if isinstance(stream, SseEndpoint) else stream

    @asynccontextmanager
    async def run(app: object) -> AsyncIterator[None]:
        if not isinstance(broadcaster, AbstractAsyncContextManager):
            raise TypeError(f"{broadcaster!r} is no async context manager: run it yourself")
        async with broadcaster:
            yield

    return run
