"""Frame encoding speed: ``ssebus.encode_event`` against sse-starlette's ``encode()``.

Run ``python benchmarks/encode.py [--quick]``. Each scenario times one expression per
library on the same event; both expressions are evaluated once first, and their output is
checked to parse (with ``ssebus.testing.parse_events``) to the same events.
"""

from __future__ import annotations

import argparse
import platform
import timeit
from importlib.metadata import version
from typing import Any

import sse_starlette.event as sse_starlette

import ssebus
from ssebus.testing import parse_events

SEP = "\n"  # sse-starlette defaults to "\r\n"; both libraries then write the same bytes.

SMALL = {"orderId": "ord-123", "status": "created"}
MULTILINE = "\n".join(f"line {i:02}: " + "lorem ipsum dolor sit amet," for i in range(10))
LARGE = {
    "items": [
        {"sku": f"sku-{i:04}", "qty": i % 7 + 1, "note": "handle with care"} for i in range(75)
    ]
}

# Scenario name -> (ssebus expression, sse-starlette expression), timed in NAMESPACE.
SCENARIOS: dict[str, tuple[str, str]] = {
    "small JSON, encode": (
        "encode_event(small)",
        "their_small.encode()",
    ),
    "small JSON, build + encode": (
        "encode_event(Ours(data=small_text, event='order-created', id='k2f9a1-42'))",
        "Theirs(small_text, event='order-created', id='k2f9a1-42', sep=SEP).encode()",
    ),
    "small JSON, .json() + encode": (
        "encode_event(Ours.json(SMALL, event='order-created', id='k2f9a1-42'))",
        "TheirsJSON(SMALL, event='order-created', id='k2f9a1-42', sep=SEP).encode()",
    ),
    "multi-line (10 x 40 ch), encode": (
        "encode_event(multi)",
        "their_multi.encode()",
    ),
    "comment only": (
        "encode_comment('ping')",
        "Theirs(comment='ping', sep=SEP).encode()",
    ),
    "4 KB JSON, encode": (
        "encode_event(large)",
        "their_large.encode()",
    ),
}


def namespace() -> dict[str, Any]:
    """The globals the timed expressions run in; events are built here, outside the timing."""
    small_text = ssebus.compact_json(SMALL)
    large_text = ssebus.compact_json(LARGE)
    ours, theirs = ssebus.ServerSentEvent, sse_starlette.ServerSentEvent

    def ours_event(text: str) -> ssebus.ServerSentEvent:
        return ours(data=text, event="order-created", id="k2f9a1-42")

    def their_event(text: str) -> Any:
        return theirs(text, event="order-created", id="k2f9a1-42", sep=SEP)

    return {
        "SEP": SEP,
        "SMALL": SMALL,
        "Ours": ours,
        "Theirs": theirs,
        "TheirsJSON": sse_starlette.JSONServerSentEvent,
        "encode_event": ssebus.encode_event,
        "encode_comment": ssebus.encode_comment,
        "small_text": small_text,
        "small": ours_event(small_text),
        "their_small": their_event(small_text),
        "multi": ours_event(MULTILINE),
        "their_multi": their_event(MULTILINE),
        "large": ours_event(large_text),
        "their_large": their_event(large_text),
    }


def best_ns(timers: list[timeit.Timer], repeat: int, quick: bool) -> list[float]:
    """Best-of-``repeat`` ns per call for each timer, alternating them to share the noise."""
    numbers = [max(1, t.autorange()[0] // (5 if quick else 1)) for t in timers]
    best = [float("inf")] * len(timers)
    for _ in range(repeat):
        for i, (timer, number) in enumerate(zip(timers, numbers, strict=True)):
            best[i] = min(best[i], timer.timeit(number) / number * 1e9)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description="Compare SSE frame encoding speed.")
    parser.add_argument("--quick", action="store_true", help="fewer, shorter repeats")
    args = parser.parse_args()
    repeat = 3 if args.quick else 5

    print(f"Python {platform.python_version()} ({platform.python_implementation()})")
    print(f"Platform {platform.platform()}")
    print(f"ssebus {version('ssebus')}, sse-starlette {version('sse-starlette')}")
    print(f"best of {repeat} repeats{' (quick)' if args.quick else ''}\n")

    ns = namespace()
    header = f"{'scenario':<34}{'bytes':>7}{'ssebus ns/op':>14}{'sse-starlette':>15}{'ratio':>8}"
    print(header)
    print("-" * len(header))
    mismatches: list[str] = []
    notes: list[str] = []
    for name, (ours, theirs) in SCENARIOS.items():
        ours_out, theirs_out = eval(ours, ns), eval(theirs, ns)
        if parse_events(ours_out) != parse_events(theirs_out):
            mismatches.append(f"{name}: {ours_out!r} != {theirs_out!r}")
        elif ours_out != theirs_out:
            notes.append(f"{name}: same events, different bytes: {ours_out!r} vs {theirs_out!r}")
        ours_ns, theirs_ns = best_ns(
            [timeit.Timer(ours, globals=ns), timeit.Timer(theirs, globals=ns)], repeat, args.quick
        )
        ratio = theirs_ns / ours_ns
        print(f"{name:<34}{len(ours_out):>7}{ours_ns:>14.0f}{theirs_ns:>15.0f}{ratio:>7.2f}x")

    print("\nratio = sse-starlette ns/op / ssebus ns/op (how many times faster ssebus is)")
    if mismatches:
        print("OUTPUT MISMATCH (parsed events differ):", *mismatches, sep="\n  ")
    else:
        print("output check: both libraries' frames parse to the same events in every scenario")
    for note in notes:
        print(f"  note: {note}")


if __name__ == "__main__":
    main()
