"""The recorder's journal on its own: the frame format, segments, torn frames, progress and slots."""

from __future__ import annotations

import os

from chatledger.store.journal import Journal, claim_slot, decode, encode, orphaned_slots
from chatledger.store.records import RequestRecord, ResponseRecord


def _request(index: int, **changes) -> RequestRecord:
    raw = f'{{"model": "m", "messages": [{{"role": "user", "content": "journal {index}"}}]}}'.encode()
    fields = dict(request_id=f"r{index:05d}", timestamp=1_700_000_000_000 + index, method="POST",
                  path="/v1/chat/completions", endpoint="chat", first_user_text=f"journal {index}",
                  openai_request=raw, provider_request=None, model="m", provider="mock", upstream_model="m-1",
                  stream=False, session_hint=None, api_key_hash="sk-abc")
    fields.update(changes)
    return RequestRecord(**fields)


def _frame_kind(frame: bytes) -> int:
    return frame[8]


def test_records_round_trip_through_the_frame_format():
    request = _request(1, provider_request=b"\x00\xff binary", session_hint="s-1", first_user_text="h\u00e9 \u2603")
    assert decode(_frame_kind(encode(request)), encode(request)[9:]) == request
    streamed = ResponseRecord("r", "x", 1, 200, 5, openai_response=None, provider_response=b"\x00\xff{}",
                              stream_events=[b"data: 1\n\n", b""], ttft_ms=2, error="cut off", cut=True,
                              extra={"a": 1})
    assert decode(2, encode(streamed)[9:]) == streamed
    plain = ResponseRecord("r", "y", 1, 500, 7, openai_response=b'{"error": {}}')
    assert decode(2, encode(plain)[9:]) == plain


def test_records_come_back_in_order_across_segments(tmp_path):
    journal = Journal(tmp_path, segment_bytes=2000)
    spans = [journal.append(_request(index)) for index in range(30)]
    assert all(span is not None for span in spans)
    assert len({span[0][0] for span in spans}) >= 3  # rotated into several segments
    entries, reached = journal.read((1, 0), journal.end, max_records=1000)
    assert [entry.record.request_id for entry in entries] == [f"r{index:05d}" for index in range(30)]
    assert [(entry.start, entry.end) for entry in entries] == spans
    assert reached == journal.end

    # Reading in small steps gets the same, and stops where asked.
    some, reached = journal.read(spans[10][0], spans[20][0], max_records=1000)
    assert [entry.record.request_id for entry in some] == [f"r{index:05d}" for index in range(10, 20)]
    assert reached == spans[20][0] or reached == spans[19][1]


def test_a_torn_frame_ends_its_segment_and_reading_goes_on(tmp_path):
    first = Journal(tmp_path)
    for index in range(3):
        first.append(_request(index))
    first.close()
    segment = tmp_path / "00000001.log"
    whole = segment.read_bytes()
    segment.write_bytes(whole[:-10])  # the last record torn by a crash inside its write

    second = Journal(tmp_path)
    assert second.first_own_segment == 2 and second.has_backlog
    second.append(_request(3))
    entries, reached = second.read(second.committed_through, second.end, max_records=100)
    assert [entry.record.request_id for entry in entries] == ["r00000", "r00001", "r00003"]
    assert reached == second.end


def test_progress_survives_a_restart_and_committed_segments_go(tmp_path):
    journal = Journal(tmp_path, segment_bytes=1500)
    spans = [journal.append(_request(index)) for index in range(12)]
    journal.committed(spans[7][1])
    assert min(int(p.stem) for p in tmp_path.glob("*.log")) == spans[7][1][0]
    journal.close()

    again = Journal(tmp_path)
    assert again.committed_through == spans[7][1] and again.has_backlog
    entries, _ = again.read(again.committed_through, again.end, max_records=100)
    assert [entry.record.request_id for entry in entries] == [f"r{index:05d}" for index in range(8, 12)]
    again.committed(again.end)
    again.close()
    # Everything committed: no segment is left behind, and the next start has nothing to replay.
    assert list(tmp_path.glob("*.log")) == []
    third = Journal(tmp_path)
    assert not third.has_backlog
    # ...and writes after the progress point, where a follower (the recorder process) looks for it.
    assert third.first_own_segment > again.end[0] and third.end > third.committed_through >= again.end
    follower = Journal(tmp_path, follow=third.replay_before)
    third.append(_request(20))
    entries, _ = follower.read(follower.committed_through, third.end, max_records=10)
    assert [entry.record.request_id for entry in entries] == ["r00020"]


def test_a_journal_that_cannot_be_written_says_so(tmp_path):
    journal = Journal(tmp_path)
    os.close(journal._fd)  # as a full or failing disk would refuse the write
    journal._fd = os.open(os.devnull, os.O_RDONLY)
    assert journal.append(_request(1)) is None
    assert journal.broken is not None and journal.append(_request(2)) is None


def test_each_process_of_a_gateway_takes_a_slot_of_its_own(tmp_path):
    one, two = claim_slot(tmp_path), claim_slot(tmp_path)
    assert one.directory.name == "slot-0" and two.directory.name == "slot-1"
    Journal(two.directory).append(_request(1))
    assert orphaned_slots(tmp_path, one) == []  # slot-1 is held
    two.release()
    [orphan] = orphaned_slots(tmp_path, one)  # now nobody holds it, and it has records
    assert orphan.directory == two.directory
    orphan.release()
    one.release()
    assert claim_slot(tmp_path).directory.name == "slot-0"
