"""What the gateway hands the recorder: one record when a request leaves, one when its answer ends.

Records carry raw bytes straight from the wire; turning them into rows (decoding, parsing usage,
synthesizing a streamed completion, resolving the session) is the writer's job, off the hot path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class RequestRecord:
    request_id: str
    timestamp: int  # ms since the epoch
    method: str
    path: str
    endpoint: str  # "chat", "completions" or "embeddings"
    # What opens the conversation (first user message, prompt, input), taken from the parsed request
    # so the parsed body need not wait in memory for the recorder: it names the session.
    first_user_text: str
    openai_request: bytes
    provider_request: bytes | None  # None when the upstream got `openai_request` unchanged
    model: str
    provider: str
    upstream_model: str
    stream: bool
    session_hint: str | None  # an explicit X-Session-Id
    api_key_hash: str | None  # a fingerprint of the caller's key, never the key
    replayed: bool = False  # read back from an earlier run's journal: it may be committed already

    def size(self) -> int:
        return len(self.openai_request) + len(self.provider_request or b"") + 512


@dataclass(slots=True)
class ResponseRecord:
    request_id: str
    response_id: str
    timestamp: int
    status_code: int
    duration_ms: int
    openai_response: bytes | None = None
    provider_response: bytes | None = None
    # For streams: the OpenAI SSE events as sent, from which the writer synthesizes the completion.
    stream_events: list[bytes] | None = None
    ttft_ms: int | None = None
    error: str | None = None
    cut: bool = False  # the client went away before the end
    extra: dict[str, Any] = field(default_factory=dict)
    replayed: bool = False  # read back from an earlier run's journal: it may be committed already

    def size(self) -> int:
        events = sum(len(e) for e in self.stream_events) if self.stream_events else 0
        return len(self.openai_response or b"") + len(self.provider_response or b"") + events + 512


Record = RequestRecord | ResponseRecord
