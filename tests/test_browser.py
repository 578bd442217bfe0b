"""The live-orders page in a real browser (Playwright driving Debian's Chromium).

* The demo script itself (``examples/orders_app.py``): orders created and changed through
  the HTTP API show up on the page as they happen; a screenshot is saved to
  ``artifacts/browser-orders.png``.
* Resume: the same page and app (``tests.apps:orders_app``, the demo plus ``POST /kick``)
  loses its stream on the server's side; events published while the browser is away reach
  it after ``EventSource`` reconnects with ``Last-Event-ID``: every event exactly once, in
  order, and no ``reset``.
* Reset: with a history too short for what the page missed, it gets a ``reset``, reloads
  its orders and reopens the stream at the position they were read at.
* Load: the page shows orders made before it opened, and while its ``GET /orders`` and its
  stream were on their way, each once with its customer; the stream delivers exactly what
  the snapshot lacked. After a reset while orders are made, every order shows once.
* Figures: open streams, events per second and the chart of the last minute follow
  ``GET /stats``; the page loads nothing from elsewhere (it works offline).
* Tenants: the demo's ``/tenants`` page shows ``/?tenant=acme`` and ``/?tenant=globex``
  side by side while ``--simulate`` creates orders for both; each sees only its own
  (screenshot ``artifacts/browser-tenants.png``).

Skipped when ``/usr/bin/chromium`` is missing, unless ``SSEBUS_REQUIRE_BROWSER=1``, which
turns the skip into a failure. Every wait is bounded (Playwright and httpx timeouts).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, Frame, Page, Request, Route, sync_playwright
from servers import ROOT, ServerProcess, serve_app, serve_demo

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOT = ROOT / "artifacts" / "browser-orders.png"
#: Milliseconds any single wait in the page may take.
WAIT_MS = 10_000
#: Seconds an HTTP call of the test may take.
HTTP_TIMEOUT = 5.0


@pytest.fixture(scope="module")
def chromium() -> str:
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is missing: the browser tests drive Debian's Chromium"
        if os.environ.get("SSEBUS_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{reason}, and SSEBUS_REQUIRE_BROWSER=1 requires them to run")
        pytest.skip(reason)
    return str(CHROMIUM)


@pytest.fixture(scope="module")
def browser(chromium: str) -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=chromium, args=CHROMIUM_ARGS, headless=True, timeout=30_000
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 900, "height": 700})
    context.set_default_timeout(WAIT_MS)
    try:
        yield context.new_page()
    finally:
        context.close()


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=HTTP_TIMEOUT) as client:
        yield client


# -- driving the demo ------------------------------------------------------------------------


def open_page(page: Page, server: ServerProcess) -> None:
    page.goto(f"{server.url}/")
    page.wait_for_function("document.getElementById('state').textContent === 'connected'")


def create_order(
    http: httpx.Client, server: ServerProcess, customer: str, tenant: str = "acme"
) -> str:
    response = http.post(f"{server.url}/orders", json={"customer": customer, "tenant": tenant})
    assert response.status_code == 201, response.text
    order_id = response.json()["orderId"]
    assert isinstance(order_id, str)
    return order_id


def change_status(http: httpx.Client, server: ServerProcess, order_id: str, status: str) -> None:
    response = http.post(f"{server.url}/orders/{order_id}/status", json={"status": status})
    assert response.status_code == 200, response.text


def metrics(http: httpx.Client, server: ServerProcess) -> dict[str, Any]:
    response = http.get(f"{server.url}/metrics")
    response.raise_for_status()
    result: dict[str, Any] = response.json()
    return result


def received(page: Page) -> list[dict[str, Any]]:
    """``window.received``: every event the page handled, as ``{type, id, data}``."""
    events: list[dict[str, Any]] = page.evaluate("window.received")
    return events


def wait_received(page: Page, count: int) -> list[dict[str, Any]]:
    page.wait_for_function("n => window.received.length >= n", arg=count)
    return received(page)


def row(page: Page, order_id: str) -> list[str]:
    """The order's table row as its cell texts: id, customer, status."""
    cells: list[str] = page.locator(f"tr#{order_id} td").all_inner_texts()
    return cells


def created(order_id: str, customer: str) -> tuple[str, dict[str, str]]:
    return "order-created", {"orderId": order_id, "status": "created", "customer": customer}


def changed(order_id: str, old: str, new: str) -> tuple[str, dict[str, str]]:
    return "order-status-changed", {"orderId": order_id, "oldStatus": old, "newStatus": new}


def as_expected(events: list[dict[str, Any]]) -> list[tuple[str, dict[str, str]]]:
    return [(event["type"], json.loads(event["data"])) for event in events]


def distinct_ids(events: list[dict[str, Any]]) -> bool:
    """Every event carried an id of its own (ids are opaque positions: compare, never count)."""
    ids = [event["id"] for event in events]
    return all(ids) and len(set(ids)) == len(ids)


def stream_position(request: Request) -> str:
    """The position a stream request opened at: its ``lastEventId`` query parameter (the
    acme page's stream query is exactly ``tenant`` and ``lastEventId``)."""
    query = parse_qs(urlsplit(request.url).query)
    assert query.keys() == {"tenant", "lastEventId"}, request.url
    assert query["tenant"] == ["acme"]
    [position] = query["lastEventId"]
    return position


def wait_state(page: Page, state: str) -> None:
    page.wait_for_function("s => document.getElementById('state').textContent === s", arg=state)


def wait_status(page: Page, order_id: str, status: str) -> None:
    page.wait_for_function(
        "([id, s]) => document.querySelector(`tr#${id} td.status`)?.textContent === s",
        arg=[order_id, status],
    )


# -- the tests -------------------------------------------------------------------------------


def test_demo_page_shows_orders_and_status_changes_as_they_happen(
    page: Page, http: httpx.Client
) -> None:
    with serve_demo() as server:
        open_page(page, server)
        ana = create_order(http, server, "ana")
        bruno = create_order(http, server, "bruno")
        change_status(http, server, ana, "paid")

        events = wait_received(page, 3)
        assert as_expected(events) == [
            created(ana, "ana"),
            created(bruno, "bruno"),
            changed(ana, "created", "paid"),
        ]
        page.wait_for_function(
            "id => document.querySelector(`tr#${id} td.status`).textContent === 'paid'", arg=ana
        )
        assert row(page, ana) == [ana, "ana", "paid"]
        assert row(page, bruno) == [bruno, "bruno", "created"]
        assert page.inner_text("#count") == "3"
        assert page.inner_text("#last-id") == events[-1]["id"]

        page.wait_for_function("!document.querySelector('tr.fresh')")  # highlight faded
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True)
        page.close()  # the browser leaves before the server stops


def test_browser_resumes_after_a_server_side_disconnect_with_every_event_exactly_once(
    page: Page, http: httpx.Client
) -> None:
    stream_requests: list[Request] = []
    page.on("request", lambda r: stream_requests.append(r) if "/events" in r.url else None)

    with serve_app("uvicorn", "orders_app", graceful=True) as server:
        open_page(page, server)
        ana = create_order(http, server, "ana")
        bruno = create_order(http, server, "bruno")
        change_status(http, server, ana, "paid")
        before = wait_received(page, 3)

        # The server drops the stream; the page's EventSource retries after 1 s (retry: 1000).
        kicked = http.post(f"{server.url}/kick")
        assert kicked.json() == {"kicked": 1}
        page.wait_for_function("document.getElementById('state').textContent !== 'connected'")

        # Published while the browser is away.
        carla = create_order(http, server, "carla")
        change_status(http, server, ana, "packed")
        change_status(http, server, bruno, "paid")
        assert metrics(http, server)["connections_opened"] == 1, (
            "the browser reconnected before the events were published: nothing was missed"
        )

        wait_received(page, 6)
        change_status(http, server, carla, "paid")  # live again
        events = wait_received(page, 7)
        page.wait_for_function(
            "id => document.querySelector(`tr#${id} td.status`).textContent === 'paid'",
            arg=carla,
        )

        assert metrics(http, server)["connections_opened"] == 2  # one reconnect, no more
        assert as_expected(events) == [
            created(ana, "ana"),
            created(bruno, "bruno"),
            changed(ana, "created", "paid"),
            created(carla, "carla"),
            changed(ana, "paid", "packed"),
            changed(bruno, "created", "paid"),
            changed(carla, "created", "paid"),
        ]
        assert distinct_ids(events)
        assert [row(page, order) for order in (ana, bruno, carla)] == [
            [ana, "ana", "packed"],
            [bruno, "bruno", "paid"],
            [carla, "carla", "paid"],
        ]

        assert len(stream_requests) == 2
        first, resumed = (request.all_headers() for request in stream_requests)
        assert "last-event-id" not in first
        assert resumed["last-event-id"] == before[-1]["id"]
        page.close()


def test_after_a_reset_the_page_reloads_the_orders_and_resumes_from_their_position(
    page: Page, http: httpx.Client
) -> None:
    """History keeps 2 events per tenant; the page misses 3 while away, so its reconnect
    gets a ``reset``: it reloads ``GET /orders`` and reopens the stream at the position
    those orders were read at (their ``Last-Event-ID``): nothing lost, nothing twice."""
    stream_requests: list[Request] = []
    page.on("request", lambda r: stream_requests.append(r) if "/events" in r.url else None)
    snapshots: list[dict[str, str]] = []
    page.on(
        "response",
        lambda r: snapshots.append(r.headers) if r.url.split("?")[0].endswith("/orders") else None,
    )

    with serve_app("uvicorn", "orders_app_short_history", graceful=True) as server:
        open_page(page, server)
        ana = create_order(http, server, "ana")
        [first] = wait_received(page, 1)

        kicked = http.post(f"{server.url}/kick")
        assert kicked.json() == {"kicked": 1}
        page.wait_for_function("document.getElementById('state').textContent !== 'connected'")
        bruno = create_order(http, server, "bruno")
        change_status(http, server, ana, "paid")
        change_status(http, server, bruno, "paid")
        assert metrics(http, server)["connections_opened"] == 1, (
            "the browser reconnected before the events were published: nothing was missed"
        )

        [_, reset] = wait_received(page, 2)
        assert reset["type"] == "reset"
        assert json.loads(reset["data"]) == {"lastEventId": first["id"], "reason": "not-in-history"}
        # The missed changes come from the reloaded orders, not from the stream.
        wait_status(page, bruno, "paid")
        assert [row(page, order) for order in (ana, bruno)] == [
            [ana, "ana", "paid"],
            [bruno, "bruno", "paid"],
        ]
        wait_state(page, "connected")

        change_status(http, server, ana, "packed")  # live again, on the reopened stream
        change_status(http, server, bruno, "shipped")
        events = wait_received(page, 4)
        wait_status(page, bruno, "shipped")
        assert as_expected(events) == [
            created(ana, "ana"),
            ("reset", {"lastEventId": first["id"], "reason": "not-in-history"}),
            changed(ana, "paid", "packed"),
            changed(bruno, "paid", "shipped"),
        ]
        assert distinct_ids(events)
        assert [row(page, order) for order in (ana, bruno)] == [
            [ana, "ana", "packed"],
            [bruno, "bruno", "shipped"],
        ]

        assert metrics(http, server)["connections_opened"] == 3
        assert len(stream_requests) == 3
        fresh, resumed, reopened = stream_requests
        initial, reloaded = (snapshot["last-event-id"] for snapshot in snapshots)
        assert "last-event-id" not in fresh.all_headers()
        assert stream_position(fresh) == initial
        assert resumed.all_headers()["last-event-id"] == first["id"]
        assert "last-event-id" not in reopened.all_headers()
        assert stream_position(reopened) == reloaded
        page.close()


def test_two_tenants_pages_side_by_side_each_see_only_their_own_orders(
    page: Page, http: httpx.Client
) -> None:
    with serve_demo("--simulate") as server:
        page.goto(f"{server.url}/tenants")
        for tenant in TENANTS:
            shown = page.frame_locator(f"iframe[title={tenant}]")
            shown.locator("#state", has_text="connected").wait_for()
            assert shown.locator("#tenant").inner_text() == tenant
        # Besides the simulated orders, one order of each tenant made through the API.
        mine = {
            tenant: create_order(http, server, f"{tenant}-customer", tenant) for tenant in TENANTS
        }
        pages = {tenant: tenant_page(page, tenant) for tenant in TENANTS}
        for tenant, frame in pages.items():
            frame.wait_for_function(
                "id => window.received.some(e => JSON.parse(e.data).orderId === id)",
                arg=mine[tenant],
            )
            # ... and simulated ones (about one per second, over both tenants).
            frame.wait_for_function("window.received.length >= 3", timeout=30_000)

        owned = {tenant: orders_of(http, server, tenant) for tenant in TENANTS}
        assert not owned["acme"] & owned["globex"]
        for tenant, frame in pages.items():
            seen = {
                json.loads(event["data"])["orderId"] for event in frame.evaluate("window.received")
            }
            assert seen <= owned[tenant], f"{tenant} saw another tenant's orders"
            assert mine[tenant] in seen
            assert not seen & owned[other(tenant)]
        page.wait_for_timeout(900)  # let the row highlight fade for the picture
        page.screenshot(path=str(SCREENSHOT.with_name("browser-tenants.png")))
        page.close()


def test_the_stream_of_an_unknown_tenant_is_refused_before_it_starts(http: httpx.Client) -> None:
    with serve_demo() as server:
        response = http.get(f"{server.url}/events", params={"tenant": "initech"})
        assert response.status_code == 403
        assert "initech" in response.text


TENANTS = ["acme", "globex"]


def other(tenant: str) -> str:
    return TENANTS[1 - TENANTS.index(tenant)]


def tenant_page(page: Page, tenant: str) -> Frame:
    frame = page.frame(url=lambda url: url.endswith(f"?tenant={tenant}"))
    assert frame is not None
    return frame


def orders_of(http: httpx.Client, server: ServerProcess, tenant: str) -> set[str]:
    response = http.get(f"{server.url}/orders", params={"tenant": tenant})
    response.raise_for_status()
    return {order["orderId"] for order in response.json()}


# -- the page's load: a snapshot, then the stream from its position --------------------------


def rows_of(page: Page) -> list[list[str]]:
    """Every row of the orders table, top to bottom, as its cell texts."""
    texts: list[str] = page.locator("#orders tr").all_inner_texts()
    return [text.split("\t") for text in texts]


def wait_rows(page: Page, count: int) -> list[list[str]]:
    page.wait_for_function("n => document.querySelectorAll('#orders tr').length >= n", arg=count)
    return rows_of(page)


def test_orders_made_before_and_while_the_page_loads_each_show_once_with_their_customer(
    page: Page, http: httpx.Client
) -> None:
    """Orders exist before the page opens; more are made and changed while ``GET /orders``
    travels back (after the server read it) and while the stream is on its way: each order
    is one row with its customer and latest status, and the stream delivers exactly the
    events the snapshot did not contain, once each."""
    with serve_demo() as server:
        ana = create_order(http, server, "ana")
        bruno = create_order(http, server, "bruno")
        change_status(http, server, ana, "paid")
        made: dict[str, str] = {}

        def snapshot_in_flight(route: Route) -> None:
            response = route.fetch()  # the server has read the orders and their position
            if not made:
                made["carla"] = create_order(http, server, "carla")
                change_status(http, server, bruno, "paid")
            route.fulfill(response=response)

        def stream_on_its_way(route: Route) -> None:
            if "davi" not in made:
                made["davi"] = create_order(http, server, "davi")
                change_status(http, server, made["carla"], "paid")
            route.continue_()

        page.route("**/orders?*", snapshot_in_flight)
        page.route("**/events?*", stream_on_its_way)
        open_page(page, server)
        assert made.keys() == {"carla", "davi"}, "the page loaded no GET /orders, or no stream"
        carla, davi = made["carla"], made["davi"]

        events = wait_received(page, 4)
        wait_status(page, carla, "paid")
        assert as_expected(events) == [
            created(carla, "carla"),
            changed(bruno, "created", "paid"),
            created(davi, "davi"),
            changed(carla, "created", "paid"),
        ]
        assert distinct_ids(events)
        assert rows_of(page) == [
            [davi, "davi", "created"],
            [carla, "carla", "paid"],
            [bruno, "bruno", "paid"],
            [ana, "ana", "paid"],
        ]
        page.close()


#: The chart's points as [x, y] pairs; y 100 is the baseline (no events that second).
CHART_POINTS = """() => document.querySelector('#chart polyline').getAttribute('points')
    .split(' ').filter(Boolean).map(point => point.split(',').map(Number))"""


def test_the_figures_show_open_streams_events_per_second_and_a_chart_of_the_last_minute(
    page: Page, http: httpx.Client
) -> None:
    """Fed by ``GET /stats``; everything the page loads comes from the demo (no CDN)."""
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    with serve_demo() as server:
        open_page(page, server)
        page.wait_for_function("document.getElementById('connections').textContent === '1'")
        assert page.inner_text("#rate") == "0.0"  # nothing published yet
        assert all(y == 100 for _, y in page.evaluate(CHART_POINTS))

        for customer in ("ana", "bruno", "carla", "davi", "elis"):
            create_order(http, server, customer)
        page.wait_for_function("Number(document.getElementById('rate').textContent) > 0")
        # A point per second sampled, one of them above the baseline.
        page.wait_for_function(
            f"() => {{ const points = ({CHART_POINTS})();"
            " return points.length >= 2 && points.some(([x, y]) => y < 100); }"
        )
        points = page.evaluate(CHART_POINTS)
        assert [x for x, _ in points] == sorted(x for x, _ in points)
        assert points[-1][0] == 600  # the newest second on the right edge
        assert 1 <= int(page.inner_text("#peak")) <= 5
        assert page.inner_text("#connections") == "1"
        page.close()
    assert requested
    assert [url for url in requested if not url.startswith(f"{server.url}/")] == []


def test_after_a_reset_during_new_orders_the_page_shows_every_order_once(
    page: Page, http: httpx.Client
) -> None:
    """History keeps 2 events per tenant: the page, kicked off while orders are made, gets a
    ``reset`` on its return and reloads; one more order is made while that reload travels
    back. Every order is one row with its customer, and nothing after the reset is twice."""
    snapshots: list[str] = []

    def reload_in_flight(route: Route) -> None:
        response = route.fetch()
        snapshots.append(response.headers["last-event-id"])
        if len(snapshots) == 2:  # the reload after the reset
            made["davi"] = create_order(http, server, "davi")
        route.fulfill(response=response)

    made: dict[str, str] = {}
    with serve_app("uvicorn", "orders_app_short_history", graceful=True) as server:
        ana = create_order(http, server, "ana")
        page.route("**/orders?*", reload_in_flight)
        open_page(page, server)

        kicked = http.post(f"{server.url}/kick")
        assert kicked.json() == {"kicked": 1}
        page.wait_for_function("document.getElementById('state').textContent !== 'connected'")
        bruno = create_order(http, server, "bruno")
        change_status(http, server, ana, "paid")
        carla = create_order(http, server, "carla")
        assert metrics(http, server)["connections_opened"] == 1, (
            "the browser reconnected before the events were published: nothing was missed"
        )

        [reset, _] = wait_received(page, 2)
        assert reset["type"] == "reset"
        wait_state(page, "connected")
        elis = create_order(http, server, "elis")  # live, on the reopened stream
        events = wait_received(page, 3)
        davi = made["davi"]

        assert as_expected(events)[1:] == [created(davi, "davi"), created(elis, "elis")]
        assert distinct_ids(events)
        assert rows_of(page) == [
            [elis, "elis", "created"],
            [davi, "davi", "created"],
            [carla, "carla", "created"],
            [bruno, "bruno", "created"],
            [ana, "ana", "paid"],
        ]
        assert len(snapshots) == 2
        page.close()
