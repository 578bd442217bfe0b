"""Replay pacing: every replay of one broadcaster shares one budget of work per loop turn.

Replay work (decoding a Redis entry, rendering it, picking a client's frames) is CPU in
the event loop that also serves the app's other requests, so it runs at a lower priority
than they do. Rules:

1. One replay at a time does replay work in an event loop: the *holder* of the
   broadcaster's :class:`Pacer` for that loop (one per thread: a server's thread workers
   each run a loop of their own). The others wait their turn, first come first served.
2. The holder works for at most ``budget`` seconds (``time.perf_counter``), checking
   :meth:`Share.due` between two items, and then calls :meth:`Share.turn`, which passes the
   slice to the next replay waiting (or keeps it, if none waits).
3. Between the end of one slice and the start of the next, by any replay, the event loop
   runs at least one whole turn with no replay work in it: a request that arrived on a
   socket while a slice ran is polled at the end of that turn and runs in the next one,
   ahead of any replay. So a request waits behind at most one slice, however many clients
   resume at once, and 20 resumes take about as long as 20 resumes in a row.
4. A replay that awaits something else (a Redis round trip, a client's write) first gives
   its slice up (:meth:`Share.release`); so does one that ends or is cancelled.

The replay's :class:`Share` is in a context variable while its catch-up runs, so that a
bus's ``replay`` (``ssebus.redis``) paces its decoding without a parameter of its own;
called outside a replay, :func:`current` gives a share of a pacer of its own.
"""

from __future__ import annotations

from collections import deque
from contextvars import ContextVar
from time import perf_counter

import anyio
import anyio.lowlevel

__all__ = ["SLICE", "Pacer", "Share", "current", "sharing"]

#: Seconds of replay work between two loop turns left to other work.
SLICE = 0.0001


class Pacer:
    """One broadcaster's replay budget: one slice of ``budget`` seconds at a time."""

    __slots__ = ("_holder", "_waiting", "budget", "slices")

    def __init__(self, budget: float = SLICE) -> None:
        self.budget = budget
        self._holder: Share | None = None
        self._waiting: deque[tuple[Share, anyio.Event]] = deque()
        #: Slices granted so far (for tests and curiosity).
        self.slices = 0

    def share(self) -> Share:
        """A new replay's share of this pacer."""
        return Share(self)

    @property
    def holder(self) -> Share | None:
        """The share whose slice it is (None: nobody's)."""
        return self._holder

    def _pass_on(self) -> None:
        """Rule 2: the slice goes to the replay that has waited longest, or to nobody."""
        self._holder = None
        if self._waiting:
            share, granted = self._waiting.popleft()
            self._holder = share
            granted.set()  # it runs from the next turn, and works from the one after


class Share:
    """One replay's claim on its broadcaster's :class:`Pacer`."""

    __slots__ = ("_deadline", "pacer")

    def __init__(self, pacer: Pacer) -> None:
        self.pacer = pacer
        self._deadline = 0.0

    def due(self) -> bool:
        """True when this replay must call :meth:`turn` before its next item of work: it
        does not hold the slice, or its budget is spent."""
        return self.pacer._holder is not self or perf_counter() >= self._deadline

    async def turn(self) -> None:
        """Give up the slice, if held, and wait for the next one (rules 1-3)."""
        pacer = self.pacer
        if pacer._holder is self:
            pacer._pass_on()
        if pacer._holder is None:
            pacer._holder = self
            try:
                # Rule 3: this turn may have had replay work (ours), the next one has none.
                await anyio.lowlevel.checkpoint()
            except BaseException:
                self.release()
                raise
        else:
            granted = anyio.Event()
            pacer._waiting.append((self, granted))
            try:
                await granted.wait()  # we are woken in the turn after the grant
            except BaseException:
                if pacer._holder is self:
                    pacer._pass_on()
                else:
                    pacer._waiting = deque(w for w in pacer._waiting if w[0] is not self)
                raise
        try:
            # The turn after the slice that ended (ours or another's) has no replay work.
            await anyio.lowlevel.checkpoint()
        except BaseException:
            self.release()
            raise
        pacer.slices += 1
        self._deadline = perf_counter() + pacer.budget

    def release(self) -> None:
        """Rule 4: give the slice up before awaiting anything else (harmless if not held)."""
        if self.pacer._holder is self:
            self.pacer._pass_on()


_current: ContextVar[Share | None] = ContextVar("ssebus_replay_share", default=None)


def current() -> Share:
    """The share of the replay running in this task, or one of a pacer of its own."""
    share = _current.get()
    return share if share is not None else Pacer().share()


class sharing:
    """``with sharing(share):`` makes ``share`` the :func:`current` one, and gives its
    slice up on the way out."""

    __slots__ = ("_share", "_token")

    def __init__(self, share: Share) -> None:
        self._share = share

    def __enter__(self) -> Share:
        self._token = _current.set(self._share)
        return self._share

    def __exit__(self, *exc: object) -> None:
        _current.reset(self._token)
        self._share.release()
