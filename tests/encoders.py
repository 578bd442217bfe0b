"""A frame encoder for tests that keeps every frame it encoded."""

from __future__ import annotations

from ssebus import ServerSentEvent, StandardFrameEncoder


class CountingEncoder:
    """Encodes as ``StandardFrameEncoder`` does and keeps each output, in order."""

    def __init__(self) -> None:
        self.outputs: list[bytes] = []
        self._encoder = StandardFrameEncoder()

    def encode(self, event: ServerSentEvent) -> bytes:
        data = self._encoder.encode(event)
        self.outputs.append(data)
        return data
