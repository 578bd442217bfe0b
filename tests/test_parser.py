"""``ssebus.testing``'s parser against the web-platform-tests ``eventsource/format-*`` vectors.

Each wpt test opens an ``EventSource`` on a server resource; the bytes that resource serves
are written out here literally, with the events the wpt test expects. Most use
``resources/message.py``, which serves ``message + newline + b"\\n"`` where ``newline`` is
``b"\\n\\n"`` unless the test passes ``newline=none`` (then ``b""``); the others use
``resources/last-event-id.py`` and ``resources/last-event-id2.py``. The vectors were read
from the wpt sources (web-platform-tests/wpt ``eventsource/``; where only the older ``.htm``
form of a test was indexed there, the current ``.any.js`` / ``.window.js`` form was read
from the wpt copy vendored in nodejs/node ``test/fixtures/wpt/eventsource/``, and
``message.py`` from the copy in servo/servo; wpt's older ``message.php`` serves the same).

Where a wpt test checks reconnection (``retry`` timing, ``Last-Event-ID`` on the next
request) the parser's part is checked: the reconnection time and last event id it reports.

The rest of the file covers what the vectors leave implicit: chunk boundaries anywhere,
invalid UTF-8, end of stream, the last event id and ``retry`` rules.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ssebus.testing import EventStreamParser, ParsedEvent, parse_events


def _message(data: str, last_event_id: str = "", retry: int | None = None) -> ParsedEvent:
    return ParsedEvent(type="message", data=data, last_event_id=last_event_id, retry=retry)


def _feed_in_chunks(chunks: list[bytes]) -> tuple[list[ParsedEvent], EventStreamParser]:
    parser = EventStreamParser()
    events: list[ParsedEvent] = []
    for chunk in chunks:
        events += parser.feed(chunk)
    assert parser.close() == []
    return events, parser


# --- web-platform-tests eventsource/format-* -----------------------------------------------


def test_wpt_bom_only_one_leading_bom_is_stripped() -> None:
    """wpt format-bom.any.js (resources/message.py): a BOM later in the stream is text."""
    stream = b"\xef\xbb\xbfdata:1\n\n\xef\xbb\xbfdata:2\n\ndata:3\n\n\n"
    assert parse_events(stream) == [_message("1"), _message("3")]


def test_wpt_bom_2_a_second_bom_is_part_of_the_first_field_name() -> None:
    """wpt format-bom-2.any.js / format-bom-2.htm (resources/message.py): double BOM."""
    stream = b"\xef\xbb\xbf\xef\xbb\xbfdata:1\n\ndata:2\n\ndata:3\n\n\n"
    assert parse_events(stream) == [_message("2"), _message("3")]


def test_wpt_comments_are_ignored_whatever_line_ending_follows_them() -> None:
    """wpt format-comments.any.js (resources/message.py, newline=none): comment fest."""
    longstring = b"x" * 2048
    stream = (
        b"data:1\r:\x00\n:\r\ndata:2\n:"
        + longstring
        + b"\rdata:3\n:data:fail\r:"
        + longstring
        + b"\ndata:4\n"
        + b"\n"
    )
    assert parse_events(stream) == [_message("1\n2\n3\n4")]


def test_wpt_data_before_final_empty_line_an_unterminated_block_is_discarded() -> None:
    """wpt format-data-before-final-empty-line.any.js (resources/message.py, newline=none).

    The second block never gets its blank line, so neither its data nor its id is used:
    the reconnect sends no Last-Event-ID and the same first event arrives again.
    """
    stream = b"retry:1000\ndata:test1\n\nid:test\ndata:test2\n"
    parser = EventStreamParser()
    assert parser.feed(stream) == [_message("test1", retry=1000)]
    assert parser.close() == []
    assert parser.last_event_id == ""
    assert parser.retry == 1000


def test_wpt_field_data_empty_and_colonless_data_lines() -> None:
    """wpt format-field-data.any.js (resources/message.py): data field parsing."""
    stream = b"data:\n\ndata\ndata\n\ndata:test\n\n\n"
    assert parse_events(stream) == [_message(""), _message("\n"), _message("test")]


def test_wpt_field_event_empty_means_message() -> None:
    """wpt format-field-event-empty.any.js / .htm (resources/message.py): empty "event"."""
    stream = b"event: \ndata:data\n\n\n"
    assert parse_events(stream) == [_message("data")]


def test_wpt_field_event_sets_the_type_of_one_event_only() -> None:
    """wpt format-field-event.any.js / .htm (resources/message.py): custom event name."""
    stream = b"event:test\ndata:x\n\ndata:x\n\n\n"
    assert parse_events(stream) == [ParsedEvent(type="test", data="x"), _message("x")]


def test_wpt_field_id_is_the_last_event_id_and_what_a_reconnect_sends() -> None:
    """wpt format-field-id.any.js / .htm (resources/last-event-id.py): Last-Event-ID.

    The first response sets the id U+2026; the reconnect sends it as ``Last-Event-ID``
    and the resource echoes it as data. (The wpt test also expects ``lastEventId`` to
    stay U+2026 on the second connection: that is ``EventSource`` state kept across
    connections, not part of parsing one stream.)
    """
    first = EventStreamParser()
    assert first.feed(b"id: \xe2\x80\xa6\nretry: 200\ndata: hello\n\n") == [
        _message("hello", "\u2026", retry=200)
    ]
    first.close()
    header = first.last_event_id.encode()
    assert header == b"\xe2\x80\xa6"
    assert parse_events(b"data: " + header + b"\n\n") == [_message("\u2026")]


def test_wpt_field_id_2_the_last_event_id_survives_each_reconnect() -> None:
    """wpt format-field-id-2.any.js / .htm (resources/last-event-id.py): two reconnects.

    The echoed responses carry no id field, so the id from the first connection is the
    one ``EventSource`` keeps sending.
    """
    first = EventStreamParser()
    received = first.feed(b"id: \xe2\x80\xa6\nretry: 200\ndata: hello\n\n")
    first.close()
    header = first.last_event_id.encode()
    for _reconnect in range(2):
        echo = EventStreamParser()
        received += echo.feed(b"data: " + header + b"\n\n")
        echo.close()
        assert echo.last_event_id == ""
    assert [e.data for e in received] == ["hello", "\u2026", "\u2026"]


def test_wpt_field_id_3_the_last_event_id_persists_until_changed() -> None:
    """wpt format-field-id-3.window.js (resources/last-event-id2.py?type=1)."""
    stream = b"id: 1\ndata: 1\n\ndata: 2\n\nid: 2\ndata:3\n\ndata:4\n\n"
    assert parse_events(stream) == [
        _message("1", "1"),
        _message("2", "1"),
        _message("3", "2"),
        _message("4", "2"),
    ]


@pytest.mark.parametrize(
    "stream",
    [
        pytest.param(b"id: 1\ndata: 1\n\nid:\ndata:2\n\ndata:3\n\n", id="type=2 empty id"),
        pytest.param(b"id: 1\ndata: 1\n\nid\ndata:2\n\ndata:3\n\n", id="type=3 id without colon"),
    ],
)
def test_wpt_field_id_3_an_empty_id_resets_the_last_event_id(stream: bytes) -> None:
    """wpt format-field-id-3.window.js (resources/last-event-id2.py?type=2 and type=3)."""
    assert parse_events(stream) == [_message("1", "1"), _message("2", ""), _message("3", "")]


@pytest.mark.parametrize("id_value", [b"\x00\x00", b"x\x00", b"\x00x", b"x\x00x", b" \x00"])
def test_wpt_field_id_null_an_id_containing_nul_is_ignored(id_value: bytes) -> None:
    """wpt format-field-id-null.window.js (resources/last-event-id.py?idvalue=...).

    The id is ignored, so the reconnect sends no ``Last-Event-ID`` and gets the same
    response again: ``hello`` with an empty ``lastEventId`` both times.
    """
    parser = EventStreamParser()
    stream = b"id: " + id_value + b"\nretry: 200\ndata: hello\n\n"
    assert parser.feed(stream) == [_message("hello", "", retry=200)]
    parser.close()
    assert parser.last_event_id == ""


def test_wpt_field_parsing_names_are_exact_and_one_space_is_stripped() -> None:
    """wpt format-field-parsing.any.js (resources/message.py, newline=none): field parsing."""
    stream = (
        b"data:\x00\ndata:  2\rData:1\ndata\x00:2\ndata:1\r\x00data:4\nda-ta:3\rdata_5\n"
        b"data:3\rdata:\r\n data:32\ndata:4\n"
        b"\n"
    )
    assert parse_events(stream) == [_message("\x00\n 2\n1\n3\n\n4")]


def test_wpt_field_retry_bogus_a_non_digit_retry_is_ignored() -> None:
    """wpt format-field-retry-bogus.any.js (resources/message.py): reconnect after 3000 ms."""
    parser = EventStreamParser()
    assert parser.feed(b"retry:3000\nretry:1000x\ndata:x\n\n\n") == [_message("x", retry=3000)]
    assert parser.retry == 3000


def test_wpt_field_retry_empty_is_ignored() -> None:
    """wpt format-field-retry-empty.any.js (resources/message.py): empty retry field."""
    parser = EventStreamParser()
    assert parser.feed(b"retry\ndata:test\n\n\n") == [_message("test")]
    assert parser.retry is None


def test_wpt_field_retry_is_decimal_even_with_a_leading_zero() -> None:
    """wpt format-field-retry.any.js / .htm (resources/message.py): "03000" is 3000 ms."""
    parser = EventStreamParser()
    assert parser.feed(b"retry:03000\ndata:x\n\n\n") == [_message("x", retry=3000)]
    assert parser.retry == 3000


def test_wpt_field_unknown_fields_and_bare_text_lines_are_ignored() -> None:
    """wpt format-field-unknown.any.js (resources/message.py): unknown fields."""
    stream = (
        b"data:test\n data\ndata\nfoobar:xxx\njustsometext\n:thisisacommentyay\ndata:test\n\n\n"
    )
    assert parse_events(stream) == [_message("test\n\ntest")]


def test_wpt_leading_space_only_one_space_is_stripped_and_tabs_are_kept() -> None:
    """wpt format-leading-space.any.js (resources/message.py); also a lone CR line end."""
    stream = b"data:\ttest\rdata: \ndata:test\n\n\n"
    assert parse_events(stream) == [_message("\ttest\n\ntest")]


@pytest.mark.parametrize("mime", ["x bogus", "text/x-bogus"])
def test_wpt_mime_bogus_is_not_the_parsers_concern(mime: str) -> None:
    """wpt format-mime-bogus.any.js, format-mime-valid-bogus.any.js (resources/message.py).

    With ``Content-Type: {mime}`` ``EventSource`` fails the connection before parsing and
    fires no message. The parser only sees a body, which is the default message: checking
    the content type is up to the HTTP client that hands the body over.
    """
    assert parse_events(b"data: data\n\n\n") == [_message("data")]


def test_wpt_newlines_crlf_lf_and_cr_all_end_lines() -> None:
    """wpt format-newlines.any.js (resources/message.py, newline=none): newline fest."""
    stream = b"data:test\r\ndata\ndata:test\r\n\r" + b"\n"
    assert parse_events(stream) == [_message("test\n\ntest")]


def test_wpt_null_character_in_data_is_kept() -> None:
    """wpt format-null-character.any.js / .html (resources/message.py)."""
    assert parse_events(b"data:\x00\n\n\n\n") == [_message("\x00")]


def test_wpt_utf_8_the_stream_is_utf8_whatever_the_charset() -> None:
    """wpt format-utf-8.any.js / .htm (resources/message.py, charset=windows-1252)."""
    assert parse_events(b"data:ok\xe2\x80\xa6\n\n\n") == [_message("ok\u2026")]


def test_wpt_event_data_lines_and_data_parsing() -> None:
    """wpt event-data.any.js (resources/message2.py), fed in the writes the resource makes."""
    writes = [
        b"data:msg",
        b"\n",
        b"data: msg",
        b"\n\n",
        b":",
        b"\n",
        b"falsefield:msg",
        b"\n\n",
        b"falsefield:msg",
        b"\n",
        b"Data:data",
        b"\n\n",
        b"data",
        b"\n\n",
        b"data:end",
        b"\n\n",
    ]
    events, _ = _feed_in_chunks(writes)
    assert events == [_message("msg\nmsg"), _message(""), _message("end")]


# --- chunk boundaries ----------------------------------------------------------------------

#: Bytes that stress a parser: multi-byte characters, BOMs, NUL, invalid or truncated UTF-8.
_VALUE_PIECES = st.sampled_from(
    [
        b"x",
        b"7",
        b" ",
        b":",
        b"\x00",
        b"\xef\xbb\xbf",
        "\u00e9".encode(),
        "\u20ac".encode(),
        "\U0001f600".encode(),
        "\u2028".encode(),
        b"\xff",
        b"\xc3",
        b"\xe2\x82",
        b"\xf0\x9f\x98",
        b"\xed\xa0\x80",
    ]
)
_NAMES = st.sampled_from([b"data", b"id", b"event", b"retry", b"", b"Data", b"\xef\xbb\xbfdata"])
_LINE_ENDS = st.sampled_from([b"\n", b"\r", b"\r\n"])


@st.composite
def _lines(draw: st.DrawFn) -> bytes:
    """One line: a field (or comment), an optional colon and space, a value, a line end."""
    name = draw(_NAMES)
    colon = draw(st.sampled_from([b":", b": ", b""]))
    value = b"".join(draw(st.lists(st.one_of(_VALUE_PIECES, st.binary(max_size=2)), max_size=5)))
    return name + colon + value + draw(_LINE_ENDS)


_STREAMS = st.lists(st.one_of(_lines(), _LINE_ENDS, st.binary(max_size=3)), max_size=15).map(
    b"".join
)


def _chunks(stream: bytes, sizes: list[int]) -> list[bytes]:
    """``stream`` cut into chunks of ``sizes`` bytes, repeated until it runs out."""
    chunks: list[bytes] = []
    for size in itertools.cycle(sizes if any(sizes) else [1]):
        if not stream:
            return chunks
        chunks.append(stream[:size])
        stream = stream[size:]
    raise AssertionError("unreachable")


@settings(max_examples=200, deadline=None)
@given(_STREAMS, st.lists(st.integers(0, 5), min_size=1, max_size=12))
def test_any_split_of_any_byte_stream_gives_the_same_events(
    stream: bytes, sizes: list[int]
) -> None:
    """Chunks of 0 to 5 bytes, so most byte pairs (CR LF, UTF-8 sequences) get split."""
    whole = EventStreamParser()
    expected = whole.feed(stream)
    whole.close()
    events, parser = _feed_in_chunks(_chunks(stream, sizes))
    assert events == expected
    assert parser.last_event_id == whole.last_event_id
    assert parser.retry == whole.retry


@settings(max_examples=100, deadline=None)
@given(_STREAMS)
def test_one_byte_at_a_time_gives_the_same_events(stream: bytes) -> None:
    events, _ = _feed_in_chunks([stream[i : i + 1] for i in range(len(stream))])
    assert events == parse_events(stream)


@pytest.mark.parametrize(
    "chunks",
    [
        [b"data: a\r", b"\ndata: b\r\n\r\n"],
        [b"data: a\r\ndata: b\r\n\r", b"\n"],
        [b"data: a\r", b"\n", b"data: b\r", b"\n\r", b"\n"],
        [b"data: a\r", b"", b"\ndata: b\r\n\r\n"],
    ],
)
def test_crlf_split_between_cr_and_lf_is_one_line_end(chunks: list[bytes]) -> None:
    events, _ = _feed_in_chunks(chunks)
    assert events == [_message("a\nb")]


def test_cr_at_a_chunk_end_followed_by_cr_is_two_line_ends() -> None:
    parser = EventStreamParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\rdata: b\r") == [_message("a")]
    assert parser.feed(b"\r") == [_message("b")]


def test_cr_alone_ends_the_event_without_waiting_for_the_next_chunk() -> None:
    parser = EventStreamParser()
    assert parser.feed(b"data: a\r\r") == [_message("a")]


def test_cr_at_a_chunk_end_then_a_partial_character_skips_only_an_lf() -> None:
    """After ``data: a\\r`` comes the line ``\u20ac`` (an unknown field), then a blank line."""
    parser = EventStreamParser()
    assert parser.feed(b"data: a\r\xe2") == []
    assert parser.feed(b"\x82\xac\n") == []
    assert parser.feed(b"\n") == [_message("a")]


@pytest.mark.parametrize("cut", range(1, 4))
def test_a_multibyte_character_split_across_chunks_is_decoded_whole(cut: int) -> None:
    stream = b"data: \xf0\x9f\x98\x80\n\n"
    at = len(b"data: ") + cut
    events, _ = _feed_in_chunks([stream[:at], stream[at:]])
    assert events == [_message("\U0001f600")]


@pytest.mark.parametrize("cut", range(1, 3))
def test_a_bom_split_across_chunks_is_still_stripped(cut: int) -> None:
    events, _ = _feed_in_chunks([b"\xef\xbb\xbf"[:cut], b"\xef\xbb\xbf"[cut:] + b"data:1\n\n"])
    assert events == [_message("1")]


def test_a_bom_after_an_empty_first_chunk_is_still_stripped() -> None:
    events, _ = _feed_in_chunks([b"", b"\xef\xbb\xbfdata:1\n\n"])
    assert events == [_message("1")]


def test_a_bom_in_a_later_chunk_is_not_stripped() -> None:
    events, _ = _feed_in_chunks([b"data:1\n\n", b"\xef\xbb\xbfdata:2\n\n", b"data:3\n\n"])
    assert events == [_message("1"), _message("3")]


# --- decoding ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        (b"\xff", "\ufffd"),
        (b"a\x80b", "a\ufffdb"),
        (b"\xc3", "\ufffd"),
        (b"\xe2\x82", "\ufffd"),
        (b"\xf0\x9f\x98", "\ufffd"),
        (b"\xe2\x82x", "\ufffdx"),
        (b"\xed\xa0\x80", "\ufffd\ufffd\ufffd"),
        (b"\xc0\xaf", "\ufffd\ufffd"),
        (b"\xf4\x90\x80\x80", "\ufffd\ufffd\ufffd\ufffd"),
    ],
)
def test_invalid_utf8_becomes_u_fffd(raw: bytes, text: str) -> None:
    """One U+FFFD per maximal invalid subpart, as the WHATWG UTF-8 decoder does."""
    assert parse_events(b"data: " + raw + b"\n\n") == [_message(text)]


def test_a_truncated_character_at_the_end_of_a_line_does_not_eat_the_line_end() -> None:
    assert parse_events(b"data: \xe2\x82\ndata: x\n\n") == [_message("\ufffd\nx")]


def test_invalid_utf8_in_a_field_name_makes_an_unknown_field() -> None:
    assert parse_events(b"d\xffata: x\ndata: y\n\n") == [_message("y")]


def test_unicode_line_separators_are_not_line_ends() -> None:
    data = "a\u2028b\u2029c\x85d\x0be\x0cf"
    assert parse_events(b"data: " + data.encode() + b"\n\n") == [_message(data)]


# --- end of stream -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tail",
    [b"data: b", b"data: b\n", b"data: b\r", b"data: b\r\n", b"id: 2\ndata: b\n"],
)
def test_an_unterminated_final_block_is_discarded(tail: bytes) -> None:
    parser = EventStreamParser()
    assert parser.feed(b"id: 1\ndata: a\n\n" + tail) == [_message("a", "1")]
    assert parser.close() == []
    assert parser.last_event_id == "1"


def test_a_final_block_ended_by_cr_cr_is_dispatched() -> None:
    assert parse_events(b"data: a\r\r") == [_message("a")]


def test_a_truncated_character_at_the_end_of_the_stream_is_discarded_with_its_block() -> None:
    parser = EventStreamParser()
    assert parser.feed(b"data: a\n\ndata: \xe2\x82") == [_message("a")]
    assert parser.close() == []


# --- last event id -------------------------------------------------------------------------


def test_the_last_event_id_is_carried_to_later_events() -> None:
    stream = b"id: 1\ndata: a\n\ndata: b\n\nevent: e\ndata: c\n\n"
    assert [e.last_event_id for e in parse_events(stream)] == ["1", "1", "1"]


def test_the_last_event_id_is_committed_even_when_nothing_is_dispatched() -> None:
    parser = EventStreamParser()
    assert parser.feed(b"id: 5\n\n") == []
    assert parser.last_event_id == "5"
    assert parser.feed(b"data: a\n\n") == [_message("a", "5")]


def test_the_last_event_id_is_committed_only_at_the_blank_line() -> None:
    parser = EventStreamParser()
    assert parser.feed(b"id: 1\ndata: a\n\nid: 2\ndata: b\n") == [_message("a", "1")]
    assert parser.last_event_id == "1"
    assert parser.feed(b"\n") == [_message("b", "2")]
    assert parser.last_event_id == "2"


def test_an_id_containing_nul_leaves_the_previous_id_in_force() -> None:
    stream = b"id: 1\ndata: a\n\nid: 2\x00\ndata: b\n\nid: \x00\ndata: c\n\n"
    assert [e.last_event_id for e in parse_events(stream)] == ["1", "1", "1"]


def test_the_last_id_in_a_block_wins() -> None:
    assert parse_events(b"id: 1\nid: 2\ndata: a\n\n") == [_message("a", "2")]


def test_an_id_keeps_spaces_after_the_first_and_any_other_character() -> None:
    stream = b"id:  a:b \t\ndata: x\n\n"
    assert [e.last_event_id for e in parse_events(stream)] == [" a:b \t"]


# --- retry ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "retry"),
    [
        (b"0", 0),
        (b"1500", 1500),
        (b"03000", 3000),
        (b"99999999999999999999", 99999999999999999999),
    ],
)
def test_retry_of_ascii_digits_sets_the_reconnection_time(value: bytes, retry: int) -> None:
    parser = EventStreamParser()
    assert parser.feed(b"retry:" + value + b"\ndata: x\n\n") == [_message("x", retry=retry)]
    assert parser.retry == retry


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"-1",
        b"+1",
        b" 1",
        b"1 ",
        b"1.5",
        b"1e3",
        b"1_000",
        b"0x10",
        b"1000x",
        "\u0661".encode(),
        "\u00b2".encode(),
        "\uff11".encode(),
    ],
)
def test_retry_that_is_not_only_ascii_digits_is_ignored(value: bytes) -> None:
    """``b" 1"`` is ``retry:  1``: only one leading space is stripped."""
    parser = EventStreamParser()
    stream = b"retry: 7\ndata: a\n\nretry: " + value + b"\ndata: b\n\n"
    assert parser.feed(stream) == [_message("a", retry=7), _message("b", retry=7)]
    assert parser.retry == 7


def test_retry_persists_across_events_and_blocks_without_data() -> None:
    stream = b"retry: 10\n\ndata: a\n\nretry: 20\n\ndata: b\n\n"
    assert parse_events(stream) == [_message("a", retry=10), _message("b", retry=20)]


# --- dispatch ------------------------------------------------------------------------------


def test_a_block_without_data_dispatches_nothing_and_resets_the_event_type() -> None:
    assert parse_events(b"event: x\n\ndata: y\n\n") == [_message("y")]


def test_one_trailing_lf_is_removed_from_the_data() -> None:
    assert parse_events(b"data: a\ndata:\n\n") == [_message("a\n")]


def test_the_field_name_is_everything_before_the_first_colon() -> None:
    assert parse_events(b"data:a:b\n\n") == [_message("a:b")]
    assert parse_events(b"event:a: b\ndata\n\n") == [ParsedEvent(type="a: b", data="")]


def test_a_parser_fed_nothing_dispatches_nothing() -> None:
    parser = EventStreamParser()
    assert parser.feed(b"") == []
    assert parser.close() == []
    assert parse_events(b"") == []
    assert parser.last_event_id == ""
    assert parser.retry is None
