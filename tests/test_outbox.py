"""``Outbox``: one connection's bounded queue. Its bounds in frames and bytes hold whatever
is put in, and the writer takes frames back in order, in writes of bounded size."""

from __future__ import annotations

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st
from tenants import Noted, noted_events

from ssebus import Broadcaster, InMemoryEventBus
from ssebus._outbox import Outbox, OutboxFull

frames = st.lists(
    st.tuples(st.booleans(), st.binary(min_size=1, max_size=300)), max_size=60
)  # (is a control frame, its bytes)


@given(queued=frames, max_write=st.integers(1, 1_000))
def test_takes_give_back_every_frame_in_order_in_writes_of_at_most_max_write(
    queued: list[tuple[bool, bytes]], max_write: int
) -> None:
    outbox = Outbox(max_frames=10_000, max_bytes=1 << 30)
    for control, data in queued:
        if control:
            outbox.put_control(data)
        else:
            outbox.put_nowait(data)
    taken: list[bytes] = []
    events = 0
    while len(outbox):
        batch, count = outbox.take(max_write)
        assert batch
        assert len(batch) == 1 or sum(map(len, batch)) <= max_write
        taken.extend(bytes(data) for data in batch)
        events += count
    assert taken == [data for _, data in queued]
    assert events == sum(not control for control, _ in queued)
    assert outbox.room_bytes == outbox.max_bytes  # all the room is back
    assert outbox.controls == 0


@given(sizes=st.lists(st.integers(1, 500), min_size=1, max_size=50))
def test_the_byte_bound_holds_and_an_empty_outbox_takes_any_one_frame(sizes: list[int]) -> None:
    outbox = Outbox(max_frames=1_000, max_bytes=1_000)
    queued = 0
    for size in sizes:
        data = b"x" * size
        if queued and queued + size > 1_000:
            with pytest.raises(OutboxFull):
                outbox.put_nowait(data)
        else:
            outbox.put_nowait(data)
            queued += size
    assert queued <= 1_000 or len(outbox) == 1
    outbox.take(1 << 20)
    outbox.put_nowait(b"y" * 5_000)  # bigger than the bound, but the outbox is empty
    assert len(outbox) == 1


def test_the_frame_bound_holds_and_control_frames_pass_it() -> None:
    outbox = Outbox(max_frames=3, max_bytes=1 << 20)
    for _ in range(3):
        outbox.put_nowait(b"data: x\n\n")
    with pytest.raises(OutboxFull):
        outbox.put_nowait(b"data: x\n\n")
    outbox.put_control(b": ping\n\n")  # a ping still goes in
    assert outbox.take(1 << 20)[1] == 3


@pytest.mark.anyio
async def test_a_backlog_reaches_the_client_in_writes_of_at_most_max_write_bytes() -> None:
    writes: list[bytes] = []

    async def write(data: bytes) -> None:
        writes.append(data)

    async with (
        InMemoryEventBus() as bus,
        Broadcaster(bus, noted_events(), heartbeat=None, max_write_bytes=1_000) as broadcaster,
    ):
        async with broadcaster.connect() as connection:
            for n in range(100):  # queued before the writer starts: one backlog
                await bus.publish(Noted(n))
            with anyio.move_on_after(0.2):
                await connection.run(write)
    assert len(writes) > 1
    assert all(len(data) <= 1_000 for data in writes)
    assert b"".join(writes).count(b"event: noted\n") == 100
