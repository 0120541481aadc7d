"""One measurement = one load-generator run against one port, flattened to a dict of numbers.

Keys: rps, answered (complete answers the server gave), errors, inflight_bound (requests a
generator may have left unanswered when it stopped: wrk drops its connections at the deadline,
loadgen.py waits for every answer), then total_p50/p90/p99 (ms) and, for streams,
ttft_* (first content delta) and ttfb_* (first body byte).
"""

from __future__ import annotations

from pathlib import Path

from procs import BENCH, HOST, LOAD_CPUS, PYTHON, pinned, run_json

WRK_SCRIPT = BENCH / "lua" / "bodies.lua"
WRK_GET_SCRIPT = BENCH / "lua" / "get.lua"
PATH = "/v1/chat/completions"
PERCENTILES = ("p50", "p90", "p99")


def wrk(port: int, bodies: Path | None, connections: int, seconds: float) -> dict[str, float]:
    """Closed loop, one wrk thread (it has one core, shared with the upstream). `bodies` None: GET /."""
    script = ["-s", str(WRK_SCRIPT), f"http://{HOST}:{port}{PATH}", "--", str(bodies)] if bodies else \
        ["-s", str(WRK_GET_SCRIPT), f"http://{HOST}:{port}/"]
    command = pinned(LOAD_CPUS, ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
                                 *script])
    raw = run_json(command, timeout=seconds + 60, marker="BENCH_JSON")
    errors = raw["errors"]
    result = {"rps": raw["requests"] / (raw["duration_us"] / 1e6), "answered": raw["requests"],
              "errors": sum(errors.values()), "inflight_bound": connections}
    for key in PERCENTILES:
        result[f"total_{key}"] = raw["latency_us"][key] / 1000
    return result


def loadgen(port: int, bodies: Path, connections: int, *, seconds: float = 0.0, warmup: float = 0.0,
            rate: float | None = None, count: int | None = None) -> dict[str, float]:
    command = [PYTHON, str(BENCH / "loadgen.py"), "--port", str(port), "--bodies", str(bodies),
               "--connections", str(connections), "--duration", str(seconds), "--warmup", str(warmup)]
    if rate is not None:
        command += ["--rate", str(rate)]
    if count is not None:
        command += ["--count", str(count)]
    raw = run_json(pinned(LOAD_CPUS, command), timeout=seconds + warmup + 120 + (count or 0) / 200)
    result = {"rps": raw["rps"], "answered": raw["answered"], "errors": raw["failed"], "inflight_bound": 0,
              "backlog_max": raw["backlog_max"], "slack_p99": raw["slack_ms"]["p99"]}
    for metric in ("total", "ttft", "ttfb"):
        for key in PERCENTILES:
            result[f"{metric}_{key}"] = raw[f"{metric}_ms"][key]
    return result
