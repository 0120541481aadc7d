"""The recorder alone into PostgreSQL: how many exchanges/s chatledger's Writer commits.

The same records as bench/writer.py (~1 KB request, ~1 KB response, non-streaming, 2,000
conversations) go straight into `Writer(Store(DATABASE_URL).sink)` with the gateway's default
settings; the clock runs from the first submit to the end of `close()`, which returns once every
queued record is committed. Each run creates its own database on the server (`--server`, default
the local one at 127.0.0.1:5432, user postgres) and drops it afterwards. Prints one JSON object.

The search index is not the recorder's work any more: each batch only queues its response ids.
`--index` also runs the gateway's background indexer meanwhile (as every replica does), and reports
how far behind it was when the recorder finished and how long it took to catch up.

`--replicas N` runs N recorders, each in a process of its own (as N replicas or `--workers N`),
into the one database, the exchanges dealt out between them: `--conversations shared` (each replica
gets every conversation in turn, 2,000 exchanges at a time, as a load balancer would spread them) or
`split` (each conversation stays on one replica). The figure is all exchanges over the wall time
from the common start to the last recorder's end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import psycopg
from writer import SESSIONS, build_records, timed_run  # bench/writer.py: the same records and timing

from chatledger.config import Settings
from chatledger.store import Store
from chatledger.store.journal import Journal, claim_slot
from chatledger.store.recorder_client import RecorderProcess, recorder_spec
from chatledger.store.records import RequestRecord, ResponseRecord
from chatledger.store.search_indexer import SearchIndexer
from chatledger.store.writer import Writer

SERVER = "postgresql://postgres@127.0.0.1:5432/test"


async def measure_process(url: str, exchanges: list[tuple[RequestRecord, ResponseRecord]],
                          workdir: Path) -> dict[str, object]:
    """The same, through the recorder process (WRITER_PROCESS=true): this process only journals the
    records, as the gateway's event loop would; the clock stops when the process has drained."""
    settings = Settings(_env_file=None, database_url=url, database_path=workdir / "unused.db")
    Store.open(database_path=settings.database_path, database_url=url,
               session_timeout_ms=settings.session_timeout).close()  # migrated, as the gateway's start does
    slot = claim_slot(workdir / "journal")
    spec = recorder_spec(settings, slot.directory, workdir / "deadletter.jsonl", None)
    spec["search_indexer"] = False  # the recorder alone, as in-process without --index
    recorder = RecorderProcess(Journal(slot.directory), slot, spec, ack="journal")
    await recorder.start()
    load = os.getloadavg()[0]
    result = await timed_run(recorder, exchanges)
    slot.release()
    return result | {"recorder": "process", "connections": settings.writer_pg_connections,
                     "batch_size": settings.writer_batch_size,
                     "load_average_1m": [round(load, 2), round(os.getloadavg()[0], 2)]}


async def measure(url: str, exchanges: list[tuple[RequestRecord, ResponseRecord]], workdir: Path,
                  index: bool) -> dict[str, object]:
    settings = Settings(_env_file=None)
    store = Store.open(database_path=workdir / "unused.db", database_url=url,
                       session_timeout_ms=settings.session_timeout)
    backend = store.search_backend() if index else None
    indexer = SearchIndexer(backend) if backend is not None else None
    if indexer is not None:
        indexer.start()
    sink = partial(store.sink, connections=settings.writer_pg_connections)
    writer = Writer(sink, batch_size=settings.writer_batch_size, flush_ms=settings.writer_flush_ms,
                    max_pending_bytes=settings.writer_max_pending_mb * 1024 * 1024,
                    journal=Journal(workdir / "journal"),
                    on_commit=indexer.notify if indexer is not None else None, niceness=settings.writer_niceness)
    writer.start()
    load = os.getloadavg()[0]
    result = await timed_run(writer, exchanges)
    ended = time.perf_counter()
    result |= {"connections": settings.writer_pg_connections, "batch_size": settings.writer_batch_size,
               "load_average_1m": [round(load, 2), round(os.getloadavg()[0], 2)]}
    if indexer is not None and backend is not None:
        result["search_backlog_at_end"] = backend.backlog()
        while backend.backlog():
            await asyncio.sleep(0.05)
        result["search_caught_up_after_s"] = time.perf_counter() - ended
        await asyncio.to_thread(indexer.stop)
    store.close()
    return result


def count_rows(url: str) -> dict[str, int]:
    with psycopg.connect(url) as connection:
        counts = {table: connection.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]  # type: ignore[index]
                  for table in ("requests", "responses", "sessions", "search_index", "search_pending")}
        for table, column in (("requests", "request_id"), ("responses", "response_id")):
            counts[f"distinct_{column}"] = connection.execute(  # type: ignore[index]
                f"SELECT COUNT(DISTINCT {column}) FROM {table}").fetchone()[0]
        counts["message_count"] = connection.execute(  # type: ignore[index]
            "SELECT COALESCE(SUM(message_count), 0) FROM sessions").fetchone()[0]
        return counts


def share(exchanges: list[tuple[RequestRecord, ResponseRecord]], replica: int, replicas: int,
          conversations: str) -> list[tuple[RequestRecord, ResponseRecord]]:
    """This replica's exchanges (build_records deals conversation `index % SESSIONS`)."""
    if conversations == "split":
        return [e for index, e in enumerate(exchanges) if index % SESSIONS % replicas == replica]
    return [e for index, e in enumerate(exchanges) if index // SESSIONS % replicas == replica]


def child(url: str, exchanges: list[tuple[RequestRecord, ResponseRecord]]) -> None:
    """One replica's recorder: ready once its records are built, then on "go" from the parent."""
    with tempfile.TemporaryDirectory(prefix="chatledger-writer-pg-") as directory:
        print("ready", flush=True)
        sys.stdin.readline()
        result = asyncio.run(measure(url, exchanges, Path(directory), False))
    print(json.dumps(result), flush=True)


def run_replicas(url: str, args: argparse.Namespace) -> dict[str, object]:
    Store.open(database_path=Path(tempfile.gettempdir()) / "unused.db", database_url=url,
               session_timeout_ms=Settings(_env_file=None).session_timeout).close()  # migrate once
    command = [sys.executable, __file__, "--exchanges", str(args.exchanges), "--child-of", url,
               "--replicas", str(args.replicas), "--conversations", args.conversations]
    children = [subprocess.Popen([*command, "--replica", str(replica)], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True) for replica in range(args.replicas)]
    try:
        for process in children:
            assert process.stdout is not None and process.stdout.readline().strip() == "ready"
        started = time.perf_counter()
        for process in children:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        results = [json.loads(process.stdout.readline()) for process in children if process.stdout is not None]
        elapsed = time.perf_counter() - started
    finally:
        for process in children:
            if process.poll() is None:
                process.kill()
    return {"exchanges": args.exchanges, "replicas": args.replicas, "conversations": args.conversations,
            "seconds": elapsed, "exchanges_per_s": args.exchanges / elapsed,
            "per_replica_exchanges_per_s": [round(r["exchanges_per_s"]) for r in results],
            "dropped": sum(r["dropped"] for r in results), "dead_lettered": sum(r["dead_lettered"] for r in results)}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description="Benchmark chatledger's recorder alone, into PostgreSQL.")
    parser.add_argument("--exchanges", type=int, default=200_000)
    parser.add_argument("--server", default=SERVER, help="a database on the server to connect to first")
    parser.add_argument("--index", action="store_true", help="run the background search indexer meanwhile")
    parser.add_argument("--process", action="store_true",
                        help="through the recorder process (WRITER_PROCESS=true): this process only journals")
    parser.add_argument("--replicas", type=int, default=1, help="recorders, each in a process of its own")
    parser.add_argument("--conversations", choices=("shared", "split"), default="shared",
                        help="with --replicas: every replica gets every conversation, or each keeps its own")
    parser.add_argument("--child-of", help=argparse.SUPPRESS)
    parser.add_argument("--replica", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_of:
        child(args.child_of, share(build_records(args.exchanges), args.replica, args.replicas, args.conversations))
        return
    name = f"chatledger_bench_{secrets.token_hex(4)}"
    base = args.server.rsplit("/", 1)[0]
    with psycopg.connect(args.server, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
        try:
            if args.replicas > 1:
                result = run_replicas(f"{base}/{name}", args)
            else:
                with tempfile.TemporaryDirectory(prefix="chatledger-writer-pg-") as directory:
                    exchanges = build_records(args.exchanges)
                    result = asyncio.run(measure_process(f"{base}/{name}", exchanges, Path(directory))
                                         if args.process else
                                         measure(f"{base}/{name}", exchanges, Path(directory), args.index))
            result["rows"] = count_rows(f"{base}/{name}")
        finally:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(sys.argv[1:])
