"""Splitting an upstream's SSE bytes into whole events, however the network cuts them."""

from __future__ import annotations

import random

import pytest

from chatledger.sse import DONE, EventSplitter, is_usage_only_chunk

LF_STREAM = (b'data: {"choices":[{"delta":{"role":"assistant"}}]}\n\n'
             b': keep-alive comment\n\n'
             b'data: {"choices":[{"delta":{"content":"Hel"}}]}\n\n'
             b'event: message\ndata: {"choices":[{"delta":{"content":"lo"}}]}\n\n'
             b'data: {"choices":[],"usage":{"total_tokens":3}}\n\n' + DONE)


def _split(stream: bytes, cuts: list[int]) -> tuple[list[bytes], bytes]:
    splitter = EventSplitter()
    events: list[bytes] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        events += splitter.feed(stream[start:end])
    return events, splitter.rest()


@pytest.mark.parametrize("line_end", [b"\n", b"\r\n"])
def test_events_are_whole_whatever_the_chunk_boundaries(line_end: bytes) -> None:
    stream = LF_STREAM.replace(b"\n", line_end)
    expected = [event.replace(b"\n", line_end) + line_end + line_end
                for event in LF_STREAM.split(b"\n\n")[:-1]]
    assert len(expected) == 6
    rng = random.Random(7)
    for _ in range(300):
        cuts = sorted(rng.sample(range(1, len(stream)), rng.randint(0, 12)))
        assert _split(stream, cuts) == (expected, b"")


def test_an_unfinished_event_waits_for_its_blank_line() -> None:
    splitter = EventSplitter()
    assert splitter.feed(b'data: {"a":1}\n') == []
    assert splitter.feed(b'\ndata: {"b"') == [b'data: {"a":1}\n\n']
    assert splitter.rest() == b'data: {"b"'
    assert splitter.rest() == b""


def test_crlf_arriving_after_lf_chunks_still_splits() -> None:
    splitter = EventSplitter()
    assert splitter.feed(b"data: a\n\ndata: b\r") == [b"data: a\n\n"]
    assert splitter.feed(b"\n\r\ndata: c\n\n") == [b"data: b\r\n\r\n", b"data: c\n\n"]


def test_usage_only_chunk_is_recognized_and_content_is_not() -> None:
    events, _ = _split(LF_STREAM, [])
    assert [is_usage_only_chunk(event) for event in events] == [False, False, False, False, True, False]
