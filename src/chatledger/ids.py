"""Identifiers for requests and responses: UUIDv7 (RFC 9562), time-ordered.

A random UUID (v4) lands on a random page of its unique index, so every insert of a batch dirties
its own page and the write-ahead log copies each whole page: at a million rows that was most of the
recorder's disk writes. A UUIDv7 starts with the millisecond time, so a batch's new ids sit together
at the end of the index, in a few pages. They stay unguessable (74 random bits) and sort by time.
"""

from __future__ import annotations

import os
import time


def uuid7() -> str:
    """A UUIDv7 string: 48 bits of Unix time in ms, version 7, 12 random bits, variant 10, 62 random bits."""
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10)) & ((1 << 80) - 1)
    value = value & ~(0xF000 << 64) | (0x7000 << 64)  # version nibble (bits 76-79)
    value = value & ~(0xC << 60) | (0x8 << 60)  # variant bits 10 (bits 62-63)
    text = f"{value:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"
