"""Request and response ids are UUIDv7: valid UUIDs whose order follows time (so index inserts stay local)."""

from __future__ import annotations

import time
import uuid

from chatledger.ids import uuid7


def test_uuid7_is_a_version_7_rfc_uuid_carrying_the_time():
    before = time.time_ns() // 1_000_000
    value = uuid7()
    after = time.time_ns() // 1_000_000
    parsed = uuid.UUID(value)
    assert str(parsed) == value
    assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
    assert before <= parsed.int >> 80 <= after


def test_uuid7_ids_sort_by_time_and_do_not_repeat():
    first = [uuid7() for _ in range(2000)]
    time.sleep(0.002)  # the next millisecond: every later id sorts after every earlier one
    second = [uuid7() for _ in range(2000)]
    assert max(first) < min(second)
    assert len(set(first + second)) == 4000
