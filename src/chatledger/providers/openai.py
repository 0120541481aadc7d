"""Any OpenAI-compatible API (OpenAI, DashScope compatible-mode, vLLM, Ollama, OpenRouter, DeepSeek...).

Requests go through as received: the body is re-serialized only when the model name changes or a
stream needs `stream_options.include_usage` (so the recorder gets token counts). Answers come back
byte for byte.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

from chatledger.errors import UpstreamHTTPError
from chatledger.providers.base import Completion, Endpoint, Provider, ProviderCall, UpstreamRequest

PATHS: dict[Endpoint, str] = {"chat": "/chat/completions", "completions": "/completions",
                              "embeddings": "/embeddings"}


class OpenAIProvider(Provider):
    endpoints = frozenset({"chat", "completions", "embeddings"})

    def _headers(self, call: ProviderCall | None) -> dict[str, str]:
        headers = {"Content-Type": "application/json", **self.config.headers}
        if self.config.api_key is not None:
            headers["Authorization"] = f"Bearer {self.config.api_key.get_secret_value()}"
        elif call is not None and call.caller_authorization:
            headers["Authorization"] = call.caller_authorization
        return headers

    def prepare(self, call: ProviderCall) -> UpstreamRequest:
        body = call.raw
        changes: dict[str, Any] = {}
        if call.body.get("model") != call.upstream_model:
            changes["model"] = call.upstream_model
        if call.stream and call.endpoint != "embeddings" and not call.client_wants_usage:
            options = dict(call.body.get("stream_options") or {})
            options["include_usage"] = True
            changes["stream_options"] = options
        if changes:
            body = orjson.dumps({**call.body, **changes})
        url = self.config.base_url.rstrip("/") + PATHS[call.endpoint]
        return UpstreamRequest(url, self._headers(call), body, body if changes else None)

    async def complete(self, call: ProviderCall, request: UpstreamRequest) -> Completion:
        reply = await self.transport.request("POST", request.url, request.headers, request.body, self.timeouts)
        if reply.status >= 400:
            raise UpstreamHTTPError(reply.status, reply.body, f"upstream answered HTTP {reply.status}",
                                    content_type=reply.content_type, relay_headers=reply.relay_headers)
        return Completion(reply.status, reply.body, None, reply.content_type, reply.relay_headers)

    async def stream(self, call: ProviderCall, request: UpstreamRequest) -> AsyncIterator[bytes]:
        async with self.transport.stream(request.url, request.headers, request.body, self.timeouts) as reply:
            if reply.status >= 400:
                body = await reply.read()
                raise UpstreamHTTPError(reply.status, body, f"upstream answered HTTP {reply.status}",
                                        content_type=reply.content_type, relay_headers=reply.relay_headers)
            async for chunk in reply.chunks():
                yield chunk

    async def list_models(self) -> list[dict[str, Any]]:
        url = self.config.base_url.rstrip("/") + "/models"
        reply = await self.transport.request("GET", url, self._headers(None), None, self.timeouts)
        if reply.status != 200:
            return []
        data = orjson.loads(reply.body).get("data")
        return data if isinstance(data, list) else []
