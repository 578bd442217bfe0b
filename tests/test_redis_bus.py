"""RedisEventBus on its own against a real Redis: ticks, per-tenant retention, gaps, safe
retries of a publish, paged replay.

The fault tests start private ``redis-server`` processes on free ports (killed, restarted,
frozen with SIGSTOP); the others use ``REDIS_URL`` and delete the keys they create.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis_support import (
    REDIS_URL,
    RedisServer,
    eventually,
    free_port,
    fresh_bus_names,
    publish_when_back,
    raw_client,
    redis_server_fixture,  # noqa: F401 - the redis_server fixture
)

from ssebus import BusUnavailableError, ClosedError
from ssebus._bus import BusGap, delivery_position
from ssebus.redis import Mode, RedisEventBus

MODES: list[Mode] = ["pubsub", "streams"]

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("need_redis")]


@dataclass(frozen=True)
class Placed:
    tenant: str | None
    n: int


def tenant_of(event: object) -> str | None:
    tenant: str | None = getattr(event, "tenant", None)
    return tenant


# -- helpers -----------------------------------------------------------------------------


@pytest.fixture
async def names() -> AsyncIterator[Callable[[], str]]:
    """Fresh bus names; every key under their hash tags is deleted afterwards."""
    async with fresh_bus_names("ssebus-test-") as new:
        yield new


def make_bus(mode: Mode, name: str, url: str = REDIS_URL, **options: Any) -> RedisEventBus:
    options.setdefault("reconnect_backoff", (0.05, 0.5))
    options.setdefault("partition", tenant_of)
    bus = RedisEventBus(url, mode=mode, channel=name, stream=name, **options)
    bus.register(Placed)
    return bus


def collect(bus: RedisEventBus) -> list[tuple[Any, int | None]]:
    """Every event the bus delivers here, with its position."""
    got: list[tuple[Any, int | None]] = []

    async def handler(event: Any) -> None:
        got.append((event, delivery_position()))

    bus.subscribe(object, handler)
    return got


def gaps_of(bus: RedisEventBus) -> list[BusGap]:
    gaps: list[BusGap] = []

    async def handler(gap: BusGap) -> None:
        gaps.append(gap)

    bus.on_gap(handler)
    return gaps


async def replay_all(
    bus: RedisEventBus, partitions: list[str | None], after: int, limit: int
) -> list[tuple[int, object]]:
    """Chain replay pages (each page's last tick is the next ``after``) to the end."""
    replayed: list[tuple[int, object]] = []
    while True:
        page = await bus.replay(partitions, after, limit)
        assert page is not None
        assert len(page) <= limit
        if not page:
            return replayed
        replayed += page
        after = page[-1][0]


# -- ticks -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_every_instance_delivers_each_event_at_the_same_contiguous_tick(
    mode: Mode, names: Callable[[], str]
) -> None:
    name = names()
    with anyio.fail_after(15):
        async with make_bus(mode, name) as a, make_bus(mode, name) as b:
            got_a, got_b = collect(a), collect(b)
            for n in range(5):
                await a.publish(Placed("t" if n % 2 else None, n))
            await eventually(lambda: len(got_a) == 5 and len(got_b) == 5)
            assert got_a == got_b == [(Placed("t" if n % 2 else None, n), n + 1) for n in range(5)]
            assert a.latest_position() == b.latest_position() == 5
            assert a.position_secret() == b.position_secret()
            assert len(a.position_secret()) == 32
        async with make_bus(mode, name) as c:  # a late instance starts at the newest tick
            assert c.latest_position() == 5
            assert c.position_secret() == a.position_secret()


async def test_the_position_secret_is_not_there_before_the_bus_runs() -> None:
    with pytest.raises(ClosedError):
        make_bus("streams", "never-started").position_secret()


# -- retention per partition (finding 2) -------------------------------------------------


async def test_a_tenants_burst_never_trims_another_tenants_replay(
    names: Callable[[], str],
) -> None:
    name = names()
    with anyio.fail_after(30):
        async with make_bus("streams", name, maxlen=100) as bus:
            await bus.publish(Placed("B", 0))
            await bus.publish(Placed("B", 1))
            for n in range(500):
                await bus.publish(Placed("A", n))
            assert await bus.replay(["B", None], 0, 100) == [
                (1, Placed("B", 0)),
                (2, Placed("B", 1)),
            ]
            assert await bus.replay(["A"], 3, 100) is None  # A's own burst trimmed A
            newest = await bus.replay(["A"], 497, 100)
            assert newest == [(tick, Placed("A", tick - 3)) for tick in range(498, 503)]


async def test_a_partition_key_that_fails_puts_the_event_in_the_tenantless_partition(
    names: Callable[[], str], caplog: pytest.LogCaptureFixture
) -> None:
    def broken(event: object) -> str | None:
        raise LookupError("no tenant")

    name = names()
    with anyio.fail_after(15):
        async with make_bus("streams", name, partition=broken) as bus:
            with caplog.at_level(logging.WARNING, logger="ssebus.redis"):
                await bus.publish(Placed("x", 1))
                await bus.publish(Placed("x", 2))
            assert await bus.replay([None], 0, 10) == [(1, Placed("x", 1)), (2, Placed("x", 2))]
            assert await bus.replay(["x"], 0, 10) == []
    warnings = [r for r in caplog.records if "partition key" in r.getMessage()]
    assert len(warnings) == 1
    assert "LookupError" in warnings[0].getMessage()


# -- gaps (finding 4) --------------------------------------------------------------------


async def test_pubsub_listener_reports_exactly_the_events_published_while_it_was_away(
    redis_server: Callable[[bool], Awaitable[RedisServer]], caplog: pytest.LogCaptureFixture
) -> None:
    server = await redis_server(True)
    name = "ssebus-test-gap"
    missed = 7
    with anyio.fail_after(30):
        async with (
            make_bus("pubsub", name, server.url, publish_timeout=1) as publisher,
            make_bus("pubsub", name, server.url, reconnect_backoff=(2, 2)) as listener,
        ):
            got, gaps = collect(listener), gaps_of(listener)
            await publisher.publish(Placed("t", 0))
            await eventually(lambda: len(got) == 1)
            await server.stop()
            await server.start()
            for n in range(1, missed + 1):
                await publish_when_back(publisher, Placed("t", n))
            assert gaps == []  # the listener is still backing off
            await eventually(lambda: len(gaps) == 1, within=10)
            await publisher.publish(Placed("t", 99))
            await eventually(lambda: len(got) == 2)
    assert gaps == [BusGap(missed, "resubscribed", position=1 + missed)]
    assert got == [(Placed("t", 0), 1), (Placed("t", 99), missed + 2)]
    assert listener.gaps == 1
    assert all(r.exc_info is None for r in caplog.records if r.name.startswith("ssebus"))


async def test_pubsub_listener_reports_a_bus_restarted_without_its_counter(
    redis_server: Callable[[bool], Awaitable[RedisServer]],
) -> None:
    server = await redis_server(False)
    name = "ssebus-test-restart"
    with anyio.fail_after(30):
        async with (
            make_bus("pubsub", name, server.url, publish_timeout=1) as publisher,
            make_bus("pubsub", name, server.url, reconnect_backoff=(2, 2)) as listener,
        ):
            got, gaps = collect(listener), gaps_of(listener)
            for n in range(3):
                await publisher.publish(Placed("t", n))
            await eventually(lambda: len(got) == 3)
            await server.stop()
            await server.start()
            for n in range(3, 5):
                await publish_when_back(publisher, Placed("t", n))
            await eventually(lambda: len(gaps) == 1, within=10)
            await publisher.publish(Placed("t", 5))
            await eventually(lambda: len(got) == 4)
    assert gaps == [BusGap(2, "bus-restarted", position=2)]
    assert got[-1] == (Placed("t", 5), 3)


async def test_streams_reader_behind_a_trimmed_feed_reports_exactly_what_it_lost(
    names: Callable[[], str],
) -> None:
    name = names()
    release = anyio.Event()
    got: list[int | None] = []

    async def slow(event: object) -> None:
        got.append(delivery_position())
        await release.wait()

    with anyio.fail_after(30):
        async with make_bus("streams", name, feed_maxlen=10) as bus:
            gaps = gaps_of(bus)
            bus.subscribe(Placed, slow)
            await bus.publish(Placed("t", 0))
            await eventually(lambda: got == [1])  # the reader is stuck on tick 1
            for n in range(1, 301):
                await bus.publish(Placed("t", n))
            async with raw_client() as redis:
                oldest = (await redis.xrange(f"{{{name}}}:feed", count=1))[0]
            first = int(str(oldest.identifier).split("-")[0])
            assert first > 2  # trimmed
            release.set()
            await eventually(lambda: bus.latest_position() == 301)
    assert gaps == [BusGap(first - 2, "log-trimmed", position=first - 1)]
    assert got == [1, *range(first, 302)]


async def test_streams_reader_reports_a_log_reset_and_reads_the_new_log(
    redis_server: Callable[[bool], Awaitable[RedisServer]],
) -> None:
    server = await redis_server(False)
    name = "ssebus-test-reset"
    with anyio.fail_after(30):
        async with (
            make_bus("streams", name, server.url, publish_timeout=1) as publisher,
            make_bus("streams", name, server.url) as listener,
        ):
            got, gaps = collect(listener), gaps_of(listener)
            for n in range(3):
                await publisher.publish(Placed("t", n))
            await eventually(lambda: len(got) == 3)
            await server.stop()
            await server.start()
            await eventually(lambda: len(gaps) == 1, within=10)
            assert await listener.replay(["t"], 3, 10) is None  # from the future now
            await publish_when_back(publisher, Placed("t", 3))
            await eventually(lambda: len(got) == 4)
    assert gaps == [BusGap(0, "log-reset", position=0)]
    assert got[-1] == (Placed("t", 3), 1)


@pytest.mark.parametrize("mode", MODES)
async def test_a_log_reset_is_reported_even_when_new_publishes_passed_the_readers_cursor(
    mode: Mode, redis_server: Callable[[bool], Awaitable[RedisServer]]
) -> None:
    """Redis restarts empty; before the listener is back, the new counter has gone past its
    cursor. Only the epoch tells the logs apart: streams must not skip ticks 1-3 of the new
    log, pub/sub must not count the gap as if the old counter went on."""
    server = await redis_server(False)
    name = "ssebus-test-epoch"
    after_restart = 5
    with anyio.fail_after(30):
        async with (
            make_bus(mode, name, server.url, publish_timeout=1) as publisher,
            make_bus(mode, name, server.url, reconnect_backoff=(2, 2)) as listener,
        ):
            got, gaps = collect(listener), gaps_of(listener)
            for n in range(3):
                await publisher.publish(Placed("t", n))
            await eventually(lambda: len(got) == 3)
            await server.stop()
            await server.start()
            for n in range(3, 3 + after_restart):
                await publish_when_back(publisher, Placed("t", n))
            assert gaps == []  # the listener is still backing off
            await eventually(lambda: len(gaps) == 1, within=10)
            await publisher.publish(Placed("t", 99))
            await eventually(lambda: got[-1][0] == Placed("t", 99))
            await anyio.sleep(0.1)
    tick = after_restart + 1
    if mode == "streams":  # the new log, read from its start
        assert gaps == [BusGap(0, "log-reset", position=0)]
        new_log = [(Placed("t", n), n - 2) for n in range(3, 3 + after_restart)]
        assert got[3:] == [*new_log, (Placed("t", 99), tick)]
    else:  # no log: all of the new counter was lost
        assert gaps == [BusGap(after_restart, "bus-restarted", position=after_restart)]
        assert got[3:] == [(Placed("t", 99), tick)]
    assert listener.gaps == 1


async def test_a_log_reset_gives_new_ids_so_an_id_of_the_old_log_means_nothing(
    redis_server: Callable[[bool], Awaitable[RedisServer]],
) -> None:
    """Ticks start again at 1 in a new log: an id minted for tick 2 of the old log must not
    resume a client at tick 2 of the new one (it would skip what came before, silently)."""
    server = await redis_server(False)
    with anyio.fail_after(30):
        async with (
            make_bus("streams", "ssebus-test-rekey", server.url, publish_timeout=1) as publisher,
            make_bus(
                "streams", "ssebus-test-rekey", server.url, reconnect_backoff=(0.2, 0.2)
            ) as listener,
        ):
            gaps = gaps_of(listener)
            before = listener.position_secret()
            await server.stop()
            await server.start()
            await publish_when_back(publisher, Placed("t", 1))
            await eventually(lambda: len(gaps) == 1, within=10)
            assert listener.position_secret() != before


# -- retrying a publish (finding 5) ------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_a_publish_that_timed_out_is_delivered_once_when_retried_with_its_key(
    mode: Mode, redis_server: Callable[[bool], Awaitable[RedisServer]]
) -> None:
    server = await redis_server(False)
    name = "ssebus-test-ambiguous"
    with anyio.fail_after(30):
        async with (
            make_bus(mode, name, server.url, publish_timeout=0.5) as publisher,
            make_bus(mode, name, server.url) as listener,
        ):
            got = collect(listener)
            await publisher.publish(Placed("t", 0))  # its connection is open: the next is sent
            await eventually(lambda: len(got) == 1)
            server.freeze()
            try:
                with pytest.raises(BusUnavailableError, match="may or may not") as raised:
                    await publisher.publish(Placed("t", 1))
            finally:
                server.thaw()
            key = raised.value.idempotency_key
            assert key is not None
            assert key in str(raised.value)
            await eventually(lambda: len(got) == 2, within=10)  # it was published after all
            await publish_when_back(publisher, Placed("t", 1), key)
            await publish_when_back(publisher, Placed("t", 2))
            await eventually(lambda: len(got) == 3, within=10)
            await anyio.sleep(0.2)
    assert [event for event, _ in got] == [Placed("t", 0), Placed("t", 1), Placed("t", 2)]


@pytest.mark.parametrize("mode", MODES)
async def test_a_publish_repeated_with_its_idempotency_key_is_delivered_once(
    mode: Mode, names: Callable[[], str]
) -> None:
    name = names()
    with anyio.fail_after(15):
        async with make_bus(mode, name) as bus:
            got = collect(bus)
            await bus.publish(Placed("t", 1), idempotency_key="order-1")
            await bus.publish(Placed("t", 1), idempotency_key="order-1")
            await bus.publish(Placed("t", 2))
            await bus.publish(Placed("t", 2))  # no key given: a new one each time
            await eventually(lambda: len(got) == 3)
            await anyio.sleep(0.1)
    assert got == [(Placed("t", 1), 1), (Placed("t", 2), 2), (Placed("t", 2), 3)]


async def test_publish_to_an_unreachable_redis_says_how_to_retry(names: Callable[[], str]) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    with anyio.fail_after(10):
        async with make_bus("streams", names(), url, startup_timeout=0.1, publish_timeout=1) as bus:
            with pytest.raises(BusUnavailableError, match="cannot publish Placed") as raised:
                await bus.publish(Placed("t", 1), idempotency_key="k-1")
            assert raised.value.idempotency_key == "k-1"
            assert await bus.replay([None], 0, 10) is None  # the client gets a reset


# -- replay (finding 6) ------------------------------------------------------------------


async def test_replay_pages_are_bounded_ordered_by_tick_and_chain(
    names: Callable[[], str],
) -> None:
    name = names()
    tenants = ["a", "b", "b", None, "a", "a", "b", "c", "a", "b"] * 3
    with anyio.fail_after(15):
        async with make_bus("streams", name) as bus:
            for n, tenant in enumerate(tenants):
                await bus.publish(Placed(tenant, n))
            page = await bus.replay(["a", "b"], 0, 4)
            first = [(1, Placed("a", 0)), (2, Placed("b", 1)), (3, Placed("b", 2))]
            assert page == [*first, (5, Placed("a", 4))]
            chained = await replay_all(bus, ["b", "a"], 2, 4)
    wanted = [(n + 1, Placed(t, n)) for n, t in enumerate(tenants) if t in ("a", "b") and n >= 2]
    assert chained == wanted


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    tenants=st.lists(st.sampled_from(["a", "b", None]), min_size=0, max_size=30),
    chosen=st.sets(st.sampled_from(["a", "b", None]), min_size=1),
    limit=st.integers(1, 8),
)
async def test_chained_replay_pages_give_every_event_of_the_partitions_once_at_its_live_tick(
    names: Callable[[], str], tenants: list[str | None], chosen: set[str | None], limit: int
) -> None:
    name = names()
    with anyio.fail_after(15):
        async with make_bus("streams", name) as bus:
            got = collect(bus)
            for n, tenant in enumerate(tenants):
                await bus.publish(Placed(tenant, n))
            await eventually(lambda: len(got) == len(tenants))
            replayed = await replay_all(bus, list(chosen), 0, limit)
    assert replayed == [(tick, event) for event, tick in got if event.tenant in chosen]


async def test_replay_from_the_future_is_not_covered_and_from_the_end_is_empty(
    names: Callable[[], str],
) -> None:
    name = names()
    with anyio.fail_after(15):
        async with make_bus("streams", name) as fresh:
            assert await fresh.replay(["a", None], 0, 100) == []
            assert await fresh.replay(["a", None], 1, 100) is None
            for n in range(3):
                await fresh.publish(Placed("a", n))
            assert await fresh.replay(["a", None], 3, 100) == []
            assert await fresh.replay(["a", None], 4, 100) is None


async def test_pubsub_has_no_replay(names: Callable[[], str]) -> None:
    with anyio.fail_after(15):
        async with make_bus("pubsub", names()) as bus:
            assert await bus.replay([None], 0, 10) is None
