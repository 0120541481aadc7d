"""The recorder's overflow: records the store cannot take yet, in an append-only local file.

Once the backlog in memory passes its budget, every new record is appended here (one JSON line
each) instead, until the writer has read the file back, in order, and committed all of it; then
the file is emptied and records go to memory again. Records in the file are therefore always newer
than those in memory, and are written after them. How far the store has committed the file is
kept beside it (`<file>.offset`, written after each committed batch), so a restarted gateway
replays what a stop left behind from there, and only that.
"""

from __future__ import annotations

import base64
import contextlib
import os
import threading
from pathlib import Path
from typing import Any

import orjson

from chatledger.store.records import Record, RequestRecord, ResponseRecord

BYTES_FIELDS = {"openai_request", "provider_request", "openai_response", "provider_response"}


def encode(record: Record) -> bytes:
    fields: dict[str, Any] = {}
    for name in record.__slots__:
        value = getattr(record, name)
        if name in BYTES_FIELDS and value is not None:
            value = base64.b64encode(value).decode()
        elif name == "stream_events" and value is not None:
            value = [base64.b64encode(event).decode() for event in value]
        fields[name] = value
    kind = "request" if isinstance(record, RequestRecord) else "response"
    return orjson.dumps({"kind": kind, "record": fields}) + b"\n"


def decode(line: bytes) -> Record:
    entry = orjson.loads(line)
    fields = entry["record"]
    for name in BYTES_FIELDS & fields.keys():
        if fields[name] is not None:
            fields[name] = base64.b64decode(fields[name])
    if fields.get("stream_events") is not None:
        fields["stream_events"] = [base64.b64decode(event) for event in fields["stream_events"]]
    return RequestRecord(**fields) if entry["kind"] == "request" else ResponseRecord(**fields)


class Spill:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset_path = path.with_name(path.name + ".offset")
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._append = path.open("ab")
        self._committed = self._read_offset()
        self._read = self._committed
        self._size = path.stat().st_size
        if self._committed > self._size:  # an offset from another file: trust the file
            self._committed = self._read = 0
        self.spilled = 0  # records appended by this process

    def _read_offset(self) -> int:
        try:
            return int(self._offset_path.read_text().strip() or 0)
        except (OSError, ValueError):
            return 0

    @property
    def active(self) -> bool:
        """Records are (or must keep) going here: the file holds records not yet committed."""
        return self._committed < self._size

    @property
    def unread(self) -> bool:
        return self._read < self._size

    def append(self, record: Record) -> None:
        line = encode(record)
        with self._lock:
            self._append.write(line)
            self._append.flush()  # in the OS's hands: survives the process, if not the machine
            self._size += len(line)
            self.spilled += 1

    def read(self, limit: int) -> tuple[list[Record], int]:
        """Up to `limit` records after those already handed out, and the offset just past them."""
        with self._lock, self.path.open("rb") as handle:
            handle.seek(self._read)
            records = []
            while len(records) < limit and handle.tell() < self._size:
                records.append(decode(handle.readline()))
            self._read = handle.tell()
            return records, self._read

    def rewind(self) -> None:
        """Hand the uncommitted records out again (their batch failed)."""
        with self._lock:
            self._read = self._committed

    def committed(self, offset: int) -> bool:
        """The records up to `offset` are in the store. True once the whole file is, and it was emptied."""
        with self._lock:
            self._committed = offset
            if self._committed < self._size:
                self._write_offset(offset)
                return False
            self._append.truncate(0)
            self._append.seek(0)
            self._committed = self._read = self._size = 0
            with contextlib.suppress(FileNotFoundError):
                self._offset_path.unlink()
            return True

    def _write_offset(self, offset: int) -> None:
        temporary = self._offset_path.with_name(self._offset_path.name + ".tmp")
        temporary.write_text(str(offset))
        os.replace(temporary, self._offset_path)

    def prepend(self, records: list[Record]) -> None:
        """Put older records (memory's, at a forced stop) before what the file still holds."""
        if not records:
            return
        with self._lock:
            with self.path.open("rb") as handle:
                handle.seek(self._committed)
                rest = handle.read()
            temporary = self.path.with_name(self.path.name + ".tmp")
            with temporary.open("wb") as handle:
                for record in records:
                    handle.write(encode(record))
                handle.write(rest)
            os.replace(temporary, self.path)
            self._append.close()
            self._append = self.path.open("ab")
            with contextlib.suppress(FileNotFoundError):
                self._offset_path.unlink()
            self._committed = self._read = 0
            self._size = self.path.stat().st_size

    def close(self) -> None:
        with self._lock:
            self._append.close()
