"""A small HTTP/1.1 load generator (asyncio + uvloop + httptools) for what wrk cannot do.

* Open loop (`--rate R`): requests are scheduled at a constant rate over `--connections` keep-alive
  connections, whatever the server does. A closed-loop generator at 32 connections saturates the
  gateway, and its latency is then queueing (32 / throughput), not overhead; at a fixed offered rate
  below capacity the latency shows what the gateway adds. A request due while every connection is
  busy waits in a backlog, and that wait is charged to the server, so a stall is not hidden
  (no coordinated omission).
* Closed loop (no `--rate`): each connection sends its next request as soon as the previous answer
  ends; with `--count N` exactly N requests are sent, for the recorded-rows check.
* Streams: for a `"stream":true` body it times the first body byte and the first token (the first
  SSE event whose delta carries non-empty content), as well as the end of the answer.

Latency runs from the moment the request was handed to the socket (closed loop), or from the
moment it was scheduled (open loop: backlog included). How late the generator itself was in
sending scheduled requests is reported as `slack_ms`.
Prints one JSON object on stdout. Only ever connects to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import json
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httptools
import uvloop

HOST = "127.0.0.1"
# The first delta with content: `"content":"` followed by anything but the closing quote.
CONTENT_DELTA = re.compile(rb'"content":"[^"]')
DRAIN_TIMEOUT_S = 30.0


@dataclass(slots=True)
class Sample:
    start: float
    stream: bool
    status: int = 0
    first_byte: float = 0.0
    first_token: float = 0.0
    end: float = 0.0


@dataclass
class Tally:
    """Everything the run saw; `samples` holds only those inside the measured window."""

    samples: list[Sample] = field(default_factory=list)
    answered: int = 0  # complete 200 answers, warm-up included (for the rows-recorded check)
    failed: int = 0  # non-200 answers and requests lost with their connection
    sent: int = 0
    slack: list[float] = field(default_factory=list)
    backlog_max: int = 0


class Client(asyncio.Protocol):
    """One keep-alive connection carrying one request at a time."""

    def __init__(self, on_done: Callable[[Client, Sample], None]) -> None:
        self.on_done = on_done
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.sample: Sample | None = None
        self.tail = b""
        self.now = 0.0
        self.alive = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, payload: bytes, sample: Sample) -> None:
        assert self.transport is not None
        self.sample = sample
        self.tail = b""
        self.transport.write(payload)

    def data_received(self, data: bytes) -> None:
        # One clock read per read(): every callback fed by this chunk happened "now".
        self.now = time.perf_counter()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def on_headers_complete(self) -> None:
        assert self.sample is not None
        self.sample.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        sample = self.sample
        assert sample is not None
        if not sample.first_byte:
            sample.first_byte = self.now
        if sample.stream and not sample.first_token:
            # Keep a short tail so a pattern split across two reads is still found.
            window = self.tail + body
            if CONTENT_DELTA.search(window):
                sample.first_token = self.now
            else:
                self.tail = window[-16:]

    def on_message_complete(self) -> None:
        sample = self.sample
        assert sample is not None
        sample.end = self.now
        self.sample = None
        self.on_done(self, sample)

    def connection_lost(self, exc: Exception | None) -> None:
        self.alive = False
        sample = self.sample
        if sample is not None:
            self.sample = None
            self.on_done(self, sample)  # status stays 0: counted as failed


def load_payloads(path: Path, port: int, target: str) -> list[tuple[bytes, bool]]:
    payloads = []
    for body in path.read_bytes().splitlines():
        if not body:
            continue
        head = (f"POST {target} HTTP/1.1\r\nhost: {HOST}:{port}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\n\r\n").encode()
        payloads.append((head + body, b'"stream":true' in body))
    return payloads


class Run:
    """Shared state of one run: the payload cycle, the idle connections, the tally."""

    def __init__(self, payloads: list[tuple[bytes, bool]], window: tuple[float, float], *, connections: int,
                 closed_loop: bool, count: int | None) -> None:
        self.payloads = payloads
        self.next_payload = 0
        self.window = window
        self.tally = Tally()
        self.idle: list[Client] = []
        self.backlog: collections.deque[float] = collections.deque()
        self.in_flight = 0
        self.closed_loop = closed_loop
        self.remaining = count  # count mode: requests still to send
        self.stopped = False
        self.dead = 0
        self.connections = connections
        self.settled: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def dispatch(self, client: Client, start: float) -> None:
        payload, stream = self.payloads[self.next_payload]
        self.next_payload = (self.next_payload + 1) % len(self.payloads)
        self.in_flight += 1
        self.tally.sent += 1
        client.send(payload, Sample(start, stream))

    def finished(self, client: Client, sample: Sample) -> None:
        self.in_flight -= 1
        tally = self.tally
        if sample.status == 200:
            tally.answered += 1
            if self.window[0] <= sample.start < self.window[1]:
                tally.samples.append(sample)
        else:
            tally.failed += 1
        if client.alive:
            self.next_for(client)
        else:
            self.dead += 1
        if self.in_flight == 0 and not self.settled.done() and (self.stopped or self.remaining == 0 or
                                                                self.dead == self.connections):
            self.settled.set_result(None)

    def next_for(self, client: Client) -> None:
        """A connection is free: give it the next request, or park it."""
        if self.backlog:
            # Charged from when it fell due: the wait for a free connection is the server's doing.
            self.dispatch(client, self.backlog.popleft())
        elif self.remaining is not None and self.remaining > 0 and not self.stopped:
            self.remaining -= 1
            self.dispatch(client, time.perf_counter())
        elif self.remaining is None and not self.stopped and self.closed_loop:
            self.dispatch(client, time.perf_counter())
        else:
            self.idle.append(client)


async def connect(run: Run, port: int, connections: int) -> list[Client]:
    loop = asyncio.get_running_loop()
    clients = []
    for _ in range(connections):
        _, client = await loop.create_connection(lambda: Client(run.finished), HOST, port)
        clients.append(client)
    return clients


def fall_due(run: Run, due: float) -> None:
    """Request `due` is due (called on the loop by the pacer): send it, or queue it if all are busy."""
    now = time.perf_counter()
    run.tally.slack.append(now - due)
    if run.idle:
        run.dispatch(run.idle.pop(), due)
    else:
        run.backlog.append(due)
        run.tally.backlog_max = max(run.tally.backlog_max, len(run.backlog))


def pace(loop: asyncio.AbstractEventLoop, run: Run, rate: float, start: float, done: asyncio.Future[None]) -> None:
    """The pacer thread: request i falls due at start + i / rate.

    Event-loop timers have 1 ms resolution (libuv), so requests would leave in bursts that queue
    behind each other in the server and inflate its latency; sleeping in a thread (hrtimers, tens
    of microseconds) and handing each request to the loop keeps the arrivals even."""
    period = 1.0 / rate
    end = run.window[1]
    index = 0
    while (due := start + index * period) < end:
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        loop.call_soon_threadsafe(fall_due, run, due)
        index += 1
    loop.call_soon_threadsafe(done.set_result, None)


async def open_loop(run: Run, rate: float, start: float) -> None:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    # The loop thread releases the GIL in epoll; a short switch interval bounds the pacer's wait
    # for it when the loop is busy reading answers.
    sys.setswitchinterval(0.0002)
    pacer = threading.Thread(target=pace, args=(loop, run, rate, start, done), name="pacer", daemon=True)
    pacer.start()
    await done
    pacer.join()


async def drive(args: argparse.Namespace) -> Tally:
    payloads = load_payloads(args.bodies, args.port, args.path)
    start = time.perf_counter() + 0.05
    measure_from = start + args.warmup
    window = (measure_from, measure_from + args.duration) if args.count is None else (0.0, float("inf"))
    run = Run(payloads, window, connections=args.connections, closed_loop=args.rate is None, count=args.count)
    clients = await connect(run, args.port, args.connections)
    gc.collect()
    gc.freeze()  # keep the collector's pauses out of the latencies
    if args.rate is not None:
        run.idle.extend(clients)
        await open_loop(run, args.rate, start)
    else:
        await asyncio.sleep(max(0.0, start - time.perf_counter()))
        for client in clients:
            run.next_for(client)
        if args.count is None:
            await asyncio.sleep(max(0.0, window[1] - time.perf_counter()))
    if args.count is None:
        run.stopped = True
    if run.in_flight:
        try:
            await asyncio.wait_for(run.settled, DRAIN_TIMEOUT_S + (args.count or 0) / 100)
        except TimeoutError:
            run.tally.failed += run.in_flight  # never answered: the summary says so
    for client in clients:
        if client.transport is not None:
            client.transport.close()
    run.tally.failed += len(run.backlog)
    return run.tally


def percentiles(values: list[float]) -> dict[str, float]:
    """Nearest-rank percentiles in milliseconds."""
    if not values:
        return {"p50": 0.0, "p90": 0.0, "p99": 0.0, "mean": 0.0, "max": 0.0, "n": 0}
    ordered = sorted(values)

    def rank(p: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))] * 1000

    return {"p50": rank(50), "p90": rank(90), "p99": rank(99), "mean": sum(ordered) / len(ordered) * 1000,
            "max": ordered[-1] * 1000, "n": len(ordered)}


def summarize(tally: Tally, args: argparse.Namespace) -> dict[str, object]:
    samples = tally.samples
    streams = [s for s in samples if s.stream]
    if args.count is None:
        seconds = args.duration
    else:
        seconds = max(s.end for s in samples) - min(s.start for s in samples) if samples else 0.0
    return {
        "answered": tally.answered, "failed": tally.failed, "sent": tally.sent,
        "measured": len(samples), "seconds": seconds, "rps": len(samples) / seconds if seconds else 0.0,
        "offered_rps": args.rate, "connections": args.connections, "backlog_max": tally.backlog_max,
        "total_ms": percentiles([s.end - s.start for s in samples]),
        "ttfb_ms": percentiles([s.first_byte - s.start for s in streams if s.first_byte]),
        "ttft_ms": percentiles([s.first_token - s.start for s in streams if s.first_token]),
        "slack_ms": percentiles(tally.slack),
    }


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/v1/chat/completions")
    parser.add_argument("--bodies", type=Path, required=True, help="one JSON body per line, sent in turn")
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--rate", type=float, default=None, help="open loop: requests/s (default closed loop)")
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first")
    parser.add_argument("--count", type=int, default=None, help="closed loop: send exactly this many")
    args = parser.parse_args(argv)
    if args.count is not None and args.rate is not None:
        parser.error("--count is closed loop only")
    return args


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    tally = uvloop.run(drive(args))
    json.dump(summarize(tally, args), sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(sys.argv[1:])
