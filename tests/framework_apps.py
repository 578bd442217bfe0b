"""One app per framework, wired with its ssebus adapter as a user would write it.

Not a test module: ``tests/test_adapters.py`` serves these under real servers
(``uvicorn --factory tests.framework_apps:fastapi_app``, ``daphne
tests.framework_apps:instances.django_app`` ...) and mypy checks them strictly, as it would a
user's code. Each streams at ``/events`` and publishes ``POST /publish?text=...`` on the bus,
mapped to a ``noted`` event; the lines between ``# ssebus:`` and ``# end`` are the wiring.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ssebus import Broadcaster, EventMap, InMemoryEventBus, SseEndpoint
from ssebus._types import ASGIApp, Receive, Scope, Send

if TYPE_CHECKING:
    from fastapi import FastAPI
    from litestar import Litestar
    from quart import Quart
    from starlette.applications import Starlette


@dataclass(frozen=True)
class Noted:
    """The domain event ``POST /publish`` publishes."""

    text: str


def new_broadcaster() -> Broadcaster:
    """The broadcaster of every app, logging at INFO so that the test sees who started it."""
    logger = logging.getLogger("ssebus")
    if not logger.handlers:  # servers configure the root logger each their own way
        logger.addHandler(logging.StreamHandler())
        logger.setLevel(logging.INFO)
    events = EventMap()
    events.add(Noted, "noted", lambda event: {"text": event.text})
    return Broadcaster(InMemoryEventBus(), events)


def starlette_app() -> Starlette:
    """Starlette: ``sse_route`` and ``lifespan``."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from ssebus.starlette import lifespan, sse_route

    broadcaster = new_broadcaster()

    async def publish(request: Request) -> Response:
        await broadcaster.bus.publish(Noted(request.query_params["text"]))
        return Response(status_code=204)

    # ssebus:
    return Starlette(
        routes=[sse_route("/events", broadcaster), Route("/publish", publish, methods=["POST"])],
        lifespan=lifespan(broadcaster),
    )
    # end


def fastapi_app() -> FastAPI:
    """FastAPI: ``include_router(sse_router(...))``."""
    from fastapi import FastAPI

    from ssebus.fastapi import sse_router

    broadcaster = new_broadcaster()
    # ssebus:
    app = FastAPI()
    app.include_router(sse_router("/events", broadcaster))
    # end

    @app.post("/publish", status_code=204)
    async def publish(text: str) -> None:
        await broadcaster.bus.publish(Noted(text))

    return app


def litestar_app() -> Litestar:
    """Litestar: ``plugins=[SsePlugin(...)]``."""
    from litestar import Litestar, post

    from ssebus.litestar import SsePlugin

    broadcaster = new_broadcaster()

    @post("/publish", status_code=204)
    async def publish(text: str) -> None:
        await broadcaster.bus.publish(Noted(text))

    # ssebus:
    return Litestar(route_handlers=[publish], plugins=[SsePlugin("/events", broadcaster)])
    # end


def quart_app() -> Quart:
    """Quart: ``add_sse(app, ...)``."""
    from quart import Quart, request

    from ssebus.quart import add_sse

    broadcaster = new_broadcaster()
    # ssebus:
    app = Quart(__name__)
    add_sse(app, "/events", broadcaster)
    # end

    @app.post("/publish")
    async def publish() -> tuple[str, int]:
        await broadcaster.bus.publish(Noted(request.args["text"]))
        return "", 204

    return app


#: Django's URLconf (``ROOT_URLCONF`` is this module): filled by :func:`django_app`.
urlpatterns: list[Any] = []


def django_app() -> ASGIApp:
    """Django (ASGI): ``sse_application(get_asgi_application(), ...)``."""
    import django
    from django.conf import settings
    from django.core.asgi import get_asgi_application
    from django.http import HttpRequest, HttpResponse
    from django.urls import path

    from ssebus.django import sse_application

    settings.configure(
        ROOT_URLCONF=__name__, ALLOWED_HOSTS=["127.0.0.1"], MIDDLEWARE=[], SECRET_KEY="test"
    )
    django.setup()
    broadcaster = new_broadcaster()

    async def publish(request: HttpRequest) -> HttpResponse:
        await broadcaster.bus.publish(Noted(request.GET["text"]))
        return HttpResponse(status=204)

    urlpatterns.append(path("publish", publish))
    # ssebus:
    return sse_application(get_asgi_application(), "/events", broadcaster)
    # end


def asgi_app() -> ASGIApp:
    """Raw ASGI: ``SseEndpoint`` is the app (it runs the lifespan), here behind the test's
    own ``/publish``."""
    broadcaster: Broadcaster = new_broadcaster()
    # ssebus:
    endpoint = SseEndpoint(broadcaster)
    # end

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/publish":
            text = bytes(scope["query_string"]).decode().removeprefix("text=")
            await broadcaster.bus.publish(Noted(text))
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})
        elif scope["type"] == "lifespan" or scope["path"] == "/events":
            await endpoint(scope, receive, send)
        else:
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b""})

    return app


FACTORIES: dict[str, Any] = {
    "asgi_app": asgi_app,
    "starlette_app": starlette_app,
    "fastapi_app": fastapi_app,
    "litestar_app": litestar_app,
    "quart_app": quart_app,
    "django_app": django_app,
}


class _Instances:
    """``daphne tests.framework_apps:instances.django_app``: daphne takes an app object."""

    def __getattr__(self, factory: str) -> Any:
        if factory not in FACTORIES:
            raise AttributeError(factory)
        return FACTORIES[factory]()


instances = _Instances()
