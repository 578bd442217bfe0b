"""Event ids: sequential per process, behind a prefix that tells processes apart."""

from __future__ import annotations

import threading
import time

from ._exceptions import ConfigurationError

__all__ = ["SequentialIdGenerator"]

_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


def _base36(number: int) -> str:
    out = ""
    while True:
        number, digit = divmod(number, 36)
        out = _DIGITS[digit] + out
        if not number:
            return out


def _epoch() -> str:
    return _base36(time.time_ns() // 1_000_000)


class SequentialIdGenerator:
    """Ids ``<prefix>-1``, ``<prefix>-2``, ... from one counter, safe across threads and tasks.

    The default prefix is this process's start time in base 36, so an id from an earlier
    process is recognisably foreign and a reconnecting client gets a reset, not wrong events.
    Pass ``instance`` to put a name in front (``web-1.lz3k9f2-7``), or ``prefix=""`` for bare
    numbers (only safe when nothing outlives the process).
    """

    def __init__(self, *, instance: str | None = None, prefix: str | None = None) -> None:
        if prefix is None:
            prefix = _epoch() if instance is None else f"{instance}.{_epoch()}"
        elif instance is not None:
            raise ConfigurationError("instance", instance, "give either instance or prefix")
        for char in ("\r", "\n", "\x00"):
            if char in prefix:
                raise ConfigurationError("prefix", prefix, "must not contain CR, LF or NUL")
        self.prefix = prefix
        self._head = f"{prefix}-" if prefix else ""
        self._count = 0
        self._lock = threading.Lock()

    def next_id(self) -> str:
        """Return the next id."""
        with self._lock:
            self._count += 1
            count = self._count
        return f"{self._head}{count}"
