"""The recorder alone: how many exchanges/s chatledger's Writer commits into a fresh SQLite file.

No HTTP: records like the gateway's (proxy.py builds them: a RequestRecord when the request leaves,
a ResponseRecord when the answer ends; ~1 KB of request, ~1 KB of response, non-streaming) go
straight into `Writer(Store(...).sink)` with the gateway's default settings. The clock runs from the
first submit to the end of `close()`, which returns once every queued record is committed.
The records are built before the clock starts, so what is timed is the queue, the rows and SQLite.
Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import orjson

from chatledger.config import Settings
from chatledger.ids import uuid7
from chatledger.store import Store
from chatledger.store.journal import Journal
from chatledger.store.recorder_client import RecorderProcess
from chatledger.store.records import RequestRecord, ResponseRecord
from chatledger.store.writer import Writer

SESSIONS = 2_000  # exchanges are spread over this many conversations, as a busy gateway would see
API_KEY_HASH = "0123456789abcdef"


def request_body(session: int) -> tuple[bytes, str]:
    """A request's bytes and the text that opens its conversation (what the gateway hands the recorder)."""
    opening = f"Conversation {session}: " + "please summarize the quarterly report. " * 22
    body = {"model": "gpt-4o-mini", "temperature": 0.2, "messages": [
        {"role": "system", "content": "You are a concise assistant."}, {"role": "user", "content": opening}]}
    return orjson.dumps(body), opening


def response_body() -> bytes:
    return orjson.dumps({
        "id": "chatcmpl-writer", "object": "chat.completion", "created": 1_700_000_000, "model": "gpt-4o-mini",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": "The report shows steady growth. " * 28}}],
        "usage": {"prompt_tokens": 250, "completion_tokens": 200, "total_tokens": 450}})


def build_records(count: int, sessions: int = SESSIONS) -> list[tuple[RequestRecord, ResponseRecord]]:
    """`count` exchanges; bodies are shared between records (their content does not change the cost).
    They are kept out of the garbage collector's passes (`gc.freeze`): a gateway never holds hundreds
    of thousands of records at once, and walking them made every full pass of the writer's own
    collections cost ~11 ms here (the writer alone 7% slower than it is)."""
    bodies = [request_body(session) for session in range(sessions)]
    answer = response_body()
    now = int(time.time() * 1000)
    exchanges = []
    for index in range(count):
        raw, opening = bodies[index % sessions]
        request_id = uuid7()
        request = RequestRecord(
            request_id=request_id, timestamp=now + index // 100, method="POST", path="/v1/chat/completions",
            endpoint="chat", first_user_text=opening, openai_request=raw, provider_request=None, model="gpt-4o-mini",
            provider="openai", upstream_model="gpt-4o-mini", stream=False, session_hint=None,
            api_key_hash=API_KEY_HASH)
        response = ResponseRecord(request_id=request_id, response_id=uuid7(), timestamp=now + index // 100,
                                  status_code=200, duration_ms=3, openai_response=answer)
        exchanges.append((request, response))
    gc.collect()
    gc.freeze()
    return exchanges


async def feed(writer: Writer | RecorderProcess, exchanges: list[tuple[RequestRecord, ResponseRecord]],
               window: int) -> None:
    """Submit everything, never more than `window` records ahead of the commits (the writer drops
    records beyond its byte budget, as the gateway would under a store that cannot keep up)."""
    for index, (request, response) in enumerate(exchanges):
        writer.submit(request)
        writer.submit(response)
        if index % 256 == 0:
            while writer.stats.submitted - writer.stats.committed > window:
                await asyncio.sleep(0.005)  # seldom enough not to fight the writer thread for the GIL


async def timed_run(recorder: Writer | RecorderProcess,
                    exchanges: list[tuple[RequestRecord, ResponseRecord]]) -> dict[str, object]:
    """Feed every exchange, then drain (`close` returns once all is committed): the figures every
    recorder benchmark reports, timed from the first submit."""
    started = time.perf_counter()
    await feed(recorder, exchanges, window=50_000)
    fed = time.perf_counter()
    await asyncio.to_thread(recorder.close, 600.0)
    elapsed = time.perf_counter() - started
    stats = recorder.stats
    return {"exchanges": len(exchanges), "seconds": elapsed, "feed_seconds": fed - started,
            "exchanges_per_s": len(exchanges) / elapsed, "committed_records": stats.committed,
            "batches": stats.batches, "dropped": stats.dropped, "spilled": stats.spilled,
            "dead_lettered": stats.dead_lettered, "request_bytes": len(exchanges[0][0].openai_request),
            "response_bytes": len(exchanges[0][1].openai_response or b"")}


async def measure(database: Path, exchanges: list[tuple[RequestRecord, ResponseRecord]]) -> dict[str, object]:
    settings = Settings(_env_file=None)  # the defaults, not a .env that happens to be around
    store = Store.open(database_path=database, session_timeout_ms=settings.session_timeout,
                       synchronous=settings.sqlite_synchronous)
    # As the gateway runs it: every record journaled on submit, the thread at its lower priority.
    writer = Writer(store.sink, batch_size=settings.writer_batch_size, flush_ms=settings.writer_flush_ms,
                    max_pending_bytes=settings.writer_max_pending_mb * 1024 * 1024,
                    dead_letter_path=store.dead_letter_path(), journal=Journal(database.parent / "journal"),
                    ack=settings.recorder_ack(), niceness=settings.writer_niceness)
    writer.start()
    result = await timed_run(writer, exchanges)
    store.close()
    return result


def count_rows(database: Path) -> dict[str, int]:
    with sqlite3.connect(database) as connection:
        return {table: connection.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
                for table in ("requests", "responses", "sessions")}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description="Benchmark chatledger's recorder alone.")
    parser.add_argument("--exchanges", type=int, default=200_000)
    parser.add_argument("--sessions", type=int, default=SESSIONS, help="conversations the exchanges spread over")
    parser.add_argument("--dir", type=Path, default=None, help="where to create the SQLite file (default: a temp dir)")
    args = parser.parse_args(argv)
    exchanges = build_records(args.exchanges, args.sessions)
    with tempfile.TemporaryDirectory(prefix="chatledger-writer-", dir=args.dir) as directory:
        database = Path(directory) / "writer.db"
        result = asyncio.run(measure(database, exchanges))
        result["rows"] = count_rows(database)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(sys.argv[1:])
