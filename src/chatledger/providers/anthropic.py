"""Claude through Anthropic's Messages API, translated to and from OpenAI's chat completions.

System and developer messages become the top-level `system`; tool calls and tool results become
`tool_use` and `tool_result` blocks, and consecutive messages of one role are merged, since Anthropic
wants user and assistant turns to alternate. The recorder stores the translated request; answers come
back in OpenAI's format with the raw Anthropic answer kept beside them.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import orjson

from chatledger.errors import InvalidRequest, UpstreamHTTPError, UpstreamProtocolError
from chatledger.providers.base import Completion, Provider, ProviderCall, UpstreamRequest, openai_error
from chatledger.sse import DONE, EventSplitter, encode_event, event_data

MESSAGES_PATH = "/v1/messages"
MODELS_PATH = "/v1/models"
API_VERSION = "2023-06-01"
# Anthropic requires max_tokens; OpenAI callers usually leave it out.
DEFAULT_MAX_TOKENS = 4096

STOP_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "pause_turn": "stop", "max_tokens": "length",
                "model_context_window_exceeded": "length", "tool_use": "tool_calls",
                "refusal": "content_filter"}
# Anthropic error types that OpenAI names differently; the others (invalid_request_error,
# authentication_error, permission_error, not_found_error, rate_limit_error) are the same.
ERROR_TYPES = {"request_too_large": "invalid_request_error", "api_error": "server_error",
               "overloaded_error": "server_error"}
# The HTTP status Anthropic gives each error type, for errors that arrive inside a stream.
ERROR_STATUSES = {"invalid_request_error": 400, "authentication_error": 401, "permission_error": 403,
                  "not_found_error": 404, "request_too_large": 413, "rate_limit_error": 429, "api_error": 500,
                  "overloaded_error": 529}


def error_payload(status: int, error: dict[str, Any]) -> bytes:
    kind = str(error.get("type") or ("api_error" if status >= 500 else "invalid_request_error"))
    message = str(error.get("message") or f"Anthropic answered HTTP {status}")
    return openai_error(status, message, ERROR_TYPES.get(kind, kind), kind)


def _error_of(body: bytes) -> dict[str, Any]:
    """The `error` object of Anthropic's `{"type": "error", "error": {"type", "message"}}`."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {"message": body[:500].decode("utf-8", "replace")} if body.strip() else {}
    error = parsed.get("error") if isinstance(parsed, dict) else None
    return error if isinstance(error, dict) else {}


def http_error(status: int, body: bytes, relay_headers: list[tuple[bytes, bytes]]) -> UpstreamHTTPError:
    error = _error_of(body)
    return UpstreamHTTPError(status, error_payload(status, error),
                             f"Anthropic answered HTTP {status}: {error.get('message', '')}",
                             relay_headers=relay_headers, provider_body=body)


def _text(content: Any) -> str:
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


def _data_url_source(url: str) -> dict[str, Any]:
    header, _, data = url.partition(",")
    if not header.endswith(";base64"):
        raise InvalidRequest("data: URLs must be base64-encoded", param="messages")
    return {"type": "base64", "media_type": header[5:].removesuffix(";base64"), "data": data}


def _part_block(part: dict[str, Any]) -> dict[str, Any] | None:
    kind = part.get("type")
    block: dict[str, Any]
    if kind in ("text", "refusal"):
        text = part.get(kind) or ""
        if not text:  # Anthropic refuses empty text blocks
            return None
        block = {"type": "text", "text": text}
    elif kind == "image_url":
        image = part.get("image_url")
        url = image.get("url", "") if isinstance(image, dict) else str(image or "")
        source = _data_url_source(url) if url.startswith("data:") else {"type": "url", "url": url}
        block = {"type": "image", "source": source}
    elif kind == "file" and str((part.get("file") or {}).get("file_data", "")).startswith("data:"):
        block = {"type": "document", "source": _data_url_source(part["file"]["file_data"])}
    else:
        raise InvalidRequest(f"the Anthropic provider cannot send {kind!r} content parts", param="messages")
    if "cache_control" in part:  # prompt caching hints, as some OpenAI clients already send them
        block["cache_control"] = part["cache_control"]
    return block


def _blocks(content: Any) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise InvalidRequest("message content must be a string or a list of parts", param="messages")
    return [b for b in (_part_block(p) for p in content if isinstance(p, dict)) if b is not None]


def _tool_use(call: dict[str, Any]) -> dict[str, Any]:
    function = call.get("function") or {}
    arguments = function.get("arguments") or "{}"
    try:
        parsed = orjson.loads(arguments) if isinstance(arguments, str) else arguments
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"tool call arguments are not JSON: {exc}", param="messages") from exc
    if not isinstance(parsed, dict):
        raise InvalidRequest("tool call arguments must be a JSON object", param="messages")
    return {"type": "tool_use", "id": call.get("id"), "name": function.get("name"), "input": parsed}


def _tool_result(message: dict[str, Any]) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": message.get("tool_call_id")}
    content = message.get("content")
    translated = content if isinstance(content, str) else _blocks(content)
    if translated:
        block["content"] = translated
    return block


def translate_messages(messages: list[Any]) -> tuple[str | None, list[dict[str, Any]]]:
    """OpenAI messages -> Anthropic's (system, alternating turns of content blocks)."""
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for message in messages:
        if not isinstance(message, dict):
            raise InvalidRequest("each message must be an object", param="messages")
        role = message.get("role")
        if role in ("system", "developer"):
            system.append(_text(message.get("content")))
            continue
        if role == "tool":
            role, blocks = "user", [_tool_result(message)]
        elif role == "user":
            blocks = _blocks(message.get("content"))
        elif role == "assistant":
            blocks = _blocks(message.get("content"))
            blocks += [_tool_use(c) for c in message.get("tool_calls") or [] if isinstance(c, dict)]
        else:
            raise InvalidRequest(f"unknown message role {role!r}", param="messages")
        if not blocks:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    return "\n\n".join(s for s in system if s) or None, turns


def _tools(tools: list[Any]) -> list[dict[str, Any]]:
    translated = []
    for tool in tools:
        if not isinstance(tool, dict) or tool.get("type") != "function":
            translated.append(tool)  # Anthropic's own tool types (web search, ...) pass as given
            continue
        function = tool.get("function") or {}
        item = {"name": function.get("name"),
                "input_schema": function.get("parameters") or {"type": "object", "properties": {}}}
        if function.get("description"):
            item["description"] = function["description"]
        translated.append(item)
    return translated


def _tool_choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
    translated: dict[str, Any] | None
    if choice is None:
        translated = {"type": "auto"} if parallel is False else None
    elif choice in ("auto", "required", "none"):
        translated = {"type": {"auto": "auto", "required": "any", "none": "none"}[choice]}
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        translated = {"type": "tool", "name": choice["function"].get("name")}
    else:
        raise InvalidRequest("unsupported tool_choice", param="tool_choice")
    if parallel is False and translated is not None and translated["type"] != "none":
        translated["disable_parallel_tool_use"] = True
    return translated


def translate_request(call: ProviderCall) -> dict[str, Any]:
    body = call.body
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("messages must be a non-empty list", param="messages")
    if int(body.get("n") or 1) != 1:
        raise InvalidRequest("the Anthropic provider answers one choice only (n=1)", param="n")
    system, turns = translate_messages(messages)
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or DEFAULT_MAX_TOKENS
    payload: dict[str, Any] = {"model": call.upstream_model, "max_tokens": max_tokens, "messages": turns}
    if system:
        payload["system"] = system
    stop = body.get("stop")
    if stop:
        payload["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    for name in ("temperature", "top_p", "top_k", "thinking"):
        if body.get(name) is not None:
            payload[name] = body[name]
    if body.get("user"):
        payload["metadata"] = {"user_id": body["user"]}
    if body.get("tools"):
        payload["tools"] = _tools(body["tools"])
        choice = _tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"))
        if choice is not None:
            payload["tool_choice"] = choice
    if call.stream:
        payload["stream"] = True
    return payload


def openai_usage(usage: Any) -> dict[str, Any] | None:
    """Anthropic counts cached prompt tokens apart from `input_tokens`; OpenAI's prompt_tokens holds all."""
    if not isinstance(usage, dict):
        return None
    cache_read = int(usage.get("cache_read_input_tokens") or 0)
    prompt = int(usage.get("input_tokens") or 0) + cache_read + int(usage.get("cache_creation_input_tokens") or 0)
    completion = int(usage.get("output_tokens") or 0)
    result: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
                              "total_tokens": prompt + completion}
    if cache_read:
        result["prompt_tokens_details"] = {"cached_tokens": cache_read}
    return result


def finish_reason(stop_reason: Any) -> str | None:
    return STOP_REASONS.get(stop_reason, "stop") if stop_reason else None


def chat_completion(answer: dict[str, Any], call: ProviderCall) -> dict[str, Any]:
    texts, thinking, tool_calls = [], [], []
    for block in answer.get("content") or []:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(block.get("text") or "")
        elif kind == "thinking":
            thinking.append(block.get("thinking") or "")
        elif kind == "tool_use":
            tool_calls.append({"id": block.get("id"), "type": "function",
                               "function": {"name": block.get("name"),
                                            "arguments": orjson.dumps(block.get("input") or {}).decode()}})
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or (None if tool_calls else "")}
    if thinking:
        message["reasoning_content"] = "".join(thinking)
    if tool_calls:
        message["tool_calls"] = tool_calls
    result: dict[str, Any] = {
        "id": answer.get("id") or "", "object": "chat.completion", "created": int(time.time()),
        "model": answer.get("model") or call.upstream_model,
        "choices": [{"index": 0, "message": message, "logprobs": None,
                     "finish_reason": finish_reason(answer.get("stop_reason"))}]}
    usage = openai_usage(answer.get("usage"))
    if usage is not None:
        result["usage"] = usage
    return result


class AnthropicProvider(Provider):
    endpoints = frozenset({"chat"})

    def _url(self, path: str) -> str:
        return self.config.base_url.rstrip("/").removesuffix("/v1") + path

    def _headers(self, call: ProviderCall | None) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "anthropic-version": API_VERSION, **self.config.headers}
        if self.config.api_key is not None:
            headers["x-api-key"] = self.config.api_key.get_secret_value()
        elif call is not None and call.caller_authorization:
            scheme, _, token = call.caller_authorization.partition(" ")
            headers["x-api-key"] = token if scheme.lower() == "bearer" and token else call.caller_authorization
        return headers

    def prepare(self, call: ProviderCall) -> UpstreamRequest:
        self.check_endpoint(call.endpoint)
        body = orjson.dumps(translate_request(call))
        return UpstreamRequest(self._url(MESSAGES_PATH), self._headers(call), body, body)

    async def complete(self, call: ProviderCall, request: UpstreamRequest) -> Completion:
        reply = await self.transport.request("POST", request.url, request.headers, request.body, self.timeouts)
        if reply.status >= 400:
            raise http_error(reply.status, reply.body, reply.relay_headers)
        try:
            answer = orjson.loads(reply.body)
        except orjson.JSONDecodeError as exc:
            raise UpstreamProtocolError(f"Anthropic answered with invalid JSON: {exc}") from exc
        if not isinstance(answer, dict) or answer.get("type") != "message":
            raise UpstreamProtocolError("Anthropic answered with something other than a message")
        return Completion(reply.status, orjson.dumps(chat_completion(answer, call)), reply.body,
                          b"application/json", reply.relay_headers)

    async def stream(self, call: ProviderCall, request: UpstreamRequest) -> AsyncIterator[bytes]:
        async with self.transport.stream(request.url, request.headers, request.body, self.timeouts) as reply:
            if reply.status >= 400:
                raise http_error(reply.status, await reply.read(), reply.relay_headers)
            translator = StreamTranslator(call, reply.relay_headers)
            # Anthropic's own events, for a recorder that keeps the provider's stream beside OpenAI's.
            raw = request.provider_stream = []
            async for chunk in reply.chunks():
                raw.append(chunk)
                for out in translator.feed(chunk):
                    yield out
                if translator.closed:
                    return
            for out in translator.finish():
                yield out

    async def list_models(self) -> list[dict[str, Any]]:
        reply = await self.transport.request("GET", self._url(MODELS_PATH), self._headers(None), None,
                                             self.timeouts)
        if reply.status != 200:
            return []
        models = []
        for item in orjson.loads(reply.body).get("data") or []:
            created = item.get("created_at")
            models.append({"id": item.get("id"), "object": "model", "owned_by": "anthropic",
                           "created": int(datetime.fromisoformat(created).timestamp()) if created else 0})
        return models


class StreamTranslator:
    """Anthropic's typed SSE events (message_start, content_block_*, message_delta...) to OpenAI chunks.

    An error before any chunk is raised as `UpstreamHTTPError`, so the client still gets an error
    status; after that it becomes a last `data: {"error": ...}` event.
    """

    def __init__(self, call: ProviderCall, relay_headers: list[tuple[bytes, bytes]] | None = None) -> None:
        self.base: dict[str, Any] = {"id": "", "object": "chat.completion.chunk", "created": int(time.time()),
                                     "model": call.upstream_model}
        self.relay_headers = relay_headers or []
        self.splitter = EventSplitter()
        self.usage: dict[str, Any] = {}
        self.tool_positions: dict[int, int] = {}  # content block index -> OpenAI tool call index
        self.finish_reason: str | None = None
        self.emitted = False
        self.closed = False

    def feed(self, chunk: bytes) -> list[bytes]:
        out: list[bytes] = []
        for event in self.splitter.feed(chunk):
            out.extend(self._event(event))
            if self.closed:
                break
        return out

    def finish(self) -> list[bytes]:
        """What follows the upstream's last byte; normally message_stop has already closed the stream."""
        tail = self.splitter.rest()
        out = self._event(tail) if tail.strip() and not self.closed else []
        return out if self.closed else [*out, *self._end()]

    def _end(self) -> list[bytes]:
        if self.finish_reason is None:
            return self._fail(502, {"type": "api_error",
                                    "message": "Anthropic's stream ended before a stop reason"})
        self.closed = True
        usage = openai_usage(self.usage) if self.usage else None
        out = [encode_event({**self.base, "choices": [], "usage": usage})] if usage else []
        return [*out, DONE]

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        self.emitted = True
        return encode_event({**self.base, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                                       "finish_reason": finish}]})

    def _fail(self, status: int, error: dict[str, Any]) -> list[bytes]:
        self.closed = True
        status = ERROR_STATUSES.get(str(error.get("type")), status)
        payload = error_payload(status, error)
        if not self.emitted:
            raise UpstreamHTTPError(status, payload, f"Anthropic stream failed: {error.get('message', '')}",
                                    relay_headers=self.relay_headers)
        return [b"data: " + payload + b"\n\n"]

    def _event(self, event: bytes) -> list[bytes]:
        data = event_data(event)
        if data is None:
            return []
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError:
            return self._fail(502, {"type": "api_error", "message": "Anthropic sent an event that is not JSON"})
        if not isinstance(payload, dict):
            return []
        kind = payload.get("type")
        if kind == "message_start":
            message = payload.get("message") or {}
            self.base["id"] = message.get("id") or ""
            self.base["model"] = message.get("model") or self.base["model"]
            self.usage.update(message.get("usage") or {})
            return [self._chunk({"role": "assistant", "content": ""})]
        if kind == "content_block_start":
            return self._block_start(payload.get("index", 0), payload.get("content_block") or {})
        if kind == "content_block_delta":
            return self._block_delta(payload.get("index", 0), payload.get("delta") or {})
        if kind == "message_delta":
            self.usage.update({k: v for k, v in (payload.get("usage") or {}).items() if v is not None})
            self.finish_reason = finish_reason((payload.get("delta") or {}).get("stop_reason"))
            return [self._chunk({}, self.finish_reason)] if self.finish_reason else []
        if kind == "message_stop":
            return self._end()
        if kind == "error":
            return self._fail(500, payload.get("error") or {})
        return []  # ping, content_block_stop, and event types added after this was written

    def _block_start(self, index: int, block: dict[str, Any]) -> list[bytes]:
        kind = block.get("type")
        if kind == "tool_use":
            position = self.tool_positions[index] = len(self.tool_positions)
            call = {"index": position, "id": block.get("id"), "type": "function",
                    "function": {"name": block.get("name"), "arguments": ""}}
            return [self._chunk({"tool_calls": [call]})]
        if kind == "text" and block.get("text"):
            return [self._chunk({"content": block["text"]})]
        if kind == "thinking" and block.get("thinking"):
            return [self._chunk({"reasoning_content": block["thinking"]})]
        return []

    def _block_delta(self, index: int, delta: dict[str, Any]) -> list[bytes]:
        kind = delta.get("type")
        if kind == "text_delta" and delta.get("text"):
            return [self._chunk({"content": delta["text"]})]
        if kind == "input_json_delta" and delta.get("partial_json") and index in self.tool_positions:
            call = {"index": self.tool_positions[index], "function": {"arguments": delta["partial_json"]}}
            return [self._chunk({"tool_calls": [call]})]
        if kind == "thinking_delta" and delta.get("thinking"):
            return [self._chunk({"reasoning_content": delta["thinking"]})]
        return []  # signature_delta, citations_delta
