"""The demo's tenant rules (``examples/orders_app.py``): a demo teaches, so it never guesses.

Every route that needs a tenant takes it from exactly one ``tenant`` (the query string for
the stream, the page and ``GET /orders``; the JSON body for ``POST /orders``):

* none (or an empty one) is a 401 that says the tenant is missing;
* more than one, or a look-alike beside or instead of it (``TENANT=``, ``tenant[]=``), is a
  400 that names the parameter and the problem;
* an unknown one is a 403;
* only ``/`` is friendlier: without a tenant it redirects a newcomer to ``/?tenant=acme``.

The stream's ``authorize`` hook is called with ASGI scopes directly; the other routes go
through the Starlette app with starlette's ``TestClient``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from apps import ROOT
from starlette.testclient import TestClient

from examples.orders_app import authorize, build_app
from ssebus import Refusal, Scope, Subscription

PAGE = ROOT / "examples" / "orders_page.html"

#: Query strings that name no tenant at all (other parameters are fine).
MISSING = [b"", b"tenant=", b"lastEventId=ord-1001"]
#: Query strings that name the tenant more than once.
REPEATED = [b"tenant=acme&tenant=globex", b"tenant=globex&tenant=acme", b"tenant=acme&tenant=acme"]
#: Query strings with a parameter that looks like ``tenant`` but is not it: (query, its name).
LOOK_ALIKES = [
    (b"TENANT=globex", "TENANT"),
    (b"Tenant=globex", "Tenant"),
    (b"tenant[]=globex", "tenant[]"),
    (b"tenant%5B%5D=globex", "tenant[]"),
    (b"tenant=acme&TENANT=globex", "TENANT"),
    (b"tenant=acme&tenant[]=globex", "tenant[]"),
    (b"tenant%20=globex", "tenant "),
]


def http_scope(query: bytes, path: str = "/events") -> Scope:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "headers": [(b"host", b"testserver"), (b"accept", b"text/event-stream")],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }


async def refusal_of(query: bytes) -> Refusal:
    decision = await authorize(http_scope(query))
    assert isinstance(decision, Refusal), f"{query!r} was let in as {decision!r}"
    return decision


@pytest.fixture
def client() -> Iterator[TestClient]:
    with TestClient(build_app()) as test_client:
        yield test_client


def error_of(response: Any) -> str:
    body = response.json()
    assert isinstance(body, dict), body
    error = body["error"]
    assert isinstance(error, str)
    return error


def raw_post(client: TestClient, body: str) -> Any:
    return client.post("/orders", content=body, headers={"content-type": "application/json"})


# -- the stream's authorize hook -------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("query", MISSING)
async def test_stream_without_a_tenant_is_refused_with_401_saying_it_is_missing(
    query: bytes,
) -> None:
    refusal = await refusal_of(query)
    assert refusal.status == 401
    assert refusal.reason.startswith("tenant:")
    assert "missing" in refusal.reason


@pytest.mark.anyio
@pytest.mark.parametrize("query", REPEATED)
async def test_stream_with_a_repeated_tenant_is_refused_with_400_saying_how_often(
    query: bytes,
) -> None:
    refusal = await refusal_of(query)
    assert refusal.status == 400
    assert refusal.reason.startswith("tenant:")
    assert "2 times" in refusal.reason


@pytest.mark.anyio
@pytest.mark.parametrize(("query", "name"), LOOK_ALIKES)
async def test_stream_with_a_look_alike_tenant_parameter_is_refused_with_400_naming_it(
    query: bytes, name: str
) -> None:
    refusal = await refusal_of(query)
    assert refusal.status == 400
    assert refusal.reason.startswith(f"{name!r}:")
    assert "looks like 'tenant'" in refusal.reason


@pytest.mark.anyio
@pytest.mark.parametrize("tenant", ["acme", "globex"])
async def test_stream_of_a_known_tenant_subscribes_to_exactly_that_tenant(tenant: str) -> None:
    # A guard for the fix: one plain ``tenant`` (beside other parameters) is still let in.
    decision = await authorize(http_scope(f"tenant={tenant}&lastEventId=ord-1001".encode()))
    assert isinstance(decision, Subscription)
    assert decision.tenant == tenant


def test_an_unknown_tenant_is_refused_with_403_by_the_stream_page_and_orders(
    client: TestClient,
) -> None:
    refusal = anyio.run(refusal_of, b"tenant=initech")
    assert (refusal.status, refusal.reason) == (403, "tenant: unknown tenant 'initech'")

    page = client.get("/", params={"tenant": "initech"}, follow_redirects=False)
    assert page.status_code == 403
    assert page.text == "tenant: unknown tenant 'initech'"

    listed = client.get("/orders", params={"tenant": "initech"})
    assert listed.status_code == 403
    assert error_of(listed) == "tenant: unknown tenant 'initech'"

    created = client.post("/orders", json={"customer": "ana", "tenant": "initech"})
    assert created.status_code == 403
    assert error_of(created) == "tenant: unknown tenant 'initech'"


# -- the page --------------------------------------------------------------------------------


def test_page_without_a_tenant_redirects_a_newcomer_to_a_working_tenant_page(
    client: TestClient,
) -> None:
    response = client.get("/", follow_redirects=False)
    assert response.is_redirect
    assert response.headers["location"] == "/?tenant=acme"

    followed = client.get("/")
    assert followed.status_code == 200
    assert str(followed.url).endswith("/?tenant=acme")
    assert "text/html" in followed.headers["content-type"]
    assert "EventSource" in followed.text


@pytest.mark.parametrize("query", [q.decode() for q in REPEATED] + ["TENANT=globex"])
def test_page_with_an_ambiguous_tenant_is_refused_with_400_not_redirected(
    client: TestClient, query: str
) -> None:
    response = client.get(f"/?{query}", follow_redirects=False)
    assert response.status_code == 400
    assert "tenant" in response.text.lower()


@pytest.mark.parametrize("tenant", ["acme", "globex"])
def test_page_of_a_known_tenant_is_served_and_never_redirected(
    client: TestClient, tenant: str
) -> None:
    # A guard for the fix: "/" with a tenant stays the page itself.
    response = client.get("/", params={"tenant": tenant}, follow_redirects=False)
    assert response.status_code == 200
    assert "EventSource" in response.text


def test_page_script_opens_its_stream_with_the_tenant_of_its_url_and_no_default() -> None:
    script = PAGE.read_text(encoding="utf-8")
    assert re.search(r"new EventSource\(`/events\$\{query\}&\$\{from\}`\)", script)
    assert "const query = `?tenant=${encodeURIComponent(tenant)}`;" in script
    assert re.search(r'fetch\("/orders" \+ query\)', script)
    # The server picks (or refuses) the tenant; the page never silently falls back to one.
    assert re.search(r'\.get\("tenant"\);', script)
    assert not re.search(r'\.get\("tenant"\)\s*(\|\||\?\?)', script)


# -- GET /orders -----------------------------------------------------------------------------


@pytest.mark.parametrize("query", [q.decode() for q in MISSING])
def test_listing_orders_without_a_tenant_is_refused_with_401(
    client: TestClient, query: str
) -> None:
    client.post("/orders", json={"customer": "ana", "tenant": "acme"})
    response = client.get(f"/orders?{query}")
    assert response.status_code == 401
    assert error_of(response).startswith("tenant: missing")
    assert "www-authenticate" in response.headers


@pytest.mark.parametrize(
    ("query", "problem"),
    [(q.decode(), "tenant: given 2 times") for q in REPEATED]
    + [(q.decode(), f"{name!r}: looks like 'tenant'") for q, name in LOOK_ALIKES],
)
def test_listing_orders_with_an_ambiguous_tenant_is_refused_with_400_naming_the_problem(
    client: TestClient, query: str, problem: str
) -> None:
    client.post("/orders", json={"customer": "ana", "tenant": "acme"})
    response = client.get(f"/orders?{query}")
    assert response.status_code == 400
    assert error_of(response).startswith(problem)


# -- POST /orders ----------------------------------------------------------------------------


def test_creating_an_order_without_a_tenant_is_refused_with_401_and_creates_nothing(
    client: TestClient,
) -> None:
    for body in ({"customer": "ana"}, {"customer": "ana", "tenant": ""}):
        response = client.post("/orders", json=body)
        assert response.status_code == 401, body
        assert error_of(response).startswith("tenant: missing")
    for tenant in ("acme", "globex"):
        assert client.get("/orders", params={"tenant": tenant}).json() == []


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ('{"customer": "ana", "tenant": "acme", "tenant": "globex"}', "tenant: given 2 times"),
        ('{"customer": "ana", "TENANT": "globex"}', "'TENANT': looks like 'tenant'"),
        ('{"customer": "ana", "tenant": "acme", "Tenant": "globex"}', "'Tenant': looks like"),
        ('{"customer": "ana", "tenant[]": "globex"}', "'tenant[]': looks like 'tenant'"),
        ('{"customer": "ana", "tenant": ["acme", "globex"]}', "tenant: must be one string"),
    ],
)
def test_creating_an_order_with_an_ambiguous_tenant_is_refused_with_400_and_creates_nothing(
    client: TestClient, body: str, problem: str
) -> None:
    json.loads(body)  # valid JSON: the refusal is about the tenant, not the syntax
    response = raw_post(client, body)
    assert response.status_code == 400
    assert error_of(response).startswith(problem)
    for tenant in ("acme", "globex"):
        assert client.get("/orders", params={"tenant": tenant}).json() == []


@pytest.mark.parametrize("tenant", ["acme", "globex"])
def test_an_order_created_for_a_tenant_is_listed_for_that_tenant_only(
    client: TestClient, tenant: str
) -> None:
    # A guard for the fix: the happy path of the page's own calls still works.
    created = client.post("/orders", json={"customer": "ana", "tenant": tenant})
    assert created.status_code == 201
    order_id = created.json()["orderId"]
    other = "globex" if tenant == "acme" else "acme"
    assert [o["orderId"] for o in client.get("/orders", params={"tenant": tenant}).json()] == [
        order_id
    ]
    assert client.get("/orders", params={"tenant": other}).json() == []
