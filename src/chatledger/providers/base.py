"""The provider interface: translate an OpenAI call into the upstream's request, and its answer back.

A provider never touches the store or the web framework. The gateway calls `prepare` (pure: the
bytes to send, so they can be recorded before the call), then `complete` or `stream`. Both return
OpenAI's wire format; `stream` yields OpenAI SSE bytes (any alignment; the gateway splits events).
Errors are raised from `chatledger.errors`: an upstream error status as `UpstreamHTTPError` with an
OpenAI-shaped body, before the first streamed byte when the upstream refuses a stream.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

from chatledger.config import ProviderConfig
from chatledger.errors import InvalidRequest, error_body
from chatledger.transport import Timeouts, Transport

Endpoint = Literal["chat", "completions", "embeddings"]


@dataclass(slots=True)
class ProviderCall:
    endpoint: Endpoint
    body: dict[str, Any]  # the OpenAI request as parsed
    raw: bytes  # ... and as received
    upstream_model: str
    stream: bool
    client_wants_usage: bool  # the client itself set stream_options.include_usage
    caller_authorization: str | None  # forwarded only to a provider configured without a key


@dataclass(slots=True)
class UpstreamRequest:
    url: str
    headers: dict[str, str]
    body: bytes
    # What the recorder stores as the provider request; None when `body` is the client's bytes.
    recorded: bytes | None
    # A translating provider keeps the upstream's own stream here, recorded beside OpenAI's chunks.
    provider_stream: list[bytes] | None = None


@dataclass(slots=True)
class Completion:
    status: int
    body: bytes  # OpenAI-format JSON
    provider_body: bytes | None  # the upstream's own answer when it differs from `body`
    content_type: bytes = b"application/json"
    relay_headers: list[tuple[bytes, bytes]] = field(default_factory=list)


class Provider(ABC):
    endpoints: frozenset[Endpoint] = frozenset({"chat"})

    def __init__(self, config: ProviderConfig, transport: Transport, default_timeouts: Timeouts) -> None:
        self.config = config
        self.name = config.name
        self.transport = transport
        self.timeouts = Timeouts(config.connect_timeout or default_timeouts.connect,
                                 config.read_timeout or default_timeouts.read)

    def check_endpoint(self, endpoint: Endpoint) -> None:
        if endpoint not in self.endpoints:
            raise InvalidRequest(f"provider {self.name!r} ({self.config.type}) does not serve {endpoint}",
                                 code="unsupported_endpoint")

    @abstractmethod
    def prepare(self, call: ProviderCall) -> UpstreamRequest: ...

    @abstractmethod
    async def complete(self, call: ProviderCall, request: UpstreamRequest) -> Completion: ...

    @abstractmethod
    def stream(self, call: ProviderCall, request: UpstreamRequest) -> AsyncIterator[bytes]: ...

    async def list_models(self) -> list[dict[str, Any]]:
        return []


def openai_error(status: int, message: str, type_: str = "upstream_error", code: str | None = None) -> bytes:
    """An OpenAI-shaped error body for upstreams that speak another dialect."""
    del status
    return error_body(message, type_, code)
