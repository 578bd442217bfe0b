"""``InMemoryHistory``: the recent frames a reconnecting client is replayed from.

The rules:

* Frames are kept by *partition*: the frame's tenant, None for tenant-less frames. Each
  partition keeps its newest ``max_events`` frames, so one tenant's burst never shortens
  another's resume window; ``max_total`` bounds all partitions together, taking frames
  from the largest partition first; a frame older than ``max_age`` seconds is forgotten.
* ``since(partitions, after, limit)`` returns up to ``limit`` frames of those partitions
  with a tick after ``after``, merged in tick order (chained on the last tick, pages give
  the whole run) - or None when a frame it should return may have been dropped: trimmed
  past ``after`` by any of the rules, or ``after`` before ``start(position)``.
* ``start(position)`` forgets everything and covers only what comes after ``position``.
* A frame without a tick is refused; bad settings are refused, naming the setting.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ssebus._history
from ssebus import ConfigurationError, Frame, InMemoryHistory, InvalidArgumentError

pytestmark = pytest.mark.anyio

PARTITIONS: list[str | None] = [None, "acme", "globex", "initech"]


def frame(tick: int, tenant: str | None = None) -> Frame:
    return Frame(f"t-{tick}", "order-created", f"data: {tick}\n\n".encode(), tenant, tick=tick)


def ticks(frames: Sequence[Frame] | None) -> list[int | None]:
    assert frames is not None
    return [f.tick for f in frames]


def filled(ticks_and_tenants: Sequence[tuple[int, str | None]], **options: int) -> InMemoryHistory:
    history = InMemoryHistory(**options)
    for tick, tenant in ticks_and_tenants:
        history.append(frame(tick, tenant))
    return history


class FakeClock:
    """Stands in for ``time.monotonic`` inside ``ssebus._history`` only."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(ssebus._history, "time", SimpleNamespace(monotonic=fake.monotonic))
    return fake


# --- since ---------------------------------------------------------------------------------


async def test_since_returns_the_frames_after_the_tick_oldest_first() -> None:
    history = filled([(n, None) for n in range(1, 6)])
    assert ticks(await history.since([None], 2, 100)) == [3, 4, 5]
    assert ticks(await history.since([None], 1, 100)) == [2, 3, 4, 5]
    assert ticks(await history.since([None], 0, 100)) == [1, 2, 3, 4, 5]


async def test_since_returns_the_very_frames_appended() -> None:
    history = InMemoryHistory()
    first, second = frame(1), frame(2)
    history.append(first)
    history.append(second)
    replay = await history.since([None], 1, 100)
    assert replay is not None
    assert replay[0] is second


async def test_since_the_newest_tick_or_later_is_empty() -> None:
    history = filled([(n, None) for n in range(1, 4)])
    assert await history.since([None], 3, 100) == []
    assert await history.since([None], 99, 100) == []
    assert await InMemoryHistory().since([None], 0, 100) == []


async def test_ticks_need_not_be_contiguous() -> None:
    """Ticks of other tenants, unmapped and ephemeral events leave holes in a partition."""
    history = filled([(3, None), (10, None), (11, None), (40, None)])
    assert ticks(await history.since([None], 5, 100)) == [10, 11, 40]
    assert ticks(await history.since([None], 10, 100)) == [11, 40]


async def test_since_returns_at_most_limit_frames_and_pages_chain_on_the_last_tick() -> None:
    history = filled([(n, None) for n in range(1, 8)])
    assert ticks(await history.since([None], 0, 3)) == [1, 2, 3]
    assert ticks(await history.since([None], 3, 3)) == [4, 5, 6]
    assert ticks(await history.since([None], 6, 3)) == [7]
    assert await history.since([None], 7, 3) == []
    assert await history.since([None], 0, 0) == []


async def test_since_gives_only_the_partitions_asked_for_merged_in_tick_order() -> None:
    history = filled(
        [(1, "acme"), (2, None), (3, "globex"), (4, "acme"), (5, "acme"), (6, None), (7, "globex")]
    )
    assert ticks(await history.since(["acme", None], 0, 100)) == [1, 2, 4, 5, 6]
    assert ticks(await history.since(["globex", None], 1, 100)) == [2, 3, 6, 7]
    assert ticks(await history.since(["acme"], 1, 100)) == [4, 5]
    assert ticks(await history.since([None], 0, 100)) == [2, 6]
    assert ticks(await history.since(["acme", None], 1, 3)) == [2, 4, 5]
    assert ticks(await history.since(["initech"], 0, 100)) == []
    assert ticks(await history.since(["initech", None], 0, 100)) == [2, 6]


async def test_frames_are_kept_under_their_tenant_not_their_topics() -> None:
    history = InMemoryHistory()
    tagged = Frame("t-1", None, b"data: 1\n\n", "acme", frozenset({"orders"}), tick=1)
    history.append(tagged)
    assert await history.since(["acme"], 0, 100) == [tagged]
    assert await history.since([None], 0, 100) == []


# --- start ---------------------------------------------------------------------------------


async def test_start_forgets_everything_and_covers_only_after_its_position() -> None:
    history = filled([(1, None), (2, "acme"), (3, None)])
    history.start(10)
    assert len(history) == 0
    assert await history.since([None], 3, 100) is None
    assert await history.since(["acme", None], 9, 100) is None
    assert await history.since(["globex"], 0, 100) is None
    assert await history.since([None], 10, 100) == []
    history.append(frame(11))
    history.append(frame(12, "acme"))
    assert ticks(await history.since(["acme", None], 10, 100)) == [11, 12]
    assert await history.since(["acme", None], 9, 100) is None


async def test_start_at_zero_covers_everything_from_the_first_frame() -> None:
    history = InMemoryHistory()
    history.start(0)
    history.append(frame(1))
    assert ticks(await history.since([None], 0, 100)) == [1]


# --- max_events ----------------------------------------------------------------------------


async def test_max_events_keeps_only_the_newest_frames_of_a_partition() -> None:
    history = filled([(n, None) for n in range(1, 8)], max_events=3)
    assert len(history) == 3
    assert await history.since([None], 3, 100) is None
    assert ticks(await history.since([None], 4, 100)) == [5, 6, 7]
    assert ticks(await history.since([None], 5, 100)) == [6, 7]
    assert await history.since([None], 7, 100) == []


async def test_max_events_one_keeps_only_the_newest_frame() -> None:
    history = filled([(n, None) for n in range(1, 4)], max_events=1)
    assert len(history) == 1
    assert await history.since([None], 1, 100) is None
    assert ticks(await history.since([None], 2, 100)) == [3]
    assert await history.since([None], 3, 100) == []


async def test_max_events_zero_keeps_nothing_but_knows_the_newest_tick() -> None:
    history = filled([(1, None), (2, "acme")], max_events=0)
    assert len(history) == 0
    assert await history.since([None], 1, 100) is None
    assert await history.since(["acme"], 1, 100) is None
    assert await history.since(["acme", None], 2, 100) == []


async def test_max_events_is_per_partition_so_a_burst_never_trims_another_tenant() -> None:
    """Issue 11, #2: tenant A's 5,000 events leave tenant B's 2 missed events in place."""
    history = InMemoryHistory()  # the default: 1,000 per partition
    history.append(frame(1, "globex"))
    history.append(frame(2, "globex"))
    for tick in range(3, 5003):
        history.append(frame(tick, "acme"))
    history.append(frame(5003))
    assert ticks(await history.since(["globex", None], 0, 100)) == [1, 2, 5003]
    assert await history.since(["acme", None], 0, 100) is None
    assert ticks(await history.since(["acme"], 4002, 2)) == [4003, 4004]
    assert len(history) == 2 + 1000 + 1


async def test_the_partition_ring_keeps_working_across_many_wraps() -> None:
    history = InMemoryHistory(max_events=4)
    for n in range(1, 101):
        history.append(frame(n))
        kept = list(range(max(1, n - 3), n + 1))
        assert len(history) == len(kept)
        assert ticks(await history.since([None], kept[0] - 1, 100)) == kept
        if n > 4:
            assert await history.since([None], n - 5, 100) is None


# --- max_total -----------------------------------------------------------------------------


async def test_max_total_takes_frames_from_the_largest_partition_first() -> None:
    history = filled(
        [(1, "acme"), (2, "acme"), (3, "acme"), (4, "acme"), (5, "acme"), (6, "globex")],
        max_total=6,
    )
    history.append(frame(7, "globex"))  # 7 > 6: acme, the largest, gives its oldest
    history.append(frame(8))  # and again
    assert len(history) == 6
    assert await history.since(["acme"], 0, 100) is None
    assert ticks(await history.since(["acme"], 2, 100)) == [3, 4, 5]
    assert ticks(await history.since(["globex", None], 0, 100)) == [6, 7, 8]


async def test_max_total_bounds_memory_while_every_partition_stays_resumable() -> None:
    history = InMemoryHistory(max_events=100, max_total=10)
    tenants = ["acme"] * 50 + ["globex"] * 3 + ["acme"] * 50 + ["initech"] * 2
    for tick, tenant in enumerate(tenants, start=1):
        history.append(frame(tick, tenant))
        assert len(history) <= 10
    assert len(history) == 10
    assert ticks(await history.since(["globex"], 50, 100)) == [51, 52, 53]
    assert ticks(await history.since(["initech"], 103, 100)) == [104, 105]
    assert ticks(await history.since(["acme"], 98, 100)) == [99, 100, 101, 102, 103]


async def test_a_partition_emptied_by_max_total_is_not_covered_before_what_it_lost() -> None:
    history = filled([(1, "acme"), (2, "globex"), (3, "initech")], max_total=2)
    assert len(history) == 2
    # The sizes tie at 1: one of the three gave its only frame, and only that one says so.
    first_tick = {"acme": 1, "globex": 2, "initech": 3}
    answers = {key: await history.since([key], 0, 100) for key in first_tick}
    lost = [key for key, answer in answers.items() if answer is None]
    assert len(lost) == 1
    for key, answer in answers.items():
        if key not in lost:
            assert ticks(answer) == [first_tick[key]]
    assert await history.since(lost, first_tick[lost[0]], 100) == []


async def test_max_total_zero_keeps_nothing() -> None:
    history = filled([(1, None)], max_total=0)
    assert len(history) == 0
    assert await history.since([None], 0, 100) is None
    assert await history.since([None], 1, 100) == []


async def test_max_total_still_takes_from_the_largest_partition_after_expiry(
    clock: FakeClock,
) -> None:
    """A burst that partly expired is still the largest partition: a quiet tenant's few
    frames are not the ones cut to make room."""
    history = InMemoryHistory(max_events=100, max_age=10, max_total=45)
    for tick in range(1, 41):
        history.append(frame(tick, "acme"))
    clock.now += 5
    for tick in range(41, 81):
        history.append(frame(tick, "acme"))
    clock.now += 6  # acme's first 40 are now too old
    assert ticks(await history.since(["acme"], 40, 100)) == list(range(41, 81))
    for tick in range(81, 87):
        history.append(frame(tick, "globex"))  # 46 > 45: acme (40) must give one
    assert ticks(await history.since(["globex"], 80, 100)) == list(range(81, 87))
    assert await history.since(["acme"], 40, 100) is None


# --- max_age -------------------------------------------------------------------------------


async def test_frames_older_than_max_age_are_forgotten(clock: FakeClock) -> None:
    history = InMemoryHistory(max_age=10)
    history.append(frame(1))
    clock.now += 6
    history.append(frame(2))
    history.append(frame(3))
    clock.now += 5  # frame 1 is 11 s old, frames 2 and 3 are 5 s old
    assert await history.since([None], 0, 100) is None
    assert ticks(await history.since([None], 1, 100)) == [2, 3]
    assert ticks(await history.since([None], 2, 100)) == [3]
    assert len(history) == 2


async def test_a_client_that_saw_the_newest_frame_resumes_after_everything_expired(
    clock: FakeClock,
) -> None:
    history = filled([(n, "acme") for n in range(1, 4)], max_age=1)
    clock.now += 3600
    assert await history.since(["acme"], 3, 100) == []
    assert await history.since(["acme"], 2, 100) is None
    assert len(history) == 0
    history.append(frame(4, "acme"))
    assert ticks(await history.since(["acme"], 3, 100)) == [4]


async def test_max_age_applies_to_every_partition_asked_for(clock: FakeClock) -> None:
    history = InMemoryHistory(max_age=10)
    history.append(frame(1, "acme"))
    clock.now += 6
    history.append(frame(2))
    clock.now += 5  # acme's frame is 11 s old, the tenant-less one 5 s
    assert ticks(await history.since([None], 0, 100)) == [2]
    assert await history.since(["acme", None], 0, 100) is None
    assert ticks(await history.since(["acme", None], 1, 100)) == [2]


async def test_max_age_and_max_events_both_apply(clock: FakeClock) -> None:
    history = InMemoryHistory(max_events=3, max_age=10)
    for n in range(1, 6):
        history.append(frame(n))
        clock.now += 4
    # Ages now: 3 is 12 s, 4 is 8 s, 5 is 4 s old (1 and 2 fell out of the ring).
    assert await history.since([None], 1, 100) is None
    assert await history.since([None], 2, 100) is None
    assert ticks(await history.since([None], 3, 100)) == [4, 5]


# --- the paging property -------------------------------------------------------------------


@dataclass(frozen=True)
class Append:
    tenant: str | None
    gap: int  # how far its tick is past the previous one
    wait: float  # seconds on the clock before it


@dataclass(frozen=True)
class Start:
    gap: int


operations = st.lists(
    st.one_of(
        st.builds(
            Append,
            st.sampled_from(PARTITIONS),
            st.integers(1, 3),
            st.sampled_from([0.0, 0.0, 1.0, 2.5]),
        ),
        st.builds(Start, st.integers(0, 3)),
    ),
    max_size=40,
)


@settings(
    max_examples=300,
    deadline=None,
    # The fixtures hold nothing an example changes: the clock is set by each example.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    max_events=st.integers(0, 6),
    max_total=st.integers(0, 12),
    max_age=st.one_of(st.none(), st.sampled_from([1.0, 3.0, 10.0])),
    ops=operations,
    asked=st.sets(st.sampled_from(PARTITIONS), min_size=1),
    after=st.integers(-1, 120),
    k=st.integers(1, 5),
)
async def test_pages_chained_on_the_last_tick_give_exactly_the_frames_after_it(
    clock: FakeClock,
    max_events: int,
    max_total: int,
    max_age: float | None,
    ops: list[Append | Start],
    asked: set[str | None],
    after: int,
    k: int,
) -> None:
    """Whenever the history answers, the answer is complete: paging by ``k`` from any tick
    gives every frame of the partitions asked for after it, in tick order, once each."""
    clock.now = 1000.0
    history = InMemoryHistory(max_events, max_age=max_age, max_total=max_total)
    appended: list[Frame] = []  # since the last start
    tick = 0
    for op in ops:
        if isinstance(op, Start):
            tick += op.gap
            history.start(tick)
            appended.clear()
        else:
            clock.now += op.wait
            tick += op.gap
            appended.append(frame(tick, op.tenant))
            history.append(appended[-1])
        assert 0 <= len(history) <= min(max_total, max_events * len(PARTITIONS))
    after = min(after, tick + 1)
    expected = [f for f in appended if f.tenant in asked and f.tick is not None and f.tick > after]

    got = await page_through(history, asked, after, k)
    if got is not None:
        assert got == expected
        assert all(x is y for x, y in zip(got, expected, strict=True))


async def page_through(
    history: InMemoryHistory, partitions: Collection[str | None], after: int, k: int
) -> list[Frame] | None:
    """Every page of ``k`` from ``after``, as a replay reads them; None if one is None."""
    frames: list[Frame] = []
    while True:
        page = await history.since(partitions, after, k)
        if page is None:
            return None
        assert len(page) <= k
        frames += page
        if len(page) < k:
            return frames
        last = page[-1].tick
        assert last is not None
        after = last


@settings(max_examples=200, deadline=None)
@given(
    tenants=st.lists(st.sampled_from(PARTITIONS), max_size=30),
    asked=st.sets(st.sampled_from(PARTITIONS), min_size=1),
    k=st.integers(1, 7),
)
async def test_a_history_that_dropped_nothing_always_answers(
    tenants: list[str | None], asked: set[str | None], k: int
) -> None:
    """The property above is not vacuous: within its bounds the history never says None."""
    history = filled([(n, tenant) for n, tenant in enumerate(tenants, start=1)])
    for after in range(len(tenants) + 1):
        got = await page_through(history, asked, after, k)
        assert got is not None
        assert ticks(got) == [n for n, t in enumerate(tenants, start=1) if t in asked and n > after]


# --- refusals ------------------------------------------------------------------------------


async def test_a_frame_without_a_tick_is_refused() -> None:
    history = InMemoryHistory()
    with pytest.raises(InvalidArgumentError):
        history.append(Frame(None, None, b": ping\n"))
    with pytest.raises(InvalidArgumentError):
        history.append(Frame("some-id", "notice", b"id: some-id\ndata: x\n\n"))
    assert len(history) == 0


@pytest.mark.parametrize("setting", ["max_events", "max_total"])
@pytest.mark.parametrize("value", [-1, 1.5, "10", True, None])
async def test_a_bad_size_is_refused_naming_it(setting: str, value: object) -> None:
    with pytest.raises(ConfigurationError, match=setting) as caught:
        InMemoryHistory(**{setting: value})  # type: ignore[arg-type]
    assert caught.value.setting == setting


@pytest.mark.parametrize("max_age", [0, -1, -0.001])
async def test_a_non_positive_max_age_is_refused_naming_it(max_age: float) -> None:
    with pytest.raises(ConfigurationError, match="max_age") as caught:
        InMemoryHistory(max_age=max_age)
    assert caught.value.setting == "max_age"
