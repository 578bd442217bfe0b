"""Positions and the SSE ids that carry them.

Every frame has a *tick*: its place in one total order (this process's counter, or the
bus's log position). Clients never see a tick: the ``id:`` they get is a token that
encrypts the tick for one *view* (a tenant, or None for events without one), so an id
reveals neither how many events there were nor another tenant's traffic, and an id minted
for one tenant means nothing to another. A token is deterministic (the same tick gives the
same id on every instance sharing the secret) and authenticated (a forged, foreign or
earlier-process id decodes to None, and the client gets a ``reset``).
"""

from __future__ import annotations

from base64 import urlsafe_b64decode, urlsafe_b64encode
from binascii import Error as Base64Error
from collections.abc import Iterable
from hashlib import blake2b

__all__ = ["PositionCodec"]

_TAG = 6
_TICK = 8
_MAX_TICK = (1 << 64) - 1


class PositionCodec:
    """Turns ``(view, tick)`` into an opaque SSE id and back, keyed by ``secret``."""

    __slots__ = ("_secret",)

    def __init__(self, secret: bytes) -> None:
        if not 16 <= len(secret) <= 64:
            raise ValueError("the position secret must be 16 to 64 bytes")
        self._secret = secret

    def token(self, view: str | None, tick: int) -> str:
        """The id a client of ``view`` is given for position ``tick``."""
        context = _context(view)
        plain = tick.to_bytes(_TICK, "big")
        tag = blake2b(context + plain, key=self._secret, digest_size=_TAG).digest()
        mask = self._mask(context, tag)
        cipher = (tick ^ mask).to_bytes(_TICK, "big")
        return urlsafe_b64encode(tag + cipher).rstrip(b"=").decode("ascii")

    def tick(self, views: Iterable[str | None], token: str) -> int | None:
        """The tick ``token`` stands for, if it was minted for one of ``views``; else None."""
        try:
            raw = urlsafe_b64decode(token.encode("ascii") + b"=" * (-len(token) % 4))
        except (UnicodeEncodeError, Base64Error, ValueError):
            return None
        if len(raw) != _TAG + _TICK or urlsafe_b64encode(raw).rstrip(b"=") != token.encode():
            return None  # only the canonical spelling: one position, one id
        tag, cipher = raw[:_TAG], int.from_bytes(raw[_TAG:], "big")
        for view in views:
            context = _context(view)
            tick = cipher ^ self._mask(context, tag)
            expected = blake2b(
                context + tick.to_bytes(_TICK, "big"), key=self._secret, digest_size=_TAG
            ).digest()
            if expected == tag:
                return tick
        return None

    def _mask(self, context: bytes, tag: bytes) -> int:
        digest = blake2b(context + tag, key=self._secret, digest_size=_TICK, person=b"mask")
        return int.from_bytes(digest.digest(), "big") & _MAX_TICK


def _context(view: str | None) -> bytes:
    return b"\x00" if view is None else b"\x01" + view.encode("utf-8", "surrogatepass")
