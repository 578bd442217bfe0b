"""``SequentialIdGenerator``: event ids, unique and increasing, prefixed per process.

The rules: ids are ``<prefix>-1``, ``<prefix>-2``, ... from one counter, unique and
increasing however many threads and tasks ask; the default prefix is the creation time
(base 36 milliseconds), so generators created at different times never share ids;
``instance=`` names the process in front; a prefix that would break an ``id:`` line
(CR, LF, NUL) is refused.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import anyio
import anyio.lowlevel
import pytest

import ssebus._ids
from ssebus import ConfigurationError, EventIdGenerator, SequentialIdGenerator

pytestmark = pytest.mark.anyio


def counter(event_id: str, generator: SequentialIdGenerator) -> int:
    """The sequence number of ``event_id``, checking it carries the generator's prefix."""
    head = f"{generator.prefix}-" if generator.prefix else ""
    assert event_id.startswith(head)
    number = event_id[len(head) :]
    assert number.isdigit()
    return int(number)


def base36(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        number, digit = divmod(number, 36)
        out = digits[digit] + out
        if not number:
            return out


def test_sequential_id_generator_satisfies_the_event_id_generator_protocol() -> None:
    assert isinstance(SequentialIdGenerator(), EventIdGenerator)


def test_ids_count_up_from_one_behind_the_prefix() -> None:
    generator = SequentialIdGenerator(prefix="p")
    assert [generator.next_id() for _ in range(3)] == ["p-1", "p-2", "p-3"]


def test_an_empty_prefix_gives_bare_numbers() -> None:
    generator = SequentialIdGenerator(prefix="")
    assert [generator.next_id() for _ in range(3)] == ["1", "2", "3"]


def test_ids_are_unique_and_increasing_across_threads() -> None:
    generator = SequentialIdGenerator()
    threads, per_thread = 8, 2000

    def take() -> list[str]:
        return [generator.next_id() for _ in range(per_thread)]

    with ThreadPoolExecutor(max_workers=threads) as pool:
        results = [f.result() for f in [pool.submit(take) for _ in range(threads)]]
    numbers_per_thread = [[counter(i, generator) for i in result] for result in results]
    for numbers in numbers_per_thread:
        assert numbers == sorted(numbers)
        assert len(set(numbers)) == len(numbers)
    every = [n for numbers in numbers_per_thread for n in numbers]
    assert sorted(every) == list(range(1, threads * per_thread + 1))


async def test_ids_are_unique_and_increasing_across_tasks() -> None:
    generator = SequentialIdGenerator()
    issued: list[str] = []  # in the order the ids were handed out

    async def take(count: int) -> None:
        for _ in range(count):
            issued.append(generator.next_id())
            await anyio.lowlevel.checkpoint()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tasks:
            for _ in range(20):
                tasks.start_soon(take, 50)
    numbers = [counter(i, generator) for i in issued]
    assert numbers == list(range(1, 20 * 50 + 1))


def test_the_default_prefix_is_the_creation_time_in_base36_milliseconds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now_ns = 1_700_000_000_123_456_789
    monkeypatch.setattr(ssebus._ids, "time", SimpleNamespace(time_ns=lambda: now_ns))
    generator = SequentialIdGenerator()
    assert generator.prefix == base36(now_ns // 1_000_000)
    assert generator.next_id() == f"{base36(now_ns // 1_000_000)}-1"


def test_generators_created_at_different_times_give_different_ids(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [1_700_000_000_000_000_000]
    monkeypatch.setattr(ssebus._ids, "time", SimpleNamespace(time_ns=lambda: clock[0]))
    earlier = SequentialIdGenerator()
    clock[0] += 1_000_000  # one millisecond later, e.g. the restarted process
    later = SequentialIdGenerator()
    assert earlier.prefix != later.prefix
    earlier_ids = {earlier.next_id() for _ in range(100)}
    later_ids = {later.next_id() for _ in range(100)}
    assert earlier_ids.isdisjoint(later_ids)


def test_generators_created_a_few_milliseconds_apart_have_different_prefixes() -> None:
    earlier = SequentialIdGenerator()
    time.sleep(0.003)
    later = SequentialIdGenerator()
    assert earlier.prefix != later.prefix
    assert earlier.next_id() != later.next_id()


def test_instance_appears_in_front_of_the_epoch() -> None:
    generator = SequentialIdGenerator(instance="web-1")
    event_id = generator.next_id()
    assert event_id.startswith("web-1.")
    assert generator.prefix.startswith("web-1.")
    epoch = generator.prefix.removeprefix("web-1.")
    assert epoch
    assert epoch.isalnum()
    assert event_id == f"web-1.{epoch}-1"


def test_instances_with_different_names_never_share_ids() -> None:
    a = SequentialIdGenerator(instance="web-1")
    b = SequentialIdGenerator(instance="web-2")
    assert {a.next_id() for _ in range(10)}.isdisjoint({b.next_id() for _ in range(10)})


def test_instance_and_prefix_together_are_refused_naming_instance() -> None:
    with pytest.raises(ConfigurationError, match="instance") as caught:
        SequentialIdGenerator(instance="web-1", prefix="p")
    assert caught.value.setting == "instance"


@pytest.mark.parametrize("char", ["\r", "\n", "\x00"])
def test_a_prefix_with_cr_lf_or_nul_is_refused_naming_prefix(char: str) -> None:
    with pytest.raises(ConfigurationError, match="prefix") as caught:
        SequentialIdGenerator(prefix=f"web{char}1")
    assert caught.value.setting == "prefix"


@pytest.mark.parametrize("char", ["\r", "\n", "\x00"])
def test_an_instance_with_cr_lf_or_nul_is_refused(char: str) -> None:
    with pytest.raises(ConfigurationError):
        SequentialIdGenerator(instance=f"web{char}1")
