"""The frame encoder, checked against the obligations in SSE-WIRE-NOTES.md.

Each numbered obligation of the notes has its own test (``test_obligation_NN_...``) with
the exact bytes expected. The property tests check that every valid ``ServerSentEvent``
reaches a spec-exact parser (``ssebus.testing``) intact, and that every invalid one raises
``InvalidEventError`` before any byte is produced.

httpx-sse 0.4.3 is run on the same bytes through its public path (``EventSource.iter_sse``
over an in-memory ``httpx.Response``: httpx decodes the body, ``SSELineDecoder`` splits
lines on CR, LF and CRLF, ``SSEDecoder`` interprets them). For frames that carry data it
dispatches what the spec says. Where it deviates (each checked by a
``test_httpx_sse_deviation_...`` test against the installed version):

- A blank line dispatches a phantom event with empty data whenever an id was ever seen
  (even an id from an earlier, already dispatched event), or when the block set ``retry``
  or ``event``: so an id-only or retry-only frame, and ``event:`` without ``data:``, reach
  httpx-sse users as events with ``data == ""``. Browsers dispatch nothing.
- A leading BOM is not stripped, so the first line's field name starts with U+FEFF and
  the first event is lost.
- The ``charset`` parameter of ``Content-Type`` is honoured; the spec decodes as UTF-8.
- ``retry`` is parsed with ``int()``: ``-1``, ``+5``, `` 5`` (a second leading space),
  ``1_0`` and non-ASCII digits are taken; the spec accepts ASCII digits only.
- ``retry`` is reported only on the event whose block set it (``None`` on later events);
  the reconnection time it sets persists per spec.

ssebus frames themselves never trigger the BOM, charset and retry deviations (no BOM is
written, the charset is utf-8, retry is a non-negative int); id-only and retry-only
frames do produce httpx-sse phantom events. Comment heartbeats (``encode_comment``) do
not, since they carry no blank line.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from typing import Any, Literal

import httpx
import httpx_sse
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ssebus import (
    InvalidEventError,
    SerializationError,
    ServerSentEvent,
    SseBusError,
    StandardFrameEncoder,
    encode_comment,
    encode_event,
)
from ssebus.testing import ParsedEvent, parse_events

# --- helpers -------------------------------------------------------------------------------

_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def _unchecked(**fields: Any) -> ServerSentEvent:
    """Build an event from values of any type, as untyped callers could."""
    return ServerSentEvent(**fields)


def _as_lf(text: str) -> str:
    return _LINE_BREAK.sub("\n", text)


def _httpx_sse(
    stream: bytes,
    *,
    content_type: str = "text/event-stream",
    chunks: list[bytes] | None = None,
) -> list[httpx_sse.ServerSentEvent]:
    """What httpx-sse yields for ``stream``, decoded the way ``connect_sse`` decodes it."""
    response = httpx.Response(
        200,
        headers={"content-type": content_type},
        content=stream if chunks is None else iter(chunks),
    )
    return list(httpx_sse.EventSource(response).iter_sse())


def _httpx_view(events: list[httpx_sse.ServerSentEvent]) -> list[tuple[str, str, str]]:
    return [(e.event, e.data, e.id) for e in events]


def _spec_view(events: list[ParsedEvent]) -> list[tuple[str, str, str]]:
    return [(e.type, e.data, e.last_event_id) for e in events]


# --- strategies ----------------------------------------------------------------------------

#: Characters that a careless encoder or parser gets wrong, mixed into any Unicode text.
_SURROGATE: tuple[Literal["Cs"]] = ("Cs",)
_TRICKY = " \t\x00:\u2028\u2029\x85\x0b\x0c\ufeff"


def _chars(tricky: str, exclude: str = "") -> st.SearchStrategy[str]:
    """Any character but a lone surrogate (or ``exclude``), often one of ``tricky``."""
    anything = st.characters(exclude_categories=_SURROGATE, exclude_characters=exclude)
    return st.one_of(anything, st.sampled_from(tricky))


any_text = st.text(alphabet=_chars("\r\n" + _TRICKY))
one_line = st.text(alphabet=_chars(_TRICKY, exclude="\r\n"))
ids = st.text(alphabet=_chars(_TRICKY.replace("\x00", ""), exclude="\r\n\x00"))
event_names = st.text(alphabet=_chars(_TRICKY, exclude="\r\n"), min_size=1)
retries = st.integers(min_value=0, max_value=2**64)
line_breaks = st.sampled_from(["\r", "\n", "\r\n"])
lone_surrogates = st.characters(categories=["Cs"])


@st.composite
def valid_events(draw: st.DrawFn, *, with_data: bool = False) -> ServerSentEvent:
    data = draw(any_text) if with_data else draw(st.none() | any_text)
    event = draw(st.none() | event_names) if data is not None else None
    id_ = draw(st.none() | ids)
    retry = draw(st.none() | retries)
    comment = draw(st.none() | any_text)
    if data is None and id_ is None and retry is None and comment is None:
        data = ""
    return ServerSentEvent(data=data, event=event, id=id_, retry=retry, comment=comment)


@st.composite
def text_with(draw: st.DrawFn, inserted: st.SearchStrategy[str], line: bool) -> str:
    """Valid text with one ``inserted`` piece at any position."""
    base = one_line if line else any_text
    return draw(base) + draw(inserted) + draw(base)


# --- the encoder obligations ---------------------------------------------------------------


def test_obligation_01_data_is_split_into_one_data_line_per_line() -> None:
    assert encode_event(ServerSentEvent(data="a\nb")) == b"data: a\ndata: b\n\n"
    assert encode_event(ServerSentEvent(data="a\n\nb")) == b"data: a\ndata: \ndata: b\n\n"


def test_obligation_02_crlf_and_cr_in_data_arrive_as_lf() -> None:
    assert encode_event(ServerSentEvent(data="a\r\nb")) == b"data: a\ndata: b\n\n"
    assert encode_event(ServerSentEvent(data="a\rb")) == b"data: a\ndata: b\n\n"
    # LF CR is two line breaks, CR LF one.
    assert encode_event(ServerSentEvent(data="a\n\rb")) == b"data: a\ndata: \ndata: b\n\n"
    [parsed] = parse_events(encode_event(ServerSentEvent(data="a\r\nb\rc\nd")))
    assert parsed.data == "a\nb\nc\nd"


def test_obligation_03_a_trailing_lf_in_data_survives() -> None:
    frame = encode_event(ServerSentEvent(data="a\n"))
    assert frame == b"data: a\ndata: \n\n"
    assert [e.data for e in parse_events(frame)] == ["a\n"]


def test_obligation_04_empty_data_still_dispatches() -> None:
    frame = encode_event(ServerSentEvent(data=""))
    assert frame == b"data: \n\n"
    assert parse_events(frame) == [ParsedEvent(type="message", data="")]


def test_obligation_05_the_space_after_the_colon_keeps_leading_whitespace() -> None:
    assert encode_event(ServerSentEvent(data=" x")) == b"data:  x\n\n"
    assert encode_event(ServerSentEvent(data="\tx\n y")) == b"data: \tx\ndata:  y\n\n"
    assert encode_event(ServerSentEvent(data="x", id=" 7", event=" e")) == (
        b"id:  7\nevent:  e\ndata: x\n\n"
    )
    assert parse_events(encode_event(ServerSentEvent(data=" x", id=" 7", event=" e"))) == [
        ParsedEvent(type=" e", data=" x", last_event_id=" 7")
    ]


def test_obligation_06_line_like_characters_and_nul_pass_through_data_raw() -> None:
    data = "a\u2028b\x00c\u2029d\x85e\x0bf\x0cg"
    frame = encode_event(ServerSentEvent(data=data))
    assert frame == b"data: " + data.encode() + b"\n\n"
    assert frame == b"data: a\xe2\x80\xa8b\x00c\xe2\x80\xa9d\xc2\x85e\x0bf\x0cg\n\n"
    assert [e.data for e in parse_events(frame)] == [data]


@pytest.mark.parametrize("field", ["event", "id"])
@pytest.mark.parametrize("value", ["a\nb", "a\rb", "a\r\nb", "\n", "a\r"])
def test_obligation_07_line_break_in_event_or_id_is_refused(field: str, value: str) -> None:
    with pytest.raises(InvalidEventError) as caught:
        _unchecked(data="x", **{field: value})
    assert caught.value.field == field
    assert caught.value.value == value


@pytest.mark.parametrize("value", ["\x00", "a\x00", "\x00b", "a\x00b"])
def test_obligation_07_nul_in_id_is_refused(value: str) -> None:
    with pytest.raises(InvalidEventError) as caught:
        ServerSentEvent(data="x", id=value)
    assert caught.value.field == "id"


def test_nul_in_event_name_passes_through() -> None:
    """The spec ignores only an id holding NUL; an event type may hold one."""
    frame = encode_event(ServerSentEvent(data="x", event="a\x00b"))
    assert frame == b"event: a\x00b\ndata: x\n\n"
    assert [e.type for e in parse_events(frame)] == ["a\x00b"]


@pytest.mark.parametrize("value", [True, False, -1, -(2**70), 1.0, 1.5, math.nan, "1000", b"1"])
def test_obligation_08_retry_must_be_a_non_negative_int_not_a_bool(value: object) -> None:
    with pytest.raises(InvalidEventError) as caught:
        _unchecked(data="x", retry=value)
    assert caught.value.field == "retry"


def test_retry_zero_and_large_values_are_written_as_decimal_digits() -> None:
    assert encode_event(ServerSentEvent(retry=0)) == b"retry: 0\n\n"
    assert encode_event(ServerSentEvent(data="x", retry=2**70)) == (
        b"retry: 1180591620717411303424\ndata: x\n\n"
    )


def test_obligation_09_every_comment_line_starts_with_a_colon() -> None:
    assert encode_comment("a\nb") == b": a\n: b\n"
    assert encode_comment("a\r\nb\rc") == b": a\n: b\n: c\n"
    assert encode_comment("") == b": \n"
    assert encode_comment("a\n") == b": a\n: \n"
    assert encode_comment("\n\n") == b": \n: \n: \n"


def test_obligation_09_a_heartbeat_comment_never_ends_an_event() -> None:
    stream = b"data: a\n" + encode_comment("x\n\ny\r\n\r\n") + b"data: b\n\n"
    assert parse_events(stream) == [ParsedEvent(type="message", data="a\nb")]
    assert b"\n\n" not in encode_comment("x\n\ny\r\n\r\n")


def test_obligation_10_an_event_name_without_data_is_refused() -> None:
    with pytest.raises(InvalidEventError) as caught:
        ServerSentEvent(event="update")
    assert caught.value.field == "data"
    with pytest.raises(InvalidEventError) as caught:
        ServerSentEvent(event="update", id="1", retry=5, comment="c")
    assert caught.value.field == "data"


def test_obligation_10_an_id_only_frame_sets_the_last_event_id_without_dispatching() -> None:
    frame = encode_event(ServerSentEvent(id="7"))
    assert frame == b"id: 7\n\n"
    assert parse_events(frame) == []
    assert parse_events(frame + encode_event(ServerSentEvent(data="x"))) == [
        ParsedEvent(type="message", data="x", last_event_id="7")
    ]


@pytest.mark.parametrize("field", ["data", "event", "id", "comment"])
@pytest.mark.parametrize("surrogate", [0xD800, 0xDBFF, 0xDC00, 0xDFFF])
def test_obligation_11_a_lone_surrogate_is_refused(field: str, surrogate: int) -> None:
    fields: dict[str, str] = {"data": "x", field: f"a\u00e9{chr(surrogate)}b"}
    with pytest.raises(InvalidEventError) as caught:
        _unchecked(**fields)
    assert caught.value.field == field
    assert "surrogate" in caught.value.problem


@pytest.mark.parametrize("text", ["\ud800", "ok \udfff", "\u00e9\udc80\n"])
def test_encode_comment_refuses_a_lone_surrogate(text: str) -> None:
    with pytest.raises(InvalidEventError) as caught:
        encode_comment(text)
    assert caught.value.field == "comment"


def test_obligation_12_no_frame_starts_with_a_bom() -> None:
    bom = "\ufeff".encode()
    frames = [
        encode_event(ServerSentEvent(data="\ufeffx")),
        encode_event(ServerSentEvent(data="\ufeff", event="\ufeff", id="\ufeff")),
        encode_event(ServerSentEvent(data="x", comment="\ufeff")),
        encode_comment("\ufeff"),
    ]
    assert not any(frame.startswith(bom) for frame in frames)
    # Written after "data: ", a BOM in the data is data, and the parser keeps it.
    assert [e.data for e in parse_events(frames[0])] == ["\ufeffx"]


@pytest.mark.parametrize("name", ["error", "open", "message"])
def test_obligation_13_event_names_that_collide_with_eventsource_handlers_are_documented(
    name: str,
) -> None:
    """They are legal and written as given; the collision is documented on the class."""
    assert encode_event(ServerSentEvent(data="x", event=name)) == (
        f"event: {name}\ndata: x\n\n".encode()
    )
    doc = ServerSentEvent.__doc__ or ""
    assert f"``{name}``" in doc
    assert "collide" in doc


# --- field order and frame shapes ----------------------------------------------------------


def test_fields_are_written_in_order_comments_id_event_retry_data_blank_line() -> None:
    event = ServerSentEvent(data="d1\nd2", event="e", id="i", retry=3000, comment="c1\nc2")
    assert encode_event(event) == (
        b": c1\n: c2\nid: i\nevent: e\nretry: 3000\ndata: d1\ndata: d2\n\n"
    )


@pytest.mark.parametrize(
    ("event", "frame"),
    [
        (ServerSentEvent(data="x"), b"data: x\n\n"),
        (ServerSentEvent(data="x", id="1"), b"id: 1\ndata: x\n\n"),
        (ServerSentEvent(data="x", event="e"), b"event: e\ndata: x\n\n"),
        (ServerSentEvent(data="x", event="e", id="1"), b"id: 1\nevent: e\ndata: x\n\n"),
        (ServerSentEvent(data="x", retry=5), b"retry: 5\ndata: x\n\n"),
        (ServerSentEvent(data="x", comment="c"), b": c\ndata: x\n\n"),
        (ServerSentEvent(data="x\ny", id="1"), b"id: 1\ndata: x\ndata: y\n\n"),
    ],
)
def test_each_frame_shape_has_the_exact_bytes(event: ServerSentEvent, frame: bytes) -> None:
    assert encode_event(event) == frame


def test_a_comment_only_event_is_written_without_the_blank_line() -> None:
    assert encode_event(ServerSentEvent(comment="ping")) == b": ping\n"
    assert encode_event(ServerSentEvent(comment="a\nb")) == encode_comment("a\nb")


def test_a_comment_with_id_or_retry_ends_with_the_blank_line() -> None:
    assert encode_event(ServerSentEvent(comment="c", id="1")) == b": c\nid: 1\n\n"
    assert encode_event(ServerSentEvent(comment="c", retry=10)) == b": c\nretry: 10\n\n"


def test_a_retry_only_frame_sets_the_reconnection_time_without_dispatching() -> None:
    frame = encode_event(ServerSentEvent(retry=1500))
    assert frame == b"retry: 1500\n\n"
    assert parse_events(frame + b"data: x\n\n") == [
        ParsedEvent(type="message", data="x", retry=1500)
    ]


def test_an_empty_id_is_written_and_resets_the_last_event_id() -> None:
    frame = encode_event(ServerSentEvent(data="b", id=""))
    assert frame == b"id: \ndata: b\n\n"
    stream = encode_event(ServerSentEvent(data="a", id="1")) + frame
    assert [e.last_event_id for e in parse_events(stream)] == ["1", ""]


def test_non_ascii_text_is_written_as_utf8() -> None:
    event = ServerSentEvent(data="\u00e9\u20ac\U0001f600", event="\u00fc", id="\u2026")
    assert encode_event(event) == (
        b"id: \xe2\x80\xa6\nevent: \xc3\xbc\ndata: \xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\n\n"
    )


# --- invalid fields ------------------------------------------------------------------------


def test_an_empty_event_name_is_refused() -> None:
    with pytest.raises(InvalidEventError) as caught:
        ServerSentEvent(data="x", event="")
    assert caught.value.field == "event"


def test_an_entirely_empty_event_is_refused() -> None:
    with pytest.raises(InvalidEventError) as caught:
        ServerSentEvent()
    assert caught.value.field == "data"


@pytest.mark.parametrize("value", [b"bytes", 1, 1.5, {"a": 1}, ["x"], object()])
def test_data_must_be_str(value: object) -> None:
    with pytest.raises(InvalidEventError) as caught:
        _unchecked(data=value)
    assert caught.value.field == "data"
    assert caught.value.value is value


@pytest.mark.parametrize("field", ["event", "id", "comment"])
@pytest.mark.parametrize("value", [b"bytes", 1])
def test_event_id_and_comment_must_be_str(field: str, value: object) -> None:
    with pytest.raises(InvalidEventError) as caught:
        _unchecked(data="x", **{field: value})
    assert caught.value.field == field


def test_invalid_event_error_is_a_value_error_naming_field_and_problem() -> None:
    with pytest.raises(InvalidEventError, match=r"invalid id 'a\\nb': .*line break") as caught:
        ServerSentEvent(data="x", id="a\nb")
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, SseBusError)
    assert caught.value.problem == "must not contain a line break (CR or LF)"


# --- ServerSentEvent.json ------------------------------------------------------------------


def test_json_data_is_compact_and_keeps_non_ascii() -> None:
    event = ServerSentEvent.json({"a": [1, 2], "\u00e9": "\u20ac \u2028"})
    assert event.data == '{"a":[1,2],"\u00e9":"\u20ac \u2028"}'
    assert encode_event(event) == b'data: {"a":[1,2],"\xc3\xa9":"\xe2\x82\xac \xe2\x80\xa8"}\n\n'


def test_json_passes_event_id_and_retry_through() -> None:
    event = ServerSentEvent.json([1], event="tick", id="9", retry=100)
    assert event == ServerSentEvent(data="[1]", event="tick", id="9", retry=100)


@pytest.mark.parametrize("payload", [math.nan, math.inf, -math.inf, {"x": [math.nan]}])
def test_json_refuses_nan_and_infinity(payload: object) -> None:
    with pytest.raises(SerializationError):
        ServerSentEvent.json(payload)


@pytest.mark.parametrize("payload", [object(), {1j}, {(1, 2): "tuple key"}])
def test_json_refuses_unserializable_payloads(payload: object) -> None:
    with pytest.raises(SerializationError) as caught:
        ServerSentEvent.json(payload, event="update")
    assert "'update'" in str(caught.value)
    assert isinstance(caught.value.__cause__, TypeError)


def test_json_refuses_circular_payloads() -> None:
    payload: list[object] = []
    payload.append(payload)
    with pytest.raises(SerializationError):
        ServerSentEvent.json(payload)


def test_json_dumps_may_return_bytes() -> None:
    event = ServerSentEvent.json(
        {"k": "\u00e9"}, dumps=lambda payload: json.dumps(payload, ensure_ascii=False).encode()
    )
    assert event.data == '{"k": "\u00e9"}'


def test_json_dumps_may_return_str_with_line_breaks() -> None:
    event = ServerSentEvent.json({"a": 1}, dumps=lambda payload: json.dumps(payload, indent=1))
    assert encode_event(event) == b'data: {\ndata:  "a": 1\ndata: }\n\n'
    assert [e.data for e in parse_events(encode_event(event))] == ['{\n "a": 1\n}']


def test_json_of_a_lone_surrogate_raises_rather_than_encoding() -> None:
    with pytest.raises(SseBusError):
        encode_event(ServerSentEvent.json("\ud800"))


def test_standard_frame_encoder_encodes_like_encode_event() -> None:
    event = ServerSentEvent(data="a\nb", event="e", id="1", retry=5, comment="c")
    assert StandardFrameEncoder().encode(event) == encode_event(event)
    assert StandardFrameEncoder().encode(ServerSentEvent(comment="hb")) == encode_comment("hb")


# --- properties ----------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(valid_events())
def test_any_valid_event_reaches_the_parser_intact(event: ServerSentEvent) -> None:
    frame = encode_event(event)
    assert frame == StandardFrameEncoder().encode(event)
    if event.data is None:
        assert parse_events(frame) == []
        return
    assert parse_events(frame) == [
        ParsedEvent(
            type=event.event or "message",
            data=_as_lf(event.data),
            last_event_id=event.id or "",
            retry=event.retry,
        )
    ]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(valid_events(), any_text), max_size=8))
def test_concatenated_frames_and_comments_parse_like_each_frame_alone(
    items: list[ServerSentEvent | str],
) -> None:
    """Ids and retry carry over from earlier frames, as the spec says; nothing else does."""
    stream = b""
    expected: list[ParsedEvent] = []
    last_id, retry = "", None
    for item in items:
        if isinstance(item, str):
            frame = encode_comment(item)
            assert parse_events(frame) == []
        else:
            frame = encode_event(item)
            last_id = item.id if item.id is not None else last_id
            retry = item.retry if item.retry is not None else retry
            expected += [
                dataclasses.replace(alone, last_event_id=last_id, retry=retry)
                for alone in parse_events(frame)
            ]
        stream += frame
    assert parse_events(stream) == expected


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["event", "id"]), text_with(line_breaks, line=True))
def test_a_line_break_in_event_or_id_always_raises(field: str, value: str) -> None:
    with pytest.raises(InvalidEventError) as caught:
        encode_event(_unchecked(data="x", **{field: value}))
    assert caught.value.field == field


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["data", "event", "id", "comment"]),
    text_with(lone_surrogates, line=True),
)
def test_a_lone_surrogate_in_any_text_field_always_raises(field: str, value: str) -> None:
    fields = {"data": "x", field: value}
    with pytest.raises(InvalidEventError) as caught:
        encode_event(_unchecked(**fields))
    assert caught.value.field == field
    if field == "comment":
        with pytest.raises(InvalidEventError) as caught:
            encode_comment(value)
        assert caught.value.field == "comment"


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        st.integers(max_value=-1),
        st.booleans(),
        st.floats(),
        st.text(),
        st.binary(),
    )
)
def test_an_invalid_retry_always_raises(retry: object) -> None:
    with pytest.raises(InvalidEventError) as caught:
        encode_event(_unchecked(data="x", retry=retry))
    assert caught.value.field == "retry"


# --- httpx-sse -----------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(valid_events(with_data=True), any_text), max_size=6), st.data())
def test_httpx_sse_yields_the_spec_events_for_frames_with_data(
    items: list[ServerSentEvent | str], data: st.DataObject
) -> None:
    stream = b"".join(
        encode_comment(item) if isinstance(item, str) else encode_event(item) for item in items
    )
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=4)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    expected = _spec_view(parse_events(stream))
    assert _httpx_view(_httpx_sse(stream)) == expected
    assert _httpx_view(_httpx_sse(stream, chunks=chunks)) == expected


def test_httpx_sse_yields_ssebus_heartbeats_as_nothing() -> None:
    stream = (
        encode_event(ServerSentEvent(data="a", id="1"))
        + encode_comment("ping")
        + encode_comment("")
        + encode_event(ServerSentEvent(data="b", event="e"))
    )
    assert _httpx_view(_httpx_sse(stream)) == [("message", "a", "1"), ("e", "b", "1")]


def test_httpx_sse_deviation_id_only_frame_dispatches_a_phantom_event() -> None:
    stream = encode_event(ServerSentEvent(id="7"))
    assert parse_events(stream) == []
    assert _httpx_view(_httpx_sse(stream)) == [("message", "", "7")]


def test_httpx_sse_deviation_blank_line_after_any_id_dispatches_a_phantom_event() -> None:
    """A third-party ``:\\n\\n`` heartbeat after an event with an id looks like an event."""
    stream = b"id: 1\ndata: a\n\n:\n\n"
    assert _spec_view(parse_events(stream)) == [("message", "a", "1")]
    assert _httpx_view(_httpx_sse(stream)) == [("message", "a", "1"), ("message", "", "1")]


def test_httpx_sse_deviation_comment_frame_with_id_dispatches_a_phantom_event() -> None:
    stream = encode_event(ServerSentEvent(comment="resume point", id="42"))
    assert stream == b": resume point\nid: 42\n\n"
    assert parse_events(stream) == []
    assert _httpx_view(_httpx_sse(stream)) == [("message", "", "42")]


def test_httpx_sse_deviation_retry_only_frame_dispatches_a_phantom_event() -> None:
    stream = encode_event(ServerSentEvent(retry=5000))
    assert parse_events(stream) == []
    [phantom] = _httpx_sse(stream)
    assert (phantom.event, phantom.data, phantom.retry) == ("message", "", 5000)


def test_httpx_sse_deviation_event_without_data_is_dispatched() -> None:
    """ssebus refuses to build such a frame; other servers send it."""
    stream = b"event: update\n\n"
    assert parse_events(stream) == []
    assert _httpx_view(_httpx_sse(stream)) == [("update", "", "")]


def test_httpx_sse_deviation_leading_bom_is_not_stripped() -> None:
    stream = b"\xef\xbb\xbfdata: first\n\ndata: second\n\n"
    assert [e.data for e in parse_events(stream)] == ["first", "second"]
    assert [e.data for e in _httpx_sse(stream)] == ["second"]


def test_httpx_sse_deviation_charset_parameter_is_honoured() -> None:
    stream = b"data: ok\xe2\x80\xa6\n\n"
    assert [e.data for e in parse_events(stream)] == ["ok\u2026"]
    assert [e.data for e in _httpx_sse(stream)] == ["ok\u2026"]
    latin = _httpx_sse(stream, content_type="text/event-stream; charset=windows-1252")
    assert [e.data for e in latin] == ["ok\u00e2\u20ac\u00a6"]


@pytest.mark.parametrize(
    ("value", "httpx_retry"),
    [(b"-1", -1), (b"+5", 5), (b"  5", 5), (b"1_0", 10), ("\u0663".encode(), 3)],
)
def test_httpx_sse_deviation_retry_is_parsed_with_int(value: bytes, httpx_retry: int) -> None:
    """The spec accepts ASCII digits only; anything else leaves the retry unchanged."""
    stream = b"retry:" + value + b"\ndata: x\n\n"
    assert [e.retry for e in parse_events(stream)] == [None]
    assert [e.retry for e in _httpx_sse(stream)] == [httpx_retry]


def test_httpx_sse_deviation_retry_is_reported_only_on_the_block_that_set_it() -> None:
    stream = encode_event(ServerSentEvent(data="a", retry=5)) + encode_event(
        ServerSentEvent(data="b")
    )
    assert [e.retry for e in parse_events(stream)] == [5, 5]
    assert [e.retry for e in _httpx_sse(stream)] == [5, None]
