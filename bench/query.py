"""Latency of the query API over a store of 1,000,000 recorded exchanges.

    .venv/bin/python bench/query.py [--db PATH] [--rows N] [--reps 30] [--rounds 3] [--only WORDS]

1. Fills a store through the recorder's own sink (bench/query_fill.py), or reuses the one at --db
   when it already holds --rows indexed exchanges (the first run takes several minutes).
2. Starts the real gateway on it (`chatledger serve`, LOG_LEVEL=warning, from an empty directory).
3. Times HTTP calls with httpx: per round, each endpoint is warmed up, then called --reps times;
   p50/p95/max are taken per round and the table shows their median over --rounds rounds.
4. Prints a markdown table and writes it, with the method and the machine, into its section of
   docs/query-benchmarks.md (between markers, so a rerun replaces it).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import random
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from query_fill import API_KEYS, DAY_MS, START_MS, ensure_filled, vocabulary

from chatledger.store.search_index import search_path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "query-benchmarks.md"
BEGIN = "<!-- bench/query.py: begin (generated, a rerun replaces this block) -->"
END = "<!-- bench/query.py: end -->"
BUDGET_MS = 50.0
RARE_MODEL = "claude-opus-4-20250514"  # 2% of the sessions
WARMUP = 3

Path_ = Callable[[], str]  # the URL path (with query) for the next call


@dataclass(frozen=True, slots=True)
class Probe:
    label: str
    next_path: Path_
    example: str
    extra: bool  # beyond the list


@dataclass(slots=True)
class Result:
    label: str
    example: str
    extra: bool
    p50: float
    p95: float
    max: float


@dataclass(frozen=True, slots=True)
class Subjects:
    """What the calls ask about, picked from the store."""

    request_ids: list[str]
    session_id: str
    session_requests: int
    model: str
    api_key_hash: str
    day_from: int
    day_to: int
    mid_word: str
    mid_matches: int
    common_word: str
    common_matches: int


# -- the store ----------------------------------------------------------------------------------------

def read_only(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def matches(connection: sqlite3.Connection, word: str) -> int:
    """Exchanges whose text has `word` (`connection` on the search index's own file)."""
    return connection.execute("SELECT COUNT(*) FROM search_index WHERE search_index MATCH ?",
                              (f'"{word}"',)).fetchone()[0]


def pick_subjects(path: Path, rng: random.Random) -> Subjects:
    words = vocabulary()
    with contextlib.closing(read_only(path)) as connection, \
            contextlib.closing(read_only(search_path(path))) as search:
        top = connection.execute("SELECT MAX(id) FROM requests").fetchone()[0]
        request_ids = [connection.execute("SELECT request_id FROM requests WHERE id = ?",
                                          (rng.randint(1, top),)).fetchone()[0] for _ in range(200)]
        session_id, count = connection.execute(
            "SELECT id, message_count FROM sessions WHERE message_count BETWEEN 20 AND 30 "
            "ORDER BY created_at LIMIT 1 OFFSET 1000").fetchone()
        return Subjects(request_ids, session_id, count, "gpt-4o", API_KEYS[3], START_MS + 10 * DAY_MS,
                        START_MS + 11 * DAY_MS, words[500], matches(search, words[500]), words[0],
                        matches(search, words[0]))


def store_size(path: Path) -> int:
    """The ledger and its search index, with their WAL files."""
    files = [*path.parent.glob(path.name + "*"), *path.parent.glob(search_path(path).name + "*")]
    return sum(p.stat().st_size for p in files if p.is_file())


# -- the gateway --------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def gateway(path: Path) -> Iterator[httpx.Client]:
    """`chatledger serve` on the store, from an empty directory (no .env, no chatledger.yaml)."""
    port = free_port()
    env = {key: value for key, value in os.environ.items() if key != "CHATLEDGER_MASTER_KEY"}
    env.update(DATABASE_PATH=str(path), LOG_LEVEL="warning")
    with tempfile.TemporaryDirectory() as cwd, (Path(cwd) / "gateway.log").open("wb") as log:
        process = subprocess.Popen([str(ROOT / ".venv" / "bin" / "chatledger"), "serve", "--port", str(port)],
                                   cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
                wait_ready(client, process, Path(cwd) / "gateway.log")
                yield client
        finally:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()


def wait_ready(client: httpx.Client, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the gateway exited with {process.returncode}:\n{log.read_text()}")
        with contextlib.suppress(httpx.TransportError):
            if client.get("/health").status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError("the gateway did not answer /health within 120 s")


# -- what is timed ------------------------------------------------------------------------------------

def fixed(path: str) -> Path_:
    return lambda: path


def cycling(paths: list[str]) -> Path_:
    counter = iter(range(sys.maxsize))
    return lambda: paths[next(counter) % len(paths)]


def probes(client: httpx.Client, s: Subjects) -> list[Probe]:
    cursor = get(client, "/v1/sessions?limit=50&offset=5000").json()["next_cursor"]
    window = f"from={s.day_from}&to={s.day_to}"
    asked = [
        ("sessions, first page (with total)", fixed("/v1/sessions?limit=50")),
        ("sessions, offset 5000", fixed("/v1/sessions?limit=50&offset=5000")),
        ("sessions, cursor page (after offset 5000)", fixed(f"/v1/sessions?limit=50&cursor={cursor}")),
        ("request detail (200 random ids)", cycling([f"/v1/requests/{ref}" for ref in s.request_ids])),
        ("responses/stats", fixed("/v1/responses/stats")),
        ("usage by day and model", fixed("/v1/usage?group_by=day,model")),
        (f"search, mid-frequency word ({s.mid_matches:,} matches)", fixed(f"/v1/search?q={s.mid_word}")),
        (f"search, common word ({s.common_matches:,} matches)", fixed(f"/v1/search?q={s.common_word}")),
        ("responses, model + status=error", fixed(f"/v1/responses?model={s.model}&status=error&limit=50")),
        ("requests, api key + one day", fixed(f"/v1/requests?api_key_hash={s.api_key_hash}&{window}&limit=50")),
        ("responses, slowest first", fixed("/v1/responses?sort=duration&limit=50")),
        (f"a session's requests ({s.session_requests})", fixed(f"/v1/sessions/{s.session_id}/requests")),
    ]
    extra = [
        ("requests, first page (with total)", fixed("/v1/requests?limit=50")),
        ("responses, status=error", fixed("/v1/responses?status=error&limit=50")),
        ("responses, one api key", fixed(f"/v1/responses?api_key_hash={s.api_key_hash}&limit=50")),
        ("responses, model + one day", fixed(f"/v1/responses?model={s.model}&{window}&limit=50")),
        ("sessions, one model", fixed(f"/v1/sessions?model={s.model}&limit=50")),
        ("usage by day", fixed("/v1/usage?group_by=day")),
        ("usage by model, one day", fixed(f"/v1/usage?group_by=model&{window}")),
        ("search, relevance order (mid-frequency word)", fixed(f"/v1/search?q={s.mid_word}&sort=relevance")),
        ("search, relevance order (common word)", fixed(f"/v1/search?q={s.common_word}&sort=relevance")),
        ("responses, rare model + status=error", fixed(f"/v1/responses?model={RARE_MODEL}&status=error&limit=50")),
        ("responses, status=error, slowest first", fixed("/v1/responses?status=error&sort=duration&limit=50")),
        ("requests, status=error", fixed("/v1/requests?status=error&limit=50")),
        ("sessions, status=error", fixed("/v1/sessions?status=error&limit=50")),
        ("sessions, one provider", fixed("/v1/sessions?provider=anthropic&limit=50")),
    ]
    return [Probe(label, path, path(), extra=index >= len(asked))
            for index, (label, path) in enumerate(asked + extra)]


def get(client: httpx.Client, path: str) -> httpx.Response:
    response = client.get(path)
    if response.status_code != 200:
        raise RuntimeError(f"GET {path}: {response.status_code} {response.text[:500]}")
    return response


def time_calls(client: httpx.Client, probe: Probe, reps: int) -> list[float]:
    for _ in range(WARMUP):
        get(client, probe.next_path())
    samples = []
    for _ in range(reps):
        path = probe.next_path()
        started = time.perf_counter()
        get(client, path)
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def measure(client: httpx.Client, subjects: Subjects, reps: int, rounds: int,
            only: list[str] | None = None) -> list[Result]:
    table = [probe for probe in probes(client, subjects)
             if not only or any(word in probe.label for word in only)]
    per_round: dict[str, list[tuple[float, float, float]]] = {probe.label: [] for probe in table}
    for round_ in range(rounds):
        print(f"round {round_ + 1}/{rounds}", flush=True)
        for probe in table:
            samples = time_calls(client, probe, reps)
            per_round[probe.label].append((percentile(samples, 0.5), percentile(samples, 0.95), max(samples)))
    return [Result(probe.label, probe.example, probe.extra,
                   *(statistics.median(stat[i] for stat in per_round[probe.label]) for i in range(3)))
            for probe in table]


# -- the report ---------------------------------------------------------------------------------------

def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = ""
    with contextlib.suppress(OSError, ValueError, IndexError):
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f", {kib / 1024 / 1024:.0f} GiB RAM"
    return (f"{os.cpu_count()} cores ({model}){memory}; Linux {platform.release()}; Python "
            f"{platform.python_version()}; SQLite {sqlite3.sqlite_version}")


def table_markdown(results: list[Result]) -> str:
    lines = ["| endpoint | call | p50 ms | p95 ms | max ms | under 50 ms? |", "|---|---|---:|---:|---:|---|"]
    for r in results:
        verdict = "yes" if r.p95 < BUDGET_MS else ("p50 only" if r.p50 < BUDGET_MS else "**no**")
        lines.append(f"| {r.label} | `GET {shorten(r.example)}` | {r.p50:.1f} | {r.p95:.1f} | {r.max:.1f} "
                     f"| {verdict} |")
    return "\n".join(lines)


def shorten(path: str) -> str:
    if "cursor=" in path:
        return path.split("cursor=")[0] + "cursor=…"
    return path if len(path) <= 90 else path[:87] + "…"


def report(results: list[Result], path: Path, rows: int, reps: int, rounds: int) -> str:
    size = store_size(path)
    return "\n".join([
        BEGIN,
        f"### Results ({time.strftime('%Y-%m-%d', time.gmtime())})",
        "",
        f"* Command: `.venv/bin/python bench/query.py --rows {rows} --reps {reps} --rounds {rounds}`",
        f"* Machine: {machine()}",
        f"* Store: {rows:,} exchanges, {size / 1e9:.1f} GB on disk ({path})",
        f"* Each figure is the median over {rounds} rounds of that round's p50 / p95 / max over {reps} calls "
        f"(after {WARMUP} warm-up calls); \"under 50 ms?\" is \"yes\" when p95 is.",
        "",
        "The issue's list:",
        "",
        table_markdown([r for r in results if not r.extra]),
        "",
        "Also measured:",
        "",
        table_markdown([r for r in results if r.extra]),
        END,
    ])


def write_docs(section: str, docs: Path) -> None:
    """Replace this script's block in `docs`, or add it under a heading of its own."""
    text = docs.read_text() if docs.exists() else "# Query benchmarks\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n## Query API latency at 1M exchanges (bench/query.py)\n\n" + section + "\n"
    docs.parent.mkdir(parents=True, exist_ok=True)
    docs.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", type=Path, default=Path("/tmp/chatledger-bench-1m/ledger.db"))
    parser.add_argument("--rows", type=int, default=1_000_000, help="exchanges in the store")
    parser.add_argument("--reps", type=int, default=30, help="timed calls per endpoint and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the table shows medians over them")
    parser.add_argument("--docs", type=Path, default=DOCS, help="markdown file to update ('-' for none)")
    parser.add_argument("--only", action="append", metavar="WORDS",
                        help="time only the calls whose label contains WORDS (repeatable; the docs are left alone)")
    args = parser.parse_args()
    path = args.db.resolve()
    ensure_filled(path, args.rows)
    subjects = pick_subjects(path, random.Random(3))
    with gateway(path) as client:
        results = measure(client, subjects, args.reps, args.rounds, args.only)
    section = report(results, path, args.rows, args.reps, args.rounds)
    print(section)
    if str(args.docs) != "-" and not args.only:
        write_docs(section, args.docs)
        print(f"written to {args.docs}")


if __name__ == "__main__":
    main()
