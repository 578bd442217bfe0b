"""The frame encoder: ``ServerSentEvent`` -> the UTF-8 bytes of one frame. Pure, no I/O."""

from __future__ import annotations

from ._event import ServerSentEvent

__all__ = ["StandardFrameEncoder", "encode_comment", "encode_event"]


def _lf(text: str) -> str:
    # CR and CRLF end lines too; as the format has one separator, they arrive as LF.
    return text.replace("\r\n", "\n").replace("\r", "\n") if "\r" in text else text


def _comment_lines(text: str) -> str:
    # Every line gets its own ":" so a comment can never end an event with a blank line.
    return ": " + _lf(text).replace("\n", "\n: ") + "\n"


def _data_lines(data: str) -> str:
    return "data: " + _lf(data).replace("\n", "\ndata: ") + "\n"


def encode_event(event: ServerSentEvent) -> bytes:
    """Encode ``event`` as one complete frame, terminated by a blank line.

    A frame holding only a comment is written without the blank line, like
    :func:`encode_comment`, so it never dispatches anything.
    """
    data = event.data
    # Fast path: the shape of nearly every broadcast (id, event, one-line data).
    if (
        data is not None
        and event.comment is None
        and event.retry is None
        and "\n" not in data
        and "\r" not in data
    ):
        if event.id is not None:
            if event.event is not None:
                return f"id: {event.id}\nevent: {event.event}\ndata: {data}\n\n".encode()
            return f"id: {event.id}\ndata: {data}\n\n".encode()
        if event.event is not None:
            return f"event: {event.event}\ndata: {data}\n\n".encode()
        return f"data: {data}\n\n".encode()

    parts: list[str] = []
    if event.comment is not None:
        parts.append(_comment_lines(event.comment))
        if data is None and event.id is None and event.retry is None:
            return parts[0].encode()
    if event.id is not None:
        parts.append(f"id: {event.id}\n")
    if event.event is not None:
        parts.append(f"event: {event.event}\n")
    if event.retry is not None:
        parts.append(f"retry: {event.retry}\n")
    if data is not None:
        parts.append(_data_lines(data))
    parts.append("\n")
    return "".join(parts).encode()


def encode_comment(text: str) -> bytes:
    """Encode ``text`` as comment lines, which clients ignore (heartbeats, padding)."""
    if isinstance(text, str) and text.isascii():
        return _comment_lines(text).encode()
    return encode_event(ServerSentEvent(comment=text))


class StandardFrameEncoder:
    """The default :class:`~ssebus.FrameEncoder`: :func:`encode_event`."""

    __slots__ = ()

    def encode(self, event: ServerSentEvent) -> bytes:
        """Encode one event as a complete frame."""
        return encode_event(event)
