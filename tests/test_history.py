"""``InMemoryHistory``: the recent frames a reconnecting client is replayed from.

The rules: at most ``max_events`` frames are kept (the oldest go first); a frame older than
``max_age`` seconds is forgotten, except the newest, which always stays so a client that
saw it can resume; ``since(id)`` returns the frames after ``id`` (empty for the newest) or
None when ``id`` is unknown or was forgotten; bad settings are refused, naming the setting.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

import ssebus._history
from ssebus import ConfigurationError, EventHistory, Frame, InMemoryHistory

pytestmark = pytest.mark.anyio


def frame(number: int) -> Frame:
    return Frame(f"p-{number}", "order-created", f"id: p-{number}\ndata: {number}\n\n".encode())


def ids(frames: object) -> list[str | None]:
    assert isinstance(frames, list)
    return [f.id for f in frames]


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


async def test_in_memory_history_satisfies_the_event_history_protocol() -> None:
    assert isinstance(InMemoryHistory(), EventHistory)


async def test_since_returns_the_frames_after_the_id_oldest_first() -> None:
    history = InMemoryHistory()
    frames = [frame(n) for n in range(1, 6)]
    for f in frames:
        history.append(f)
    assert await history.since("p-2") == frames[2:]
    assert await history.since("p-1") == frames[1:]


async def test_since_returns_the_very_frames_appended() -> None:
    history = InMemoryHistory()
    first, second = frame(1), frame(2)
    history.append(first)
    history.append(second)
    replay = await history.since("p-1")
    assert replay is not None
    assert replay[0] is second


async def test_since_the_newest_id_is_empty() -> None:
    history = InMemoryHistory()
    for n in range(1, 4):
        history.append(frame(n))
    assert await history.since("p-3") == []


async def test_since_an_unknown_id_is_none() -> None:
    history = InMemoryHistory()
    history.append(frame(1))
    assert await history.since("p-99") is None
    assert await history.since("") is None
    assert await InMemoryHistory().since("p-1") is None


async def test_max_events_keeps_only_the_newest_frames() -> None:
    history = InMemoryHistory(max_events=3)
    for n in range(1, 8):
        history.append(frame(n))
    assert len(history) == 3
    assert await history.since("p-4") is None
    assert ids(await history.since("p-5")) == ["p-6", "p-7"]
    assert await history.since("p-7") == []


async def test_max_events_one_keeps_only_the_newest_frame() -> None:
    history = InMemoryHistory(max_events=1)
    for n in range(1, 4):
        history.append(frame(n))
    assert len(history) == 1
    assert await history.since("p-2") is None
    assert await history.since("p-3") == []


async def test_max_events_zero_keeps_nothing() -> None:
    history = InMemoryHistory(max_events=0)
    history.append(frame(1))
    assert len(history) == 0
    assert await history.since("p-1") is None


async def test_the_ring_keeps_working_across_many_wraps() -> None:
    history = InMemoryHistory(max_events=4)
    for n in range(1, 101):
        history.append(frame(n))
        kept = list(range(max(1, n - 3), n + 1))
        assert len(history) == len(kept)
        assert ids(await history.since(f"p-{kept[0]}")) == [f"p-{k}" for k in kept[1:]]
        if n > 4:
            assert await history.since(f"p-{n - 4}") is None


async def test_frames_older_than_max_age_are_forgotten(clock: FakeClock) -> None:
    history = InMemoryHistory(max_age=10)
    history.append(frame(1))
    clock.now += 6
    history.append(frame(2))
    history.append(frame(3))
    clock.now += 5  # frame 1 is 11 s old, frames 2 and 3 are 5 s old
    assert await history.since("p-1") is None
    assert ids(await history.since("p-2")) == ["p-3"]
    assert len(history) == 2


async def test_max_age_always_keeps_the_newest_frame(clock: FakeClock) -> None:
    history = InMemoryHistory(max_age=1)
    for n in range(1, 4):
        history.append(frame(n))
    clock.now += 3600
    assert len(history) == 1
    assert await history.since("p-3") == []
    assert await history.since("p-2") is None


async def test_max_age_and_max_events_both_apply(clock: FakeClock) -> None:
    history = InMemoryHistory(max_events=3, max_age=10)
    for n in range(1, 6):
        history.append(frame(n))
        clock.now += 4
    # Ages now: p-3 12 s, p-4 8 s, p-5 4 s (p-1 and p-2 fell out of the ring).
    assert await history.since("p-2") is None
    assert await history.since("p-3") is None
    assert ids(await history.since("p-4")) == ["p-5"]


async def test_a_frame_without_id_is_refused() -> None:
    history = InMemoryHistory()
    with pytest.raises(ConfigurationError):
        history.append(Frame(None, None, b": ping\n"))


async def test_appending_a_repeated_id_never_breaks_the_ring() -> None:
    """``Broadcaster.broadcast`` accepts a caller's id, so the same id can come twice."""
    history = InMemoryHistory(max_events=2)
    history.append(Frame("same", None, b"id: same\ndata: a\n\n"))
    history.append(Frame("same", None, b"id: same\ndata: b\n\n"))
    for n in range(1, 4):
        history.append(frame(n))  # each append evicts the oldest frame
    assert len(history) == 2
    assert ids(await history.since("p-2")) == ["p-3"]
    assert await history.since("same") is None


async def test_a_repeated_id_resumes_after_its_newest_copy() -> None:
    history = InMemoryHistory(max_events=3)
    history.append(Frame("same", None, b"id: same\ndata: a\n\n"))
    history.append(frame(1))
    history.append(Frame("same", None, b"id: same\ndata: b\n\n"))
    history.append(frame(2))  # evicts the older copy of "same"
    assert ids(await history.since("same")) == ["p-2"]
    history.append(frame(3))
    history.append(frame(4))  # evicts the newer copy too
    assert await history.since("same") is None
    assert ids(await history.since("p-3")) == ["p-4"]


@pytest.mark.parametrize("max_events", [-1, 1.5, "10", True, None])
async def test_a_bad_max_events_is_refused_naming_it(max_events: object) -> None:
    with pytest.raises(ConfigurationError, match="max_events") as caught:
        InMemoryHistory(max_events)  # type: ignore[arg-type]
    assert caught.value.setting == "max_events"


@pytest.mark.parametrize("max_age", [0, -1, -0.001])
async def test_a_non_positive_max_age_is_refused_naming_it(max_age: float) -> None:
    with pytest.raises(ConfigurationError, match="max_age") as caught:
        InMemoryHistory(max_age=max_age)
    assert caught.value.setting == "max_age"
