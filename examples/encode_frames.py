"""Print the exact bytes ssebus writes for a few events, including the awkward ones."""

from ssebus import ServerSentEvent, encode_comment, encode_event

examples = [
    ServerSentEvent.json({"orderId": "ord-1", "status": "created"}, event="order-created", id="1"),
    ServerSentEvent(data="two\nlines", id="2"),
    ServerSentEvent(data="CRLF\r\nbecomes LF"),
    ServerSentEvent(data="  leading spaces survive"),
    ServerSentEvent(data=""),
    ServerSentEvent(retry=5000),
]

if __name__ == "__main__":
    for event in examples:
        print(f"{event!r}\n  -> {encode_event(event)!r}")
    print(f"encode_comment('ping')\n  -> {encode_comment('ping')!r}")
