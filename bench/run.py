"""chatledger's benchmark suite in one run: `bench/run` (full, ~9 minutes) or `bench/run --quick`.

Layout (so figures compare across machines): the gateway is pinned to core 0 (`taskset -c 0`), the
fake upstream (bench/upstream.py) and every load generator to core 1. Each cell is measured
DIRECT (generator -> upstream) and THROUGH (generator -> chatledger -> upstream) in interleaved
rounds (direct first in even rounds, through first in odd ones) and the median over the rounds is
reported; overhead = through minus direct, percentile by percentile.
The tables go to stdout and to bench/results/latest.md; docs/benchmarks.md quotes them.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import os
import platform
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import bodies
import measure
import procs
from procs import BENCH, GATEWAY_CPUS, LOAD_CPUS, PYTHON, ROOT, BenchError, Gateway, Processes
from report import DISTURBED_CORES, Goal, Pair, Table, cores, ms, overhead_triple, rate, render_all, triple

CONNECTIONS = 32
OPEN_LOOP_LOAD = 0.5  # the open-loop phases offer this fraction of the gateway's measured capacity
# The issue set its goals on a machine whose core answered this many req/s from an ASGI hello-world
# under uvicorn (uvloop, httptools): bench/hello.py, measured in each run, scales them to this one.
REFERENCE_HELLO_RPS = 21_000
NON_STREAMING = ("small", "agentic")
STREAMING = ("small-stream", "agentic-stream")
RESULTS = BENCH / "results" / "latest.md"


@dataclass(frozen=True)
class Sizes:
    rounds: int
    seconds: int  # per measured run (wrk takes whole seconds)
    warmup: float
    count: int  # requests in the counted phase
    writer_exchanges: int


FULL = Sizes(rounds=3, seconds=4, warmup=1.0, count=20_000, writer_exchanges=200_000)
QUICK = Sizes(rounds=1, seconds=2, warmup=0.5, count=5_000, writer_exchanges=50_000)


@dataclass
class Ledger:
    """What the generators had answered by one gateway, to compare with the rows it recorded."""

    answered: int = 0
    errors: int = 0
    inflight_bound: int = 0

    def add(self, result: dict[str, float]) -> None:
        self.answered += int(result["answered"])
        self.errors += int(result["errors"])
        self.inflight_bound += int(result["inflight_bound"])


@dataclass
class Bench:
    sizes: Sizes
    files: dict[str, Path]
    tmp: Path
    processes: Processes
    foreign: procs.ForeignLoad
    upstream_port: int = 0
    gateway: Gateway | None = None
    ledger: Ledger = field(default_factory=Ledger)
    results: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    def log(self, message: str) -> None:
        print(f"[{time.monotonic() - self.started:5.0f}s] {message}", file=sys.stderr, flush=True)

    @property
    def gateway_port(self) -> int:
        assert self.gateway is not None
        return self.gateway.port


Measure = Callable[[int], dict[str, float]]


# -- measuring ----------------------------------------------------------------------------------------


def interleaved(bench: Bench, measure_one: Measure) -> Pair:
    pair = Pair()
    started = time.monotonic()
    targets = [("direct", bench.upstream_port), ("through", bench.gateway_port)]
    for index in range(bench.sizes.rounds):
        # Alternate which side goes first so a drift (a growing database, a warming cache) is shared.
        for side, port in targets if index % 2 == 0 else targets[::-1]:
            result = measure_one(port)
            if side == "through":
                bench.ledger.add(result)
            getattr(pair, side).append(result)
    pair.others = bench.foreign.mean_since(started)
    return pair


def warm(bench: Bench, measure_one: Measure) -> None:
    measure_one(bench.upstream_port)
    bench.ledger.add(measure_one(bench.gateway_port))


def wrk_cells(bench: Bench, connections: int) -> dict[str, Pair]:
    cells = {}
    for name in NON_STREAMING:
        run = functools.partial(measure.wrk, bodies=bench.files[name], connections=connections)
        warm(bench, functools.partial(run, seconds=1))
        cells[name] = interleaved(bench, functools.partial(run, seconds=bench.sizes.seconds))
        bench.log(f"wrk -c{connections} {name}: direct {rate(cells[name].median('direct', 'rps'))} req/s, "
                  f"through {rate(cells[name].median('through', 'rps'))} req/s")
    return cells


def loadgen_cells(bench: Bench, names: tuple[str, ...], connections: int,
                  rates: dict[str, float] | None = None) -> dict[str, Pair]:
    cells = {}
    for name in names:
        offered = rates[name] if rates else None
        run = functools.partial(measure.loadgen, bodies=bench.files[name], connections=connections,
                                seconds=bench.sizes.seconds, warmup=bench.sizes.warmup, rate=offered)
        cells[name] = interleaved(bench, run)
        load = f"open loop {rate(offered)} req/s" if offered else "closed loop"
        bench.log(f"loadgen -c{connections} {load} {name}: through total p50 "
                  f"{ms(cells[name].median('through', 'total_p50'))} ms, {rate(cells[name].median('through', 'rps'))}"
                  " req/s")
    return cells


def open_loop_rates(saturated: dict[str, Pair], names: tuple[str, ...]) -> dict[str, float]:
    """OPEN_LOOP_LOAD of the gateway's measured capacity, rounded to 50 req/s."""
    return {name: max(50.0, round(OPEN_LOOP_LOAD * pair.median("through", "rps") / 50) * 50)
            for name, pair in zip(names, saturated.values(), strict=True)}


# -- phases ---------------------------------------------------------------------------------------------


def phase_upstream(bench: Bench) -> None:
    """The fake upstream's own throughput, wrk straight at it: it must dwarf the gateway's."""
    started = time.monotonic()
    bench.results["upstream"] = {name: measure.wrk(bench.upstream_port, bench.files[name], CONNECTIONS,
                                                   bench.sizes.seconds) for name in NON_STREAMING}
    bench.results["upstream_others"] = bench.foreign.mean_since(started)
    bench.log("upstream direct: " + ", ".join(f"{name} {rate(result['rps'])} req/s"
                                              for name, result in bench.results["upstream"].items()))


def phase_hello(bench: Bench) -> None:
    """The yardstick: bench/hello.py on the gateway's core, wrk GETs at 32 connections and at 1."""
    process, port = procs.start_hello(bench.processes, bench.tmp)
    started = time.monotonic()
    measure.wrk(port, None, CONNECTIONS, 1)  # warm-up
    saturated = [measure.wrk(port, None, CONNECTIONS, bench.sizes.seconds)["rps"] for _ in range(bench.sizes.rounds)]
    bench.results["hello"] = {"rps": statistics.median(saturated), "rounds": saturated,
                              "others": bench.foreign.mean_since(started)}
    bench.processes.stop(process, timeout=10)
    bench.log(f"hello-world on core {GATEWAY_CPUS}: {rate(bench.results['hello']['rps'])} req/s "
              f"({bench.results['hello']['rps'] / REFERENCE_HELLO_RPS:.2f} of the reference machine)")


def phase_main_gateway(bench: Bench) -> None:
    results = bench.results
    results["saturated"] = wrk_cells(bench, CONNECTIONS)
    results["sequential"] = wrk_cells(bench, 1)
    results["open_rates"] = open_loop_rates(results["saturated"], NON_STREAMING)
    results["open"] = loadgen_cells(bench, NON_STREAMING, CONNECTIONS, results["open_rates"])
    results["stream_seq"] = loadgen_cells(bench, STREAMING, 1)
    results["stream_sat"] = loadgen_cells(bench, STREAMING, CONNECTIONS)
    results["stream_rates"] = open_loop_rates(results["stream_sat"], STREAMING)
    results["stream_open"] = loadgen_cells(bench, STREAMING, CONNECTIONS, results["stream_rates"])


def stop_and_count(bench: Bench, gateway: Gateway, ledger: Ledger) -> dict[str, float]:
    """Peak RSS under load, then a graceful stop (the recorder drains), then the rows on disk."""
    peak = gateway.peak_rss_mb()
    stop_seconds = bench.processes.stop(gateway.process, timeout=90)
    rows = procs.count_rows(gateway.database)
    return {"answered": ledger.answered, "errors": ledger.errors, "inflight_bound": ledger.inflight_bound,
            "requests": rows["requests"], "responses": rows["responses"], "peak_rss_mb": peak,
            "stop_seconds": stop_seconds, "exit_code": gateway.process.returncode}


def phase_counted(bench: Bench) -> None:
    """A fresh gateway answers exactly N mixed requests (streaming and not, small and agentic);
    every one must be on disk after a graceful stop."""
    gateway = procs.start_gateway(bench.processes, bench.tmp / "counted", bench.upstream_port)
    started = time.monotonic()
    result = measure.loadgen(gateway.port, bench.files["mixed"], CONNECTIONS, count=bench.sizes.count)
    ledger = Ledger()
    ledger.add(result)
    bench.results["counted"] = stop_and_count(bench, gateway, ledger) | {
        "rps": result["rps"], "others": bench.foreign.mean_since(started)}
    counted = bench.results["counted"]
    bench.log(f"counted: answered {counted['answered']}, rows {counted['requests']}/{counted['responses']}")


def wrk_interleaved(bench: Bench, gateways: dict[Any, procs.Gateway]) -> tuple[dict[Any, dict[str, Any]],
                                                                                 dict[Any, list[float]]]:
    """wrk small at 32 connections on each gateway in turn, the order reversed every other round
    (after a 1 s warm-up each); then each is stopped and its rows counted. Returns each one's
    figures (for bench.results) and its req/s per round."""
    ledgers = {key: Ledger() for key in gateways}
    rps: dict[Any, list[float]] = {key: [] for key in gateways}
    for key, gateway in gateways.items():
        ledgers[key].add(measure.wrk(gateway.port, bench.files["small"], CONNECTIONS, 1))
    started = time.monotonic()
    order = list(gateways)
    for index in range(bench.sizes.rounds):
        for key in order if index % 2 == 0 else order[::-1]:
            result = measure.wrk(gateways[key].port, bench.files["small"], CONNECTIONS, bench.sizes.seconds)
            ledgers[key].add(result)
            rps[key].append(result["rps"])
    others = bench.foreign.mean_since(started)
    figures = {key: {"rps": rps[key], "others": others, **stop_and_count(bench, gateways[key], ledgers[key])}
               for key in gateways}
    return figures, rps


def phase_workers(bench: Bench) -> None:
    """--workers 1 and --workers 2, both on cores 0-1 (shared with wrk and the upstream on core 1)."""
    gateways = {workers: procs.start_gateway(bench.processes, bench.tmp / f"workers{workers}", bench.upstream_port,
                                             cpus=f"{GATEWAY_CPUS},{LOAD_CPUS}", workers=workers)
                for workers in (1, 2)}
    bench.results["workers"], rps = wrk_interleaved(bench, gateways)
    bench.log("workers: " + ", ".join(f"{w}: {rate(sorted(r)[len(r) // 2])} req/s" for w, r in rps.items()))


RECORDER_LAYOUTS = (("thread", GATEWAY_CPUS), ("process", GATEWAY_CPUS), ("thread", f"{GATEWAY_CPUS},{LOAD_CPUS}"),
                    ("process", f"{GATEWAY_CPUS},{LOAD_CPUS}"))


def phase_recorder(bench: Bench) -> None:
    """The recorder as a thread of the gateway's process or as a process of its own (WRITER_PROCESS),
    with the gateway on one core and on both (shared with wrk and the upstream)."""
    gateways = {(kind, cpus): procs.start_gateway(
        bench.processes, bench.tmp / f"recorder-{kind}-{cpus.replace(',', '-')}", bench.upstream_port, cpus=cpus,
        extra_env={"WRITER_PROCESS": "true" if kind == "process" else "false"}) for kind, cpus in RECORDER_LAYOUTS}
    bench.results["recorder"], rps = wrk_interleaved(bench, gateways)
    bench.log("recorder: " + ", ".join(f"{kind} on {cpus}: {rate(sorted(r)[len(r) // 2])} req/s"
                                       for (kind, cpus), r in rps.items()))


def phase_unrecorded(bench: Bench) -> None:
    """For reference, not a goal: the same gateway with recording off (ENABLE_PERSISTENCE=false), small
    body, saturated and sequential, to split the overhead between proxying and recording."""
    bench.gateway = procs.start_gateway(bench.processes, bench.tmp / "unrecorded", bench.upstream_port,
                                        extra_env={"ENABLE_PERSISTENCE": "false"})
    bench.ledger = Ledger()  # nothing is recorded: no rows to check
    cells = {}
    for connections in (CONNECTIONS, 1):
        run = functools.partial(measure.wrk, bodies=bench.files["small"], connections=connections)
        warm(bench, functools.partial(run, seconds=1))
        cells[connections] = interleaved(bench, functools.partial(run, seconds=bench.sizes.seconds))
    bench.processes.stop(bench.gateway.process, timeout=30)
    bench.results["unrecorded"] = cells
    bench.log(f"recording off: {rate(cells[CONNECTIONS].median('through', 'rps'))} req/s at 32 connections, "
              f"overhead p50 {ms(cells[1].overhead('total_p50'))} ms at 1")


def phase_writer(bench: Bench) -> None:
    """The recorder alone, pinned like the gateway, nothing else running: exchanges spread over 2,000
    conversations (a busy multi-user gateway: every exchange updates a session of its own), then all
    in one (an agent's long session: the session and index pages stay the same)."""
    for key, sessions in (("writer", 2000), ("writer_one", 1)):
        command = procs.pinned(GATEWAY_CPUS, [PYTHON, str(BENCH / "writer.py"), "--exchanges",
                                              str(bench.sizes.writer_exchanges), "--sessions", str(sessions),
                                              "--dir", str(bench.tmp)])
        started = time.monotonic()
        bench.results[key] = procs.run_json(command, timeout=900) | {"others": bench.foreign.mean_since(started),
                                                                      "sessions": sessions}
        bench.log(f"writer alone, {sessions} conversation(s): {rate(bench.results[key]['exchanges_per_s'])} "
                  "exchanges/s")


def run_phases(bench: Bench) -> None:
    _, bench.upstream_port = procs.start_upstream(bench.processes, bench.tmp)
    bench.log(f"fake upstream on port {bench.upstream_port} (core {LOAD_CPUS})")
    phase_upstream(bench)
    phase_hello(bench)
    bench.gateway = procs.start_gateway(bench.processes, bench.tmp / "main", bench.upstream_port)
    bench.log(f"gateway on port {bench.gateway.port} (core {GATEWAY_CPUS}), database {bench.gateway.database}")
    phase_main_gateway(bench)
    bench.results["main"] = stop_and_count(bench, bench.gateway, bench.ledger)
    bench.log(f"main gateway stopped: answered {bench.ledger.answered}, rows {bench.results['main']['requests']}")
    phase_counted(bench)
    phase_workers(bench)
    phase_recorder(bench)
    phase_unrecorded(bench)
    phase_writer(bench)


# -- report ---------------------------------------------------------------------------------------------


def machine() -> list[tuple[str, str]]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "?")
    versions = ", ".join(f"{name} {metadata.version(name)}"
                         for name in ("chatledger", "uvicorn", "uvloop", "httptools", "orjson"))
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False).stdout.split("\n")[0]
    return [("cores (nproc)", str(os.cpu_count())), ("CPU", cpu), ("kernel", platform.release()),
            ("Python", platform.python_version()), ("packages", versions), ("SQLite", sqlite3.sqlite_version),
            ("load generator", f"{wrk_version.split(' Copyright')[0]}; bench/loadgen.py"), ("source", git_state())]


def git_state() -> str:
    """The commit measured, and whether src/ had uncommitted changes (read-only git calls)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()
    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "src")
    return f"commit {commit}" + (" + uncommitted changes in src/" if dirty else "")


def body_sizes() -> str:
    parts = []
    for body_set in bodies.all_sets().values():
        low, mean, high = body_set.sizes()
        parts.append(f"{body_set.name} {len(body_set.bodies)} bodies {low:,}-{high:,} B (mean {mean:,})"
                     if low != high else f"{body_set.name} {low:,} B")
    return "; ".join(parts)


def throughput_table(results: dict[str, Any]) -> Table:
    table = Table("Non-streaming throughput: wrk, closed loop, 32 connections",
                  ["body", "upstream alone req/s", "direct req/s", "through req/s",
                   "through p50 / p90 / p99 ms (queueing)", "errors", "others' CPU"])
    for name, pair in results["saturated"].items():
        table.rows.append([name, rate(results["upstream"][name]["rps"]), rate(pair.median("direct", "rps")),
                           rate(pair.median("through", "rps")), triple(pair, "through", "total"),
                           str(pair.errors()), cores(pair.others)])
    table.notes.append("Upstream alone: wrk straight at the fake upstream, sharing core 1 with it, before the gateway "
                       f"starts (others' CPU {cores(results['upstream_others'])}). At saturation a closed-loop "
                       "generator's latency is queueing (32 / throughput); latency overhead at 32 connections is "
                       "measured open loop below.")
    return table


def latency_table(results: dict[str, Any]) -> Table:
    table = Table("Non-streaming latency and overhead (ms; p50 / p90 / p99)",
                  ["body", "connections", "load", "direct", "through", "overhead", "errors", "others' CPU"])
    for name, pair in results["sequential"].items():
        table.rows.append([name, "1", "wrk, closed loop", triple(pair, "direct", "total"),
                           triple(pair, "through", "total"), overhead_triple(pair, "total"), str(pair.errors()),
                           cores(pair.others)])
    for name, pair in results["open"].items():
        load = f"loadgen, open loop {rate(results['open_rates'][name])} req/s"
        table.rows.append([name, "32", load, triple(pair, "direct", "total"), triple(pair, "through", "total"),
                           overhead_triple(pair, "total"), str(pair.errors()), cores(pair.others)])
    table.notes.append(f"Open loop: {OPEN_LOOP_LOAD:.0%} of the gateway's saturated throughput above, "
                       "latency from each request's scheduled time. " + generator_note(results["open"]))
    return table


def streaming_table(results: dict[str, Any]) -> Table:
    table = Table("Streaming: time to first token and total (ms; p50 / p90 / p99)",
                  ["body", "connections", "load", "metric", "direct", "through", "overhead", "others' CPU"])
    cells = [(results["stream_seq"], "1", lambda _: "closed loop"),
             (results["stream_open"], "32", lambda n: f"open loop {rate(results['stream_rates'][n])} req/s")]
    for group, connections, load in cells:
        for name, pair in group.items():
            for metric, label in (("ttft", "first token"), ("total", "total")):
                table.rows.append([name, connections, load(name), label, triple(pair, "direct", metric),
                                   triple(pair, "through", metric), overhead_triple(pair, metric),
                                   cores(pair.others)])
    for name, pair in results["stream_sat"].items():
        table.notes.append(f"{name}, 32 connections closed loop: direct {rate(pair.median('direct', 'rps'))} req/s "
                           f"(bounded by the Python generator), through {rate(pair.median('through', 'rps'))} "
                           f"req/s; errors {pair.errors()}; others' CPU {cores(pair.others)}.")
    table.notes.append("32 connections: " + generator_note(results["stream_open"]))
    table.notes.append("First token: the first SSE event whose delta has non-empty content. The fake upstream "
                       "writes a whole stream at once, so direct first token = direct total.")
    return table


def generator_note(cells: dict[str, Pair]) -> str:
    """How late the open-loop generator was in sending, and whether requests had to wait for a connection."""
    slack = max(max(result["slack_p99"] for result in pair.direct + pair.through) for pair in cells.values())
    backlog = max(max(result["backlog_max"] for result in pair.direct + pair.through) for pair in cells.values())
    return (f"Open-loop generator check: its sends were at most {slack:.3f} ms behind schedule at p99; at most "
            f"{backlog:.0f} requests ever waited for a free connection.")


def rows_table(results: dict[str, Any]) -> Table:
    table = Table("Rows recorded vs requests answered",
                  ["gateway", "answered", "requests rows", "responses rows", "check"])
    named = [("timed phases (wrk + loadgen)", results["main"]), ("counted phase (fresh gateway)", results["counted"])]
    named += [(f"--workers {w} phase", r) for w, r in results["workers"].items()]
    for label, result in named:
        table.rows.append([label, f"{result['answered']:,}", f"{result['requests']:,}", f"{result['responses']:,}",
                           rows_verdict(result)])
    table.notes.append("wrk drops its connections at its deadline, so up to (connections) requests per wrk run "
                       "are recorded but never counted as answered; loadgen.py waits for every answer.")
    return table


def rows_verdict(result: dict[str, float]) -> str:
    extra = result["requests"] - result["answered"]
    same = result["requests"] == result["responses"]
    if result["inflight_bound"] == 0:
        ok = extra == 0 and same and result["errors"] == 0
        return ("equal" if ok else "NOT EQUAL") + f" (errors {result['errors']})"
    ok = 0 <= extra <= result["inflight_bound"] and same
    return (f"{'ok' if ok else 'MISMATCH'}: rows - answered = {extra} (<= {result['inflight_bound']} in flight at "
            f"wrk deadlines); requests {'=' if same else '!='} responses")


def resources_table(results: dict[str, Any]) -> Table:
    writer = results["writer"]
    table = Table("Memory, shutdown, recorder", ["what", "value"])
    table.rows += [
        ["peak RSS of the gateway, timed phases (VmHWM)", f"{results['main']['peak_rss_mb']:.0f} MB"],
        ["peak RSS of the gateway, counted phase", f"{results['counted']['peak_rss_mb']:.0f} MB"],
        ["graceful stop after the timed phases (SIGTERM to exit)", f"{results['main']['stop_seconds']:.1f} s"],
        ["counted phase throughput (mixed, 32 connections, closed loop)",
         f"{rate(results['counted']['rps'])} req/s (others' CPU {cores(results['counted']['others'])})"],
    ]
    for run in (writer, results["writer_one"]):
        label = f"writer alone, {run['sessions']:,} conversation(s)"
        table.rows += [
            [f"{label}: exchanges committed/s", f"{rate(run['exchanges_per_s'])} ({run['exchanges']:,} exchanges in "
                                                f"{run['seconds']:.1f} s, {run['request_bytes']} B + "
                                                f"{run['response_bytes']} B each)"],
            [f"{label}: rows", f"{run['rows']['requests']:,} requests, {run['rows']['responses']:,} responses, "
                               f"dropped {run['dropped']} (others' CPU {cores(run['others'])})"],
        ]
    return table


def unrecorded_table(results: dict[str, Any]) -> Table:
    table = Table("For reference: recording on vs off (ENABLE_PERSISTENCE=false), small body, wrk",
                  ["recording", "32 connections: through req/s", "1 connection: overhead p50 / p90 / p99 ms",
                   "others' CPU"])
    on_saturated, on_sequential = results["saturated"]["small"], results["sequential"]["small"]
    off_saturated, off_sequential = results["unrecorded"][CONNECTIONS], results["unrecorded"][1]
    table.rows.append(["on (the tables above)", rate(on_saturated.median("through", "rps")),
                       overhead_triple(on_sequential, "total"), cores(on_sequential.others)])
    table.rows.append(["off", rate(off_saturated.median("through", "rps")), overhead_triple(off_sequential, "total"),
                       cores(max(off_saturated.others, off_sequential.others))])
    table.notes.append("Not a goal (the goals are with bodies recorded): it splits the overhead between proxying "
                       "and recording (a response's last bytes wait for its journal append, or for its commit "
                       "when the recorder falls behind).")
    return table


def workers_table(results: dict[str, Any]) -> Table:
    table = Table("`chatledger serve --workers N`: wrk, small, 32 connections, gateway on cores 0-1",
                  ["workers", "req/s (median)", "rounds", "peak RSS (all processes)", "others' CPU"])
    for workers, result in results["workers"].items():
        table.rows.append([str(workers), rate(sorted(result["rps"])[len(result["rps"]) // 2]),
                           ", ".join(rate(r) for r in result["rps"]), f"{result['peak_rss_mb']:.0f} MB",
                           cores(result["others"])])
    table.notes.append("Only 2 cores: wrk and the upstream run on core 1, so a second worker competes with them; "
                       "ideal scaling is not reachable on this layout.")
    return table


def recorder_table(results: dict[str, Any]) -> Table:
    table = Table("The recorder: a thread of the gateway or a process of its own (WRITER_PROCESS), wrk, small, "
                  "32 connections", ["recorder", "gateway cores", "req/s (median)", "rounds", "rows = answers",
                                     "peak RSS (all processes)", "others' CPU"])
    for (kind, cpus), result in results["recorder"].items():
        table.rows.append([kind, cpus, rate(sorted(result["rps"])[len(result["rps"]) // 2]),
                           ", ".join(rate(r) for r in result["rps"]), rows_verdict(result),
                           f"{result['peak_rss_mb']:.0f} MB", cores(result["others"])])
    table.notes.append("WRITER_PROCESS=auto (the default) picks the process when the gateway may use two cores or "
                       "more, the thread on one: the tables above ran on one core, with the thread; the `--workers` "
                       "table on two, with a process per worker.")
    return table


def goals(results: dict[str, Any]) -> list[Goal]:
    speed = results["hello"]["rps"] / REFERENCE_HELLO_RPS  # below 1: a slower machine than the reference

    def at_least(name: str, target: float, value: float, unit: str) -> Goal:
        scaled = target * speed
        return Goal(name, f">= {rate(target)} {unit}", f"{rate(value)} {unit}", value >= target,
                    f">= {rate(scaled)} {unit}", value >= scaled)

    def at_most(name: str, target_ms: float, value_ms: float) -> Goal:
        scaled = target_ms / speed
        return Goal(name, f"<= {target_ms:g} ms", f"{value_ms:.3f} ms", value_ms <= target_ms,
                    f"<= {scaled:.2f} ms", value_ms <= scaled)

    small = results["saturated"]["small"]
    found = [at_least("non-streaming throughput, 32 connections (small)", 5000, small.median("through", "rps"),
                      "req/s")]
    for name in NON_STREAMING:
        open_pair = results["open"][name]
        found += [at_most(f"overhead p50, 32 connections ({name}, open loop)", 1, open_pair.overhead("total_p50")),
                  at_most(f"overhead p99, 32 connections ({name}, open loop)", 5, open_pair.overhead("total_p99"))]
    for name in NON_STREAMING:
        found.append(at_most(f"sequential overhead p50, 1 connection ({name})", 0.5,
                             results["sequential"][name].overhead("total_p50")))
    for key, label in (("stream_seq", "1 connection"), ("stream_open", "32 connections open loop")):
        for name, pair in results[key].items():
            found.append(at_most(f"streaming first-token overhead p50, {label} ({name})", 1,
                                 pair.overhead("ttft_p50")))
    peak = max(results["main"]["peak_rss_mb"], results["counted"]["peak_rss_mb"])
    found.append(Goal("peak RSS under load (1 worker)", "<= 200 MB", f"{peak:.0f} MB", peak <= 200))
    for key, label in (("writer", "2,000 conversations"), ("writer_one", "1 conversation")):
        found.append(at_least(f"writer alone ({label})", 20_000, results[key]["exchanges_per_s"], "exchanges/s"))
    counted = results["counted"]
    found.append(Goal("rows recorded = requests answered (counted phase)", "equal",
                      f"{counted['answered']:,} answered, {counted['requests']:,} / {counted['responses']:,} rows",
                      rows_verdict(counted).startswith("equal")))
    one, two = (sorted(results["workers"][w]["rps"])[len(results["workers"][w]["rps"]) // 2] for w in (1, 2))
    found.append(Goal("`--workers 2` vs 1 on 2 shared cores", ">= 1.25x (ideal 2x)", f"{two / one:.2f}x",
                      two / one >= 1.25))
    upstream = results["upstream"]["small"]["rps"]
    through = small.median("through", "rps")
    found.append(Goal("fake upstream never the bottleneck", ">= 5x the gateway", f"{upstream / through:.0f}x",
                      upstream >= 5 * through))
    return found


def render(results: dict[str, Any], sizes: Sizes, command: str, elapsed: float) -> str:
    preamble = [f"## chatledger benchmark: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}", "",
                f"Command: `{command}` ({'quick' if sizes == QUICK else 'full'}: {sizes.rounds} interleaved "
                f"round(s) of {sizes.seconds} s per cell; took {elapsed / 60:.1f} min)", "",
                "| machine | |", "|---|---|"]
    preamble += [f"| {key} | {value} |" for key, value in machine()]
    mean, peak = results["foreign"]
    preamble += [f"| other processes' CPU during the run | {mean:.2f} cores on average, {peak:.2f} at most "
                 f"(sampled each second; the tables show it per cell, (!) above {DISTURBED_CORES}) |"]
    preamble += ["", f"Layout: gateway `taskset -c {GATEWAY_CPUS}`, 1 worker, recording to SQLite (the default "
                 "WRITER_PROCESS=auto: on one core, the recorder thread); fake upstream "
                 f"and load generators `taskset -c {LOAD_CPUS}`. Bodies: {body_sizes()}."]
    tables = [throughput_table(results), latency_table(results), streaming_table(results), rows_table(results),
              resources_table(results), workers_table(results), recorder_table(results), unrecorded_table(results)]
    return render_all(preamble, tables, goals(results))


# -- entry point ----------------------------------------------------------------------------------------


def check_machine() -> None:
    if shutil.which("wrk") is None:
        raise BenchError("wrk is not installed: apt-get install wrk")
    if shutil.which("taskset") is None:
        raise BenchError("taskset is not installed: apt-get install util-linux")
    if not {0, 1} <= os.sched_getaffinity(0):
        raise BenchError("the benchmark pins to cores 0 and 1; this process may not use both")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/run", description="Benchmark chatledger against a fake upstream.")
    parser.add_argument("--quick", action="store_true", help="a ~2 minute smoke run (1 round, short cells)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (databases, logs)")
    return parser.parse_args(argv)


def on_signal(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt  # unwinds through the finally blocks that stop every process


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    sizes = QUICK if args.quick else FULL
    command = "bench/run" + (" --quick" if args.quick else "")
    check_machine()
    # SIGINT explicitly too: a shell starting us in the background leaves it ignored otherwise.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, on_signal)
    os.sched_setaffinity(0, {int(LOAD_CPUS)})  # the runner's own work stays off the gateway's core
    tmp = Path(tempfile.mkdtemp(prefix="chatledger-bench-"))
    foreign = procs.ForeignLoad()
    foreign.start()
    try:
        with Processes() as processes:
            bench = Bench(sizes, bodies.write_sets(tmp), tmp, processes, foreign)
            run_phases(bench)
        bench.results["foreign"] = foreign.stop()
        if bench.results["foreign"][0] > DISTURBED_CORES:
            bench.log(f"warning: other processes used {bench.results['foreign'][0]:.2f} cores on average during "
                      "the run; the figures are disturbed")
        text = render(bench.results, sizes, command, time.monotonic() - bench.started)
    finally:
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(text)
    print(text)
    print(f"(also written to {RESULTS.relative_to(ROOT)})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except BenchError as error:
        print(f"bench/run: {error}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("bench/run: interrupted; every process it started has been stopped", file=sys.stderr)
        sys.exit(130)
