"""Fill a store with synthetic exchanges for bench/query.py, through the recorder's own sink.

The rows and the hourly rollups (usage_hourly) are written by `Store.sink(pricer).write(batch)` and
`sink.maintain(idle=False)`, exactly what the gateway's Writer thread calls, and the full-text index
(`<ledger stem>-search.db`) by `SQLiteSearchIndex.index_next`, what the gateway's search indexer
thread calls, running beside the writer as it does in the gateway; so the files are what a gateway
would have left after recording them. Ids are UUIDv7 of the exchange's time, as the gateway's.

What is recorded (deterministic for a given seed):
* 50,000 sessions over 30 days, each 2 to 38 turns (20 on average, 1,000,000 exchanges in all); a
  turn resends the system prompt, the opening user message and as much of the latest history as
  fits in ~8 KB (request bodies 1-8 KB); answers are 0.5-2 KB.
* 12 models over 3 providers (openai, anthropic, dashscope), skewed; anthropic requests carry the
  translated provider body as well, as the gateway stores it.
* 20 API-key fingerprints, skewed; ~30% of sessions stream (their answers are recorded as the OpenAI
  SSE chunk events they were sent as, which the writer folds into a completion); ~3% of answers are
  errors (429, 500, 503, 400).
* Text is drawn from a 4,000-word vocabulary with a Zipf distribution (a hundred English function
  words first, then made-up words), so full-text search sees common, middling and rare terms.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import heapq
import itertools
import random
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from chatledger.config import Settings, load_gateway_config
from chatledger.pricing import Pricer
from chatledger.sessions import first_user_text
from chatledger.store import Store
from chatledger.store.records import Record, RequestRecord, ResponseRecord
from chatledger.store.search_index import SQLiteSearchIndex, search_path
from chatledger.store.writer import Sink

DAY_MS = 86_400_000
START_MS = 1_746_057_600_000  # 2025-05-01T00:00:00Z: the first session opens on or after this
DAYS = 30
SESSIONS = 50_000
BATCH = 1000  # records per sink.write, as a busy gateway's writer would batch them
MAX_BODY = 8 * 1024
SESSION_TIMEOUT_MS = 30 * 60 * 1000
VOCABULARY_SIZE = 4000
FILL_VERSION = 4  # bump when what is generated changes, so that cached stores are filled anew
# (model, provider, weight)
MODELS = [
    ("gpt-4o-mini", "openai", 30), ("gpt-4o", "openai", 12), ("gpt-4.1", "openai", 8),
    ("gpt-4.1-mini", "openai", 10), ("o3-mini", "openai", 4),
    ("claude-3-5-haiku-20241022", "anthropic", 8), ("claude-3-5-sonnet-20241022", "anthropic", 6),
    ("claude-sonnet-4-20250514", "anthropic", 7), ("claude-opus-4-20250514", "anthropic", 2),
    ("qwen-plus", "dashscope", 6), ("qwen-max", "dashscope", 3), ("qwen-turbo", "dashscope", 4),
]
# What the gateway stores for a caller: sha256 of the key, 16 hex digits (sessions.api_key_fingerprint).
API_KEYS = [hashlib.sha256(f"sk-bench-{index}".encode()).hexdigest()[:16] for index in range(20)]
ERRORS = [(429, "rate_limit_exceeded", "Rate limit reached for requests"),
          (500, "server_error", "The server had an error while processing your request"),
          (503, "overloaded", "The engine is currently overloaded, please try again later"),
          (400, "context_length_exceeded", "This model's maximum context length is 128000 tokens")]
_COMMON_TEXT = (
    "the of and to a in is it you that he was for on are with as I his they be at one have this from or had by "
    "not word but what some we can out other were all there when up use your how said an each she which do their "
    "time if will way about many then them write would like so these her long make thing see him two has look "
    "more day could go come did number sound no most people my over know water than call first who may down side "
    "been now find any new work part take get place made live where after back little only round man year came "
    "show every good me give our under name very through just form sentence great think say help low line differ"
)
COMMON_WORDS = _COMMON_TEXT.split()


# -- text ---------------------------------------------------------------------------------------------

def vocabulary(seed: int = 7) -> list[str]:
    """The words, most frequent first: English function words, then made-up ones of 1-4 syllables."""
    rng = random.Random(seed)
    onsets = ["b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z",
              "br", "cl", "dr", "fl", "gr", "pl", "st", "tr", "sh", "ch", "th", "qu"]
    nuclei = ["a", "e", "i", "o", "u", "ai", "ea", "io", "ou", "y"]
    codas = ["", "", "", "n", "r", "s", "t", "l", "m", "x", "nd", "rk", "st"]
    words = list(dict.fromkeys(COMMON_WORDS))
    seen = set(words)
    while len(words) < VOCABULARY_SIZE:
        syllables = rng.choice((1, 2, 2, 2, 3, 3, 4))
        word = "".join(rng.choice(onsets) + rng.choice(nuclei) + rng.choice(codas) for _ in range(syllables))
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words


def zipf_weights(count: int) -> list[float]:
    return list(itertools.accumulate(1.0 / (rank + 1) for rank in range(count)))


class TextMaker:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.words = vocabulary()
        self.cumulative = zipf_weights(len(self.words))

    def text(self, size: int) -> str:
        """Sentences of 5-20 words, about `size` characters long."""
        words = self.rng.choices(self.words, cum_weights=self.cumulative, k=max(4, size // 6))
        sentences = []
        start = 0
        while start < len(words):
            end = start + self.rng.randint(5, 20)
            sentence = " ".join(words[start:end])
            sentences.append(sentence[:1].upper() + sentence[1:] + ".")
            start = end
        return " ".join(sentences)


def uuid7_at(ms: int, rng: random.Random) -> str:
    """A UUIDv7 for the time `ms` (the gateway's ids.uuid7 takes the clock; this one is deterministic)."""
    return str(uuid.UUID(int=ms << 80 | 0x7 << 76 | rng.getrandbits(12) << 64 | 0b10 << 62 | rng.getrandbits(62)))


# -- sessions and exchanges ---------------------------------------------------------------------------

@dataclass(slots=True)
class Session:
    model: str
    provider: str
    api_key_hash: str
    stream: bool
    system: str
    turns_left: int
    max_body: int  # how much history this client resends (its context window, as it were)
    history: list[dict[str, str]] = field(default_factory=list)  # the first user message, then turns


@dataclass(slots=True)
class Exchange:
    request: RequestRecord
    response: ResponseRecord
    next_turn_ms: int


class Generator:
    """Exchanges in time order: a heap of sessions keyed by when their next turn is sent."""

    def __init__(self, total: int, seed: int = 1) -> None:
        self.rng = random.Random(seed)
        self.text = TextMaker(self.rng)
        self.total = total
        self.systems = [self.text.text(self.rng.randint(600, 1500)) for _ in range(200)]
        self.model_cumulative = list(itertools.accumulate(weight for _, _, weight in MODELS))
        self.key_cumulative = zipf_weights(len(API_KEYS))

    def turn_counts(self, sessions: int) -> list[int]:
        """Turns per session, 2-38, then nudged one at a time (2-60) so that they add up to `total`."""
        counts = [self.rng.randint(2, 38) for _ in range(sessions)]
        difference = self.total - sum(counts)
        step = 1 if difference > 0 else -1
        while difference:
            index = self.rng.randrange(sessions)
            if 2 <= counts[index] + step <= 60:
                counts[index] += step
                difference -= step
        return counts

    def exchanges(self) -> Iterator[Exchange]:
        sessions = min(SESSIONS, max(1, self.total // 20))
        starts = sorted(START_MS + self.rng.randrange((DAYS * DAY_MS) - 3 * 3_600_000) for _ in range(sessions))
        heap: list[tuple[int, int, Session | int]] = [
            (start, index, turns) for index, (start, turns) in enumerate(zip(starts, self.turn_counts(sessions),
                                                                               strict=True))]
        heapq.heapify(heap)
        while heap:
            at, index, state = heapq.heappop(heap)
            session = self.open_session(state) if isinstance(state, int) else state
            exchange = self.exchange(session, at)
            session.turns_left -= 1
            if session.turns_left:
                heapq.heappush(heap, (exchange.next_turn_ms, index, session))
            yield exchange

    def open_session(self, turns: int) -> Session:
        rng = self.rng
        model, provider, _ = MODELS[bisect.bisect(self.model_cumulative, rng.random() * self.model_cumulative[-1])]
        key = API_KEYS[bisect.bisect(self.key_cumulative, rng.random() * self.key_cumulative[-1])]
        opening = {"role": "user", "content": self.text.text(rng.randint(150, 700))}
        return Session(model, provider, key, rng.random() < 0.3, rng.choice(self.systems), turns,
                       rng.randint(2048, MAX_BODY), [opening])

    def exchange(self, session: Session, at: int) -> Exchange:
        rng = self.rng
        if len(session.history) > 1:
            session.history.append({"role": "user", "content": self.text.text(rng.randint(80, 600))})
        body = request_body(session)
        raw = orjson.dumps(body)
        request_id = uuid7_at(at, rng)
        request = RequestRecord(
            request_id=request_id, timestamp=at, method="POST", path="/v1/chat/completions", endpoint="chat",
            first_user_text=first_user_text(body, "chat"), openai_request=raw,
            provider_request=provider_request(body, session), model=session.model,
            provider=session.provider, upstream_model=session.model, stream=session.stream, session_hint=None,
            api_key_hash=session.api_key_hash)
        if rng.random() < 0.03:
            response = self.error_response(request_id, at)
        else:
            answer = self.text.text(rng.randint(450, 1900))
            response = self.answer_response(session, request_id, at, answer, len(raw) // 4)
            session.history.append({"role": "assistant", "content": answer})
        # The user reads the answer and types the next turn: 5 s to 5 min, well within the session timeout.
        next_turn = response.timestamp + rng.randint(5_000, 300_000)
        return Exchange(request, response, next_turn)

    def error_response(self, request_id: str, at: int) -> ResponseRecord:
        status, code, message = self.rng.choice(ERRORS)
        body = orjson.dumps({"error": {"message": message, "type": "invalid_request_error" if status == 400
                                       else "server_error", "param": None, "code": code}})
        duration = self.rng.randint(20, 900)
        return ResponseRecord(request_id=request_id, response_id=uuid7_at(at + duration, self.rng),
                              timestamp=at + duration, status_code=status, duration_ms=duration,
                              openai_response=body)

    def answer_response(self, session: Session, request_id: str, at: int, answer: str,
                        prompt_tokens: int) -> ResponseRecord:
        rng = self.rng
        duration = int(min(120_000, rng.lognormvariate(7.3, 0.6)))  # median ~1.5 s
        completion_id = "chatcmpl-" + uuid.UUID(int=rng.getrandbits(128)).hex[:24]
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(answer) // 4,
                 "total_tokens": prompt_tokens + len(answer) // 4}
        response_id = uuid7_at(at + duration, rng)
        created = at // 1000
        if session.stream:
            ttft = min(duration, rng.randint(150, 900))
            return ResponseRecord(request_id=request_id, response_id=response_id, timestamp=at + duration,
                                  status_code=200, duration_ms=duration, ttft_ms=ttft,
                                  stream_events=stream_events(completion_id, created, session.model, answer, usage))
        completion = {"id": completion_id, "object": "chat.completion", "created": created, "model": session.model,
                      "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                                   "message": {"role": "assistant", "content": answer, "refusal": None}}],
                      "usage": usage, "system_fingerprint": "fp_bench"}
        provider_response = None
        if session.provider == "anthropic":
            provider_response = orjson.dumps({
                "id": "msg_" + completion_id[9:], "type": "message", "role": "assistant", "model": session.model,
                "content": [{"type": "text", "text": answer}], "stop_reason": "end_turn",
                "usage": {"input_tokens": usage["prompt_tokens"], "output_tokens": usage["completion_tokens"]}})
        return ResponseRecord(request_id=request_id, response_id=response_id, timestamp=at + duration,
                              status_code=200, duration_ms=duration, openai_response=orjson.dumps(completion),
                              provider_response=provider_response)


def request_body(session: Session) -> dict[str, Any]:
    """System prompt, the opening message, and the latest turns that fit in the session's `max_body`;
    at least the previous answer and the new turn (under 5 KB with the prompts, so always within 8 KB)."""
    opening, turns = session.history[0], session.history[1:]
    budget = session.max_body - len(session.system) - len(opening["content"]) - 300
    kept: list[dict[str, str]] = []
    for message in reversed(turns):
        budget -= len(message["content"]) + 40
        if budget < 0 and len(kept) >= 2:
            break
        kept.append(message)
    session.history[1:] = turns[-len(kept):] if kept else []
    messages = [{"role": "system", "content": session.system}, opening, *reversed(kept)]
    body: dict[str, Any] = {"model": session.model, "messages": messages, "temperature": 0.7, "max_tokens": 1024}
    if session.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def provider_request(body: dict[str, Any], session: Session) -> bytes | None:
    """Anthropic gets its own dialect (the gateway stores both); the others take the OpenAI body as is."""
    if session.provider != "anthropic":
        return None
    messages = body["messages"]
    translated = {"model": session.model, "system": messages[0]["content"], "max_tokens": body["max_tokens"],
                  "temperature": body["temperature"], "stream": session.stream,
                  "messages": [{"role": m["role"], "content": [{"type": "text", "text": m["content"]}]}
                               for m in messages[1:]]}
    return orjson.dumps(translated)


def stream_events(completion_id: str, created: int, model: str, answer: str, usage: dict[str, int]) -> list[bytes]:
    """The SSE events an OpenAI stream of `answer` is made of: a role chunk, ~12-word chunks, the finish
    chunk, the usage chunk (stream_options.include_usage) and [DONE]."""
    def event(delta: dict[str, Any], finish: str | None = None, chunk_usage: dict[str, int] | None = None,
              choices: bool = True) -> bytes:
        payload = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}] if choices else [],
                   "usage": chunk_usage}
        return b"data: " + orjson.dumps(payload) + b"\n\n"

    words = answer.split(" ")
    pieces = [" ".join(words[i:i + 12]) + (" " if i + 12 < len(words) else "") for i in range(0, len(words), 12)]
    return [event({"role": "assistant", "content": ""}), *(event({"content": piece}) for piece in pieces),
            event({}, "stop"), event({}, chunk_usage=usage, choices=False), b"data: [DONE]\n\n"]


# -- filling ------------------------------------------------------------------------------------------

def marker(path: Path) -> Path:
    """Written once a fill completes: what the store at `path` was filled with."""
    return path.with_name(path.name + ".fill.json")


def recorded(path: Path) -> int:
    """Exchanges stored, and indexed for search, by a completed fill of this version (else 0)."""
    try:
        filled = orjson.loads(marker(path).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return 0
    index = search_path(path)
    if not path.exists() or not index.exists() or filled.get("version") != FILL_VERSION:
        return 0
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as ledger, \
                contextlib.closing(sqlite3.connect(f"file:{index}?mode=ro", uri=True)) as search:
            responses = ledger.execute("SELECT COALESCE(MAX(id), 0) FROM responses").fetchone()[0]
            ledger_id = ledger.execute("SELECT value FROM metadata WHERE key = 'ledger_id'").fetchone()
            state = dict(search.execute("SELECT key, value FROM search_state").fetchall())
    except sqlite3.Error:
        return 0
    indexed = (ledger_id is not None and state.get("ledger_id") == ledger_id[0]
               and int(state.get("indexed_through", 0)) >= responses)
    return responses if indexed and responses == filled.get("exchanges") else 0


def open_sink(path: Path) -> Sink:
    settings = Settings(_env_file=None, openai_api_key="x", anthropic_api_key="x", dashscope_api_key="x")
    config = load_gateway_config(settings, environ={})
    store = Store.open(database_path=path, session_timeout_ms=SESSION_TIMEOUT_MS)
    store.close()
    return store.sink(Pricer(config))


class Indexer(threading.Thread):
    """The gateway's search indexer, in short: index what the writer has committed, beside it."""

    def __init__(self, path: Path) -> None:
        super().__init__(name="bench-search", daemon=True)
        self.index = SQLiteSearchIndex(path)
        self.done = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.done.is_set():
                if self.index.index_next(4096) < 4096:
                    time.sleep(0.5)
        except BaseException as exc:  # noqa: BLE001 - reported by finish()
            self.error = exc

    def finish(self) -> int:
        """Stop, then index whatever is left; returns the rows indexed."""
        self.done.set()
        self.join()
        if self.error is not None:
            raise self.error
        self.index.catch_up(4096)
        count = self.index._index.execute("SELECT COUNT(*) FROM search_index").fetchone()[0]
        self.index.close()
        return count


def fill(path: Path, total: int, seed: int = 1) -> None:
    """Record `total` exchanges into a new store at `path` (and its search index), printing progress."""
    index = search_path(path)
    for stale in (marker(path), path, index):
        for name in (stale, stale.with_name(stale.name + "-wal"), stale.with_name(stale.name + "-shm")):
            name.unlink(missing_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    sink = open_sink(path)
    indexer = Indexer(path)
    indexer.start()
    started = time.monotonic()
    batch: list[Record] = []
    done = 0
    for exchange in Generator(total, seed).exchanges():
        batch += (exchange.request, exchange.response)
        if len(batch) >= BATCH:
            sink.write(batch)
            sink.maintain(idle=False)  # as the gateway's Writer under steady load: keeps the WAL bounded
            done += len(batch) // 2
            batch = []
            if done % 50_000 == 0:
                print(f"  {done:>9,} exchanges recorded  {done / (time.monotonic() - started):,.0f}/s  "
                      f"search index through {indexer.index.watermark:,}", flush=True)
    if batch:
        sink.write(batch)
    sink.shutdown()  # checkpoints the WAL
    print(f"  {total:,} exchanges recorded in {time.monotonic() - started:,.0f} s; indexing the rest", flush=True)
    indexed = indexer.finish()
    if indexed != total:
        raise RuntimeError(f"the search index holds {indexed:,} rows, not {total:,}")
    marker(path).write_bytes(orjson.dumps({"version": FILL_VERSION, "exchanges": total, "seed": seed}))
    print(f"  {total:,} exchanges recorded and indexed in {time.monotonic() - started:,.0f} s", flush=True)


def ensure_filled(path: Path, total: int) -> None:
    """Reuse the store at `path` when it already holds `total` indexed exchanges, else fill it anew."""
    have = recorded(path)
    if have == total:
        print(f"reusing {path} ({have:,} exchanges)", flush=True)
        return
    print(f"filling {path} with {total:,} exchanges (found {have:,})", flush=True)
    fill(path, total)
