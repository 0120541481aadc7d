"""Starting, pinning, watching and always stopping the processes a benchmark run needs.

Every process is started in a session of its own, so a Ctrl-C in the terminal reaches only the
runner, which then stops them in order (SIGTERM, wait, SIGKILL of that process group as a last resort).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
VENV_BIN = ROOT / ".venv" / "bin"
PYTHON = str(VENV_BIN / "python")
HOST = "127.0.0.1"
GATEWAY_CPUS = "0"
LOAD_CPUS = "1"  # the fake upstream and the load generators


class BenchError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def pinned(cpus: str, command: list[str]) -> list[str]:
    return ["taskset", "-c", cpus, *command]


class Processes:
    """The long-running processes of a run; leaving the `with` block stops whatever is still up."""

    def __init__(self) -> None:
        self.running: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *_: object) -> None:
        for process in reversed(self.running):
            self.stop(process, timeout=10)

    def start(self, command: list[str], *, cwd: Path, env: dict[str, str] | None = None,
              log: Path | None = None) -> subprocess.Popen[bytes]:
        output = log.open("wb") if log else subprocess.DEVNULL
        try:
            process = subprocess.Popen(command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=output,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            if log:
                output.close()  # type: ignore[union-attr]
        self.running.append(process)
        return process

    def stop(self, process: subprocess.Popen[bytes], timeout: float) -> float:
        """SIGTERM and wait (a gateway drains its recorder then); returns the seconds it took."""
        started = time.monotonic()
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                # Its own process group (start_new_session): this reaches its workers and nothing else.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if process in self.running:
            self.running.remove(process)
        return time.monotonic() - started


def wait_http(port: int, path: str, timeout: float, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError(f"process on port {port} exited with status {process.returncode}")
        connection = http.client.HTTPConnection(HOST, port, timeout=2)
        try:
            connection.request("GET", path)
            if connection.getresponse().status < 500:
                return
        except OSError:
            pass
        finally:
            connection.close()
        time.sleep(0.1)
    raise BenchError(f"nothing answered on {HOST}:{port}{path} within {timeout:.0f}s")


def wait_port(port: int, timeout: float, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError(f"process on port {port} exited with status {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=1):
            return
        time.sleep(0.05)
    raise BenchError(f"nothing listening on {HOST}:{port} within {timeout:.0f}s")


def scan() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, CPU ticks used so far) for every process, from /proc."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # The command name may hold spaces or parentheses: the fields after the last ')' are safe.
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        found[int(entry.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    return found


def tree(root: int, processes: dict[int, tuple[int, int]]) -> list[int]:
    """root and every process below it."""
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in processes.items():
        children.setdefault(parent, []).append(pid)
    found, todo = [], [root]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def descendants(pid: int) -> list[int]:
    """pid and every process below it (uvicorn's workers)."""
    return tree(pid, scan())


class ForeignLoad(threading.Thread):
    """Samples, once a second, the CPU used by processes that are not part of this run (another
    user's tests on a shared machine make the figures noisy: the report says how much there was).
    Kernel threads are left out: their work (writeback, networking) is mostly done for the run."""

    def __init__(self, interval: float = 1.0) -> None:
        super().__init__(name="foreign-load", daemon=True)
        self.interval = interval
        self.samples: list[tuple[float, float]] = []  # (time.monotonic(), cores used by others since the last)
        self._stop_event = threading.Event()
        self._ticks = os.sysconf("SC_CLK_TCK")

    def _foreign(self, processes: dict[int, tuple[int, int]]) -> dict[int, int]:
        skip = set(tree(os.getpid(), processes)) | set(tree(2, processes))
        return {pid: ticks for pid, (_, ticks) in processes.items() if pid not in skip}

    def run(self) -> None:
        before = self._foreign(scan())
        while not self._stop_event.wait(self.interval):
            now = self._foreign(scan())
            used = sum(ticks - before.get(pid, 0) for pid, ticks in now.items())
            self.samples.append((time.monotonic(), used / self._ticks / self.interval))
            before = now

    def mean_since(self, started: float) -> float:
        """Cores used by other processes on average since `started` (a time.monotonic() value)."""
        recent = [cores for when, cores in self.samples if when > started]
        return sum(recent) / len(recent) if recent else 0.0

    def stop(self) -> tuple[float, float]:
        """(mean, max) cores used by other processes while sampling."""
        self._stop_event.set()
        self.join()
        cores = [cores for _, cores in self.samples]
        return (sum(cores) / len(cores), max(cores)) if cores else (0.0, 0.0)


def memory_kb(pid: int, field: str) -> int:
    """A /proc/PID/status field (VmHWM: peak resident set; VmRSS: now), summed over the process tree."""
    total = 0
    for member in descendants(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    total += int(line.split()[1])
    return total


def run_json(command: list[str], timeout: float, marker: str = "") -> dict:
    """Run a load generator to completion and parse the JSON line it prints (after `marker`)."""
    result = subprocess.run(command, capture_output=True, timeout=timeout, check=False, start_new_session=True,
                            cwd=ROOT)
    out = result.stdout.decode(errors="replace")
    for line in reversed(out.splitlines()):
        if line.startswith(marker) and line[len(marker):].lstrip().startswith("{"):
            return json.loads(line[len(marker):])
    raise BenchError(f"{' '.join(command[:6])}... exited {result.returncode} without a result:\n"
                     f"{out[-2000:]}{result.stderr.decode(errors='replace')[-2000:]}")


@dataclass
class Gateway:
    process: subprocess.Popen[bytes]
    port: int
    workdir: Path
    workers: int
    cpus: str

    @property
    def database(self) -> Path:
        return self.workdir / "data" / "chatledger.db"

    def peak_rss_mb(self) -> float:
        return memory_kb(self.process.pid, "VmHWM") / 1024

    def rss_mb(self) -> float:
        return memory_kb(self.process.pid, "VmRSS") / 1024


def start_upstream(processes: Processes, workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    process = processes.start(pinned(LOAD_CPUS, [PYTHON, str(BENCH / "upstream.py"), str(port)]), cwd=workdir,
                              log=workdir / "upstream.log")
    wait_port(port, 15, process)
    return process, port


def start_hello(processes: Processes, workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    """bench/hello.py on the gateway's core: what one core answers with no gateway work at all."""
    port = free_port()
    process = processes.start(pinned(GATEWAY_CPUS, [PYTHON, str(BENCH / "hello.py"), str(port)]), cwd=workdir,
                              log=workdir / "hello.log")
    wait_port(port, 15, process)
    return process, port


def start_gateway(processes: Processes, workdir: Path, upstream_port: int, *, cpus: str = GATEWAY_CPUS,
                  workers: int = 1, extra_env: dict[str, str] | None = None) -> Gateway:
    """`chatledger serve` in a fresh directory of its own (its database lands in ./data/)."""
    workdir.mkdir(parents=True)
    port = free_port()
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("OPENAI_", "CHATLEDGER_", "DATABASE_", "ANTHROPIC_", "DASHSCOPE_"))}
    env.update(OPENAI_BASE_URL=f"http://{HOST}:{upstream_port}/v1", OPENAI_API_KEY="bench", LOG_LEVEL="warning")
    env.update(extra_env or {})
    command = pinned(cpus, [str(VENV_BIN / "chatledger"), "serve", "--port", str(port), "--workers", str(workers)])
    process = processes.start(command, cwd=workdir, env=env, log=workdir / "gateway.log")
    try:
        wait_http(port, "/health", 60, process)
    except BenchError as exc:
        raise BenchError(f"{exc}\n{(workdir / 'gateway.log').read_text(errors='replace')[-3000:]}") from exc
    return Gateway(process, port, workdir, workers, cpus)


def count_rows(database: Path) -> dict[str, int]:
    with contextlib.closing(sqlite3.connect(database)) as connection:
        return {table: connection.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
                for table in ("requests", "responses")}
