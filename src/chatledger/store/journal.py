"""The recorder's journal: every record, appended to a local file as it is submitted.

The event loop appends each record here (one `write()`, microseconds) before the recorder thread
sees it, so what a client was answered survives a crash of the process even before the database
has it: a restarted recorder replays the journal from where its commits had got to. This is what
lets an answer go out without waiting for its database commit (`WRITER_ACK=journal`), and what
holds the backlog while the store cannot take writes (past the memory budget, records live only
here and the recorder reads them back, in order, once the store is back).

Durability is the write's: in the operating system's hands, like SQLite's own WAL commits with
`synchronous=NORMAL` (a process crash loses nothing; a power cut may lose the last moments).

Layout: `<directory>/<slot>/` holds numbered segments (`00000001.log`, ...) of frames
`[length u32][crc32 u32][kind u8][payload]`, and `progress`, the position up to which the records
are committed. Each process of a gateway takes a slot of its own (an exclusive `flock` on
`<slot>/LOCK`), starts a new segment (numbered after any there and after the progress point), and
deletes segments once everything in them is committed.
A torn frame (a crash inside a write) ends its segment; reading goes on with the next one.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import struct
import sys
import threading
import zlib
from pathlib import Path

import orjson

from chatledger.store.records import Record, RequestRecord, ResponseRecord

log = logging.getLogger("chatledger.writer")

Position = tuple[int, int]  # (segment number, byte offset in it)

HEADER = struct.Struct("<IIB")
BLOB_LENGTH = struct.Struct("<i")
REQUEST, RESPONSE = 1, 2
SEGMENT_BYTES = 64 * 1024 * 1024
MAX_FRAME_BYTES = 1 << 31


# -- records as bytes -----------------------------------------------------------------------------


def _blobs(parts: list[bytes | None]) -> list[bytes]:
    out = [struct.pack("<H", len(parts))]
    for part in parts:
        if part is None:
            out.append(BLOB_LENGTH.pack(-1))
        else:
            out.append(BLOB_LENGTH.pack(len(part)))
            out.append(part)
    return out


def encode(record: Record) -> bytes:
    """A frame: header, then the scalar fields as JSON and the bodies as raw bytes (no base64)."""
    if isinstance(record, RequestRecord):
        kind = REQUEST
        meta = orjson.dumps([record.request_id, record.timestamp, record.method, record.path, record.endpoint,
                             record.model, record.provider, record.upstream_model, record.stream,
                             record.session_hint, record.api_key_hash, record.first_user_text])
        blobs = _blobs([record.openai_request, record.provider_request])
    else:
        kind = RESPONSE
        meta = orjson.dumps([record.request_id, record.response_id, record.timestamp, record.status_code,
                             record.duration_ms, record.ttft_ms, record.error, record.cut, record.extra,
                             record.stream_events is not None])
        blobs = _blobs([record.openai_response, record.provider_response, *(record.stream_events or ())])
    payload = b"".join([struct.pack("<I", len(meta)), meta, *blobs])
    return HEADER.pack(len(payload), zlib.crc32(payload), kind) + payload


def _read_blobs(payload: memoryview, offset: int) -> list[bytes | None]:
    (count,) = struct.unpack_from("<H", payload, offset)
    offset += 2
    blobs: list[bytes | None] = []
    for _ in range(count):
        (length,) = BLOB_LENGTH.unpack_from(payload, offset)
        offset += 4
        if length < 0:
            blobs.append(None)
        else:
            blobs.append(bytes(payload[offset:offset + length]))
            offset += length
    return blobs


def decode(kind: int, payload: bytes) -> Record:
    view = memoryview(payload)
    (meta_length,) = struct.unpack_from("<I", view, 0)
    meta = orjson.loads(view[4:4 + meta_length])
    blobs = _read_blobs(view, 4 + meta_length)
    if kind == REQUEST:
        (request_id, timestamp, method, path, endpoint, model, provider, upstream_model, stream, session_hint,
         api_key_hash, opening) = meta
        return RequestRecord(request_id, timestamp, method, path, endpoint, opening, blobs[0] or b"", blobs[1], model,
                             provider, upstream_model, stream, session_hint, api_key_hash)
    request_id, response_id, timestamp, status_code, duration_ms, ttft_ms, error, cut, extra, streamed = meta
    events = [blob or b"" for blob in blobs[2:]] if streamed else None
    return ResponseRecord(request_id, response_id, timestamp, status_code, duration_ms, blobs[0], blobs[1], events,
                          ttft_ms, error, cut, extra)


# -- the files ------------------------------------------------------------------------------------


def _segment_name(number: int) -> str:
    return f"{number:08d}.log"


def _segments(directory: Path) -> list[int]:
    numbers = []
    for entry in directory.iterdir():
        if entry.suffix == ".log" and entry.stem.isdigit():
            numbers.append(int(entry.stem))
    return sorted(numbers)


class JournalEntry:
    """A record read back from the journal, with where it starts and ends."""

    __slots__ = ("end", "record", "start")

    def __init__(self, record: Record, start: Position, end: Position) -> None:
        self.record = record
        self.start = start
        self.end = end


class Journal:
    """One slot's journal. `append` is called on the event loop (under the writer's lock); `read`,
    `committed` and friends on the recorder thread, which with WRITER_PROCESS is in another process
    that opened the same directory with `follow` (it reads and notes progress; it never appends)."""

    def __init__(self, directory: Path, *, segment_bytes: int = SEGMENT_BYTES,
                 follow: Position | None = None) -> None:
        """`follow`: open the journal for reading only, in the recorder process, while the gateway's
        process appends to it; records before that position may be committed already (see
        `replay_before`)."""
        self.directory = directory
        self._segment_bytes = segment_bytes
        self._lock = threading.Lock()  # the segment list, shared by append (rotation) and cleanup
        directory.mkdir(parents=True, exist_ok=True)
        self._segments = _segments(directory)
        self._progress_fd: int | None = None  # the recorder thread's, kept open: one pwrite per commit
        progress = self.read_progress()
        oldest = (self._segments[0], 0) if self._segments else (1, 0)
        # Records before the progress point are committed; a progress file from before the oldest
        # segment still here (they were all committed and deleted) means: start at the oldest.
        self.committed_through = max(progress, oldest) if progress is not None else oldest
        self.broken: str | None = None
        if follow is not None:
            # Everything before `follow` may have been committed by a recorder that is gone.
            self.replay_before: Position = follow
            self.first_own_segment = follow[0]
            self._fd: int | None = None
            self._current, self._size = self.committed_through
            self.end: Position = self.committed_through  # moved by the appending process's notes
            return
        # This process writes into a segment of its own: whatever a crash left torn stays behind. Its
        # number follows the progress point too: after a clean stop no segment is left, and one
        # numbered from 1 again would sit before the point, where a follower (the recorder process,
        # which reads by position) takes everything as committed.
        newest = max(self._segments[-1] if self._segments else 0, progress[0] if progress is not None else 0)
        self.first_own_segment = newest + 1
        self.replay_before = (self.first_own_segment, 0)
        self._current = self.first_own_segment
        self._fd = self._open_segment(self._current)
        self._size = 0
        self.end = (self._current, 0)  # just past the last record appended

    def _open_segment(self, number: int) -> int:
        fd = os.open(self.directory / _segment_name(number), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with self._lock:
            if number not in self._segments:
                self._segments.append(number)
        return fd

    @property
    def has_backlog(self) -> bool:
        """Records from an earlier run that are not committed yet."""
        with self._lock:
            older = [n for n in self._segments if n < self.first_own_segment]
        if not older:
            return False
        if self.committed_through[0] < older[-1]:
            return True
        size = (self.directory / _segment_name(older[-1])).stat().st_size
        return self.committed_through[1] < size

    # -- event loop side ----------------------------------------------------------------------------

    def append(self, record: Record) -> tuple[Position, Position] | None:
        """Write the record; returns where it starts and ends (None: the journal cannot be written)."""
        if self.broken is not None or self._fd is None:
            return None
        frame = encode(record)
        try:
            if self._size and self._size + len(frame) > self._segment_bytes:
                self._rotate()
            start = (self._current, self._size)
            written = os.write(self._fd, frame)
            while written < len(frame):  # a short write (a signal, a full disk): finish or fail
                written += os.write(self._fd, frame[written:])
        except OSError as exc:
            self.broken = str(exc)
            log.error("journal %s cannot be written (%s): answers now wait for the database instead",
                      self.directory, exc)
            return None
        self._size += len(frame)
        self.end = (self._current, self._size)
        return start, self.end

    def _rotate(self) -> None:
        fd = self._open_segment(self._current + 1)
        assert self._fd is not None
        os.close(self._fd)
        self._fd, self._current, self._size = fd, self._current + 1, 0

    # -- recorder thread ------------------------------------------------------------------------------

    def read(self, start: Position, stop: Position, max_records: int,
             max_bytes: int | None = None) -> tuple[list[JournalEntry], Position]:
        """Records from `start` up to `stop` (an `end` seen under the writer's lock), in order, and the
        position reading got to; a segment that ends (or tears) before `stop` is followed by the next.
        At most `max_records`, and none more once `max_bytes` of frames are read (always one)."""
        entries: list[JournalEntry] = []
        position = start
        room = max_bytes if max_bytes is not None else sys.maxsize
        while len(entries) < max_records and room > 0 and position < stop:
            position, taken = self._read_segment(position, stop, max_records, room, entries)
            room -= taken
            if len(entries) >= max_records or room <= 0 or position >= stop:
                break
            following = self._next_segment(position[0])
            if following is None or (following, 0) > stop:
                break
            position = (following, 0)
        return entries, position

    def _read_segment(self, position: Position, stop: Position, max_records: int, max_bytes: int,
                      entries: list[JournalEntry]) -> tuple[Position, int]:
        """Append the segment's records from `position` on; returns where reading stopped and how
        many bytes of frames it read."""
        segment, offset = position
        try:
            handle = (self.directory / _segment_name(segment)).open("rb")
        except FileNotFoundError:
            return position, 0
        with handle:
            handle.seek(offset)
            while len(entries) < max_records and offset - position[1] < max_bytes and (segment, offset) < stop:
                header = handle.read(HEADER.size)
                if len(header) < HEADER.size:
                    break
                length, checksum, kind = HEADER.unpack(header)
                payload = handle.read(length) if length < MAX_FRAME_BYTES else b""
                if len(payload) != length or zlib.crc32(payload) != checksum or kind not in (REQUEST, RESPONSE):
                    log.warning("journal %s: a torn record at %s:%d ends that segment", self.directory,
                                _segment_name(segment), offset)
                    break
                end = (segment, offset + HEADER.size + length)
                entries.append(JournalEntry(decode(kind, payload), (segment, offset), end))
                offset = end[1]
        return (segment, offset), offset - position[1]

    def _next_segment(self, segment: int) -> int | None:
        with self._lock:
            later = [n for n in self._segments if n > segment]
            if not later and self._fd is None:  # following: the appending process may have rotated
                self._segments = sorted(set(self._segments) | set(_segments(self.directory)))
                later = [n for n in self._segments if n > segment]
        return later[0] if later else None

    def last_segment(self) -> int:
        """The newest segment on disk (following: the appending process may have started more)."""
        with self._lock:
            self._segments = sorted(set(self._segments) | set(_segments(self.directory)))
            return self._segments[-1] if self._segments else self.committed_through[0]

    def committed(self, position: Position) -> None:
        """Everything before `position` is in the store: note it, drop the segments it has passed."""
        self.committed_through = position
        with self._lock:
            done = [n for n in self._segments if n < position[0]]
            self._segments = [n for n in self._segments if n >= position[0]]
        for number in done:
            with contextlib.suppress(FileNotFoundError):
                (self.directory / _segment_name(number)).unlink()
        self._write_progress(position)

    def _write_progress(self, position: Position) -> None:
        # Fixed width at offset 0: one pwrite per commit, never a half-replaced file.
        text = f"{position[0]:>12} {position[1]:>20}\n".encode()
        try:
            if self._progress_fd is None:
                self._progress_fd = os.open(self.directory / "progress", os.O_WRONLY | os.O_CREAT, 0o600)
            os.pwrite(self._progress_fd, text, 0)
        except OSError as exc:
            log.warning("journal %s: progress not saved (%s); a restart replays more, duplicates are skipped",
                        self.directory, exc)

    def read_progress(self) -> Position | None:
        """The position the progress file holds (None: no file, or unreadable)."""
        try:
            segment, offset = (self.directory / "progress").read_text().split()
            return int(segment), int(offset)
        except (OSError, ValueError):
            return None

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        if self._progress_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._progress_fd)
            self._progress_fd = None
        with self._lock:
            own_empty = [n for n in self._segments if n >= self.first_own_segment]
        # A clean stop with everything committed leaves an empty directory behind, not empty files.
        if self._fd is not None and self.committed_through >= self.end:
            for number in own_empty:
                path = self.directory / _segment_name(number)
                with contextlib.suppress(FileNotFoundError):
                    if number < self.end[0] or path.stat().st_size <= self.end[1]:
                        path.unlink()


# -- slots ----------------------------------------------------------------------------------------


class Slot:
    """A journal directory this process holds (an exclusive flock, released when the process ends)."""

    def __init__(self, directory: Path, fd: int) -> None:
        self.directory = directory
        self._fd = fd

    @property
    def fd(self) -> int:
        """The locked descriptor: a recorder process handed it holds the slot too, as long as it runs."""
        return self._fd

    def release(self) -> None:
        with contextlib.suppress(OSError):
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)


def _try_lock(directory: Path) -> Slot | None:
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / "LOCK", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return Slot(directory, fd)


def claim_slot(root: Path) -> Slot:
    """The lowest-numbered slot no other process holds: worker processes of one gateway (and its
    restarts) share the same few directories."""
    number = 0
    while True:
        slot = _try_lock(root / f"slot-{number}")
        if slot is not None:
            return slot
        number += 1


def orphaned_slots(root: Path, own: Slot) -> list[Slot]:
    """Slots nobody holds that still have segments: left by a run with more worker processes."""
    if not root.is_dir():
        return []
    found = []
    for directory in sorted(root.iterdir()):
        if directory == own.directory or not directory.name.startswith("slot-") or not directory.is_dir():
            continue
        if not _segments(directory):
            continue
        slot = _try_lock(directory)
        if slot is not None:
            found.append(slot)
    return found
