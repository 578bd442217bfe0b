"""Admission control: how many connections a broadcaster takes, in all and per key, and a
log of its refusals that stays a few lines however many there are.

A refusal costs a counter and an exception: no traceback, and one WARNING per limit at
the start of a flood, then at most one summary line per ``REPORT_INTERVAL`` while it lasts.
"""

from __future__ import annotations

import logging
import random
import sys
from collections import Counter
from typing import Literal, NoReturn

import anyio
import anyio.abc

from ._exceptions import ConfigurationError, TooManyConnectionsError
from ._metrics import Metric, Metrics
from ._subscription import Subscription

__all__ = ["Admission", "MaxConnections", "connections_for_fd_limit", "open_files_limit"]

logger = logging.getLogger("ssebus")

#: ``max_connections``: a number, None (no limit), or ``"auto"`` (from the fd limit).
MaxConnections = int | None | Literal["auto"]
#: Seconds between two summary lines of a flood of refusals.
REPORT_INTERVAL = 10.0
#: Open files left to the rest of the process whatever the limit: stdio, the event loop,
#: listening sockets, a database or Redis pool, log files.
MIN_HEADROOM = 64
#: ... or a tenth of the limit, if more: the app's other requests in flight, and refused
#: attempts (each an fd until it is answered), grow with the traffic.
HEADROOM_DIVISOR = 10

if sys.platform == "win32":
    _UNLIMITED = -1
else:
    import resource

    _UNLIMITED = resource.RLIM_INFINITY


def open_files_limit() -> int | None:
    """This process's soft ``RLIMIT_NOFILE``; None where there is none (or no ``resource``)."""
    if sys.platform == "win32":
        return None
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft in (resource.RLIM_INFINITY, -1) else soft


def connections_for_fd_limit(limit: int) -> int | None:
    """The default ``max_connections`` at an open-files ``limit``: the limit less a tenth of
    it (at least 64) for everything else the process opens; None when unlimited."""
    if limit < 0 or limit == _UNLIMITED:
        return None
    return max(1, limit - headroom(limit))


def headroom(limit: int) -> int:
    """The open files a default ``max_connections`` leaves to the rest of the process."""
    return max(MIN_HEADROOM, limit // HEADROOM_DIVISOR)


def _limit(setting: str, value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(setting, value, "must be an int >= 1, or None for no limit")
    return value


class Admission:
    """Counts a broadcaster's connections per key and refuses those beyond its limits."""

    def __init__(
        self,
        max_connections: MaxConnections,
        max_per_key: int | None,
        *,
        reconnect_jitter: tuple[int, int],
        metrics: Metrics,
    ) -> None:
        #: The open-files limit the default was derived from (None: given explicitly).
        self.fd_limit: int | None = None
        if max_connections == "auto":
            self.fd_limit = open_files_limit()
            max_connections = (
                None if self.fd_limit is None else connections_for_fd_limit(self.fd_limit)
            )
        self.max_connections = _limit("max_connections", max_connections)
        self.max_per_key = _limit("max_connections_per_key", max_per_key)
        low, high = reconnect_jitter
        self._retry_after = (max(1, round(low / 1000)), max(1, round(high / 1000)))
        self._metrics = metrics
        self._per_key: dict[str, int] = {}
        self._refused: Counter[str] = Counter()  # by limit, since the last line
        self._warned: set[str] = set()  # the limits announced in this flood
        self._reporting = False

    def admit(
        self, subscription: Subscription, active: int, tasks: anyio.abc.TaskGroup
    ) -> str | None:
        """Count in one more connection besides the ``active`` ones; return the key it is
        counted under (give it to :meth:`release`), or raise ``TooManyConnectionsError``."""
        if self.max_connections is not None and active >= self.max_connections:
            self._refuse("max_connections", self.max_connections, None, tasks)
        if self.max_per_key is None:
            return None
        key = subscription.limit_key
        if key is None:
            return None
        held = self._per_key.get(key, 0)
        if held >= self.max_per_key:
            self._refuse("max_connections_per_key", self.max_per_key, key, tasks)
        self._per_key[key] = held + 1
        return key

    def release(self, key: str | None) -> None:
        """A connection counted under ``key`` by :meth:`admit` has ended."""
        if key is None:
            return
        held = self._per_key.pop(key) - 1
        if held:
            self._per_key[key] = held

    def _refuse(
        self, setting: str, limit: int, key: str | None, tasks: anyio.abc.TaskGroup
    ) -> NoReturn:
        self._metrics.add(Metric.CONNECTIONS_REFUSED)
        if setting in self._warned:
            self._refused[setting] += 1
        else:
            self._warned.add(setting)
            logger.warning(self._first_warning(setting, limit))
            if not self._reporting:
                self._reporting = True
                tasks.start_soon(self._report)
        low, high = self._retry_after
        raise TooManyConnectionsError(
            setting, limit, key=key, retry_after=random.randint(low, high)
        )

    def _first_warning(self, setting: str, limit: int) -> str:
        later = f"further refusals are summed up every {REPORT_INTERVAL:g} s"
        if setting == "max_connections_per_key":
            return (
                f"refusing new connections of one key: {setting}={limit:,} reached (503 with "
                f"Retry-After); pass Broadcaster({setting}=...) to allow more per key; {later}"
            )
        if self.fd_limit is not None:
            why = (
                f" (the default: the open-files limit {self.fd_limit:,} less "
                f"{headroom(self.fd_limit):,} for the rest of the app)"
            )
            fix = "raise the open-files limit (ulimit -n; the default follows it) or pass"
        else:
            why, fix = "", "pass a larger"
        return (
            f"refusing new connections: {setting}={limit:,} reached{why}; open streams carry "
            f"on, newcomers get 503 with Retry-After. To take more, {fix} "
            f"Broadcaster({setting}=...); {later}"
        )

    async def _report(self) -> None:
        """Sum up the refusals once per interval until an interval has none."""
        since = anyio.current_time()
        try:
            while True:
                await anyio.sleep(REPORT_INTERVAL)
                if not self._refused:
                    return
                self._summary(anyio.current_time() - since)
                since = anyio.current_time()
        finally:  # also when the broadcaster stops mid-flood
            if self._refused:
                self._summary(anyio.current_time() - since)
            self._warned.clear()
            self._reporting = False

    def _summary(self, seconds: float) -> None:
        limits = {
            "max_connections": self.max_connections,
            "max_connections_per_key": self.max_per_key,
        }
        parts = ", ".join(
            f"{setting}={limits[setting]:,}: {count:,}" for setting, count in self._refused.items()
        )
        total = sum(self._refused.values())
        self._refused.clear()
        logger.warning(
            "refused %s more connections in the last %.0f s (%s)", f"{total:,}", seconds, parts
        )
