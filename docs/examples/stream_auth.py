# stream_auth.py: uvicorn stream_auth:app
"""Two ways to authenticate an EventSource, which cannot set headers: a session cookie
with an Origin check (/events), or a short-lived stream ticket in the URL (/ticket-events)."""

import hashlib
import hmac
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http.cookies import SimpleCookie
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ssebus import (
    Broadcaster,
    EventMap,
    InMemoryEventBus,
    Refusal,
    Scope,
    SseEndpoint,
    Subscription,
)

ALLOWED_ORIGINS = {"https://shop.example", "http://127.0.0.1:8000"}
SESSIONS = {"s3cr3t-session": ("ana", "acme")}  # session id -> (user, tenant): your store
TOKENS = {"ana-api-token": ("ana", "acme")}  # bearer token -> (user, tenant): your auth
TICKET_KEY = os.environ.get("TICKET_KEY", "change-me").encode()  # the same in every worker
TICKET_SECONDS = 30


def header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")
    return None


async def authorize_cookie(scope: Scope) -> Subscription | Refusal:
    origin = header(scope, b"origin")  # sent on cross-origin EventSource and fetch requests
    if origin is not None and origin not in ALLOWED_ORIGINS:
        return Refusal(403, "origin not allowed")
    if origin is None and header(scope, b"sec-fetch-site") == "cross-site":
        return Refusal(403, "cross-site request without an origin")  # an <img src=...>
    morsel = SimpleCookie(header(scope, b"cookie") or "").get("session")
    found = SESSIONS.get(morsel.value) if morsel else None
    if found is None:
        return Refusal(401, "log in first")
    user, tenant = found
    return Subscription(tenant=tenant, attributes={"user": user})


def sign(payload: str) -> str:
    return hmac.new(TICKET_KEY, payload.encode(), hashlib.sha256).hexdigest()


async def issue_ticket(request: Request) -> Response:
    """POST /stream-ticket with the page's usual credentials; returns a ticket for the URL."""
    bearer = request.headers.get("authorization", "").removeprefix("Bearer ")
    found = TOKENS.get(bearer)
    if found is None:
        return JSONResponse({"error": "unauthorized"}, status_code=401)
    user, tenant = found
    payload = f"{user}.{tenant}.{int(time.time()) + TICKET_SECONDS}"
    return JSONResponse({"ticket": f"{payload}.{sign(payload)}"})


async def authorize_ticket(scope: Scope) -> Subscription | Refusal:
    query = parse_qs(bytes(scope["query_string"]).decode("latin-1"))
    ticket = query.get("ticket", [""])[-1]
    payload, _, signature = ticket.rpartition(".")
    if not hmac.compare_digest(sign(payload), signature):
        return Refusal(401, "no valid stream ticket")
    user, tenant, expires = payload.split(".")
    if int(expires) < time.time():
        return Refusal(401, "stream ticket expired")
    # The ticket only has to be valid when the stream opens; the stream then lasts as long
    # as a session would (an hour here) and ends with a credentials-expired event.
    return Subscription(tenant=tenant, attributes={"user": user}, expires_at=time.time() + 3600)


class DropQueryStrings(logging.Filter):
    """uvicorn's access log lines without query strings, so tickets stay out of the logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and len(record.args) == 5:
            client, method, path, version, status = record.args
            record.args = (client, method, str(path).partition("?")[0], version, status)
        return True


logging.getLogger("uvicorn.access").addFilter(DropQueryStrings())

bus = InMemoryEventBus()
broadcaster = Broadcaster(bus, EventMap())


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    async with broadcaster:
        yield


app = Starlette(
    routes=[
        Route("/events", SseEndpoint(broadcaster, authorize=authorize_cookie)),
        Route("/ticket-events", SseEndpoint(broadcaster, authorize=authorize_ticket)),
        Route("/stream-ticket", issue_ticket, methods=["POST"]),
    ],
    lifespan=lifespan,
)
