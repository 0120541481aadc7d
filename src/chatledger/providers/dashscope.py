"""Qwen through DashScope's native API (its OpenAI compatible mode is served by `openai`).

Requests are translated (OpenAI fields DashScope lacks are dropped, its own ones such as
`enable_search` or `enable_thinking` pass into `parameters`), so the recorder stores the translated
body. Answers come back as OpenAI's format, the raw DashScope answer kept beside them. Messages with
images go to the multimodal endpoint, whose content is a list of `{"text"}`/`{"image"}` parts.
"""

from __future__ import annotations

import base64
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson

from chatledger.errors import InvalidRequest, UpstreamHTTPError, UpstreamProtocolError
from chatledger.providers.base import Completion, Provider, ProviderCall, UpstreamRequest, openai_error
from chatledger.sse import DONE, EventSplitter, encode_event, event_data

TEXT_PATH = "/api/v1/services/aigc/text-generation/generation"
MULTIMODAL_PATH = "/api/v1/services/aigc/multimodal-generation/generation"
EMBEDDING_PATH = "/api/v1/services/embeddings/text-embedding/text-embedding"
MODELS_PATH = "/compatible-mode/v1/models"

# OpenAI fields that DashScope does not know, or that the translation carries elsewhere.
NOT_PARAMETERS = frozenset({"model", "messages", "prompt", "input", "stream", "stream_options", "user",
                            "store", "metadata", "service_tier", "max_completion_tokens", "logit_bias",
                            "echo", "suffix", "best_of", "encoding_format", "dimensions"})

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 429: "rate_limit_error"}


def error_type(status: int) -> str:
    return ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")


def _error_fields(body: bytes) -> dict[str, Any]:
    """DashScope's `{"code", "message"}`: a JSON body, or an SSE `event:error` when a stream was asked."""
    for candidate in (body, event_data(body)):
        if not candidate:
            continue
        try:
            parsed = orjson.loads(candidate)
        except orjson.JSONDecodeError:
            continue
        if isinstance(parsed, dict):
            return parsed
    return {"message": body[:500].decode("utf-8", "replace")} if body.strip() else {}


def error_payload(status: int, fields: dict[str, Any]) -> bytes:
    message = fields.get("message") or f"DashScope answered HTTP {status}"
    return openai_error(status, str(message), error_type(status), fields.get("code") or None)


def http_error(status: int, body: bytes, relay_headers: list[tuple[bytes, bytes]]) -> UpstreamHTTPError:
    fields = _error_fields(body)
    return UpstreamHTTPError(status, error_payload(status, fields),
                             f"DashScope answered HTTP {status}: {fields.get('message', '')}",
                             relay_headers=relay_headers, provider_body=body)


def _parts(content: Any) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list):
        return [p for p in content if isinstance(p, dict)]
    raise InvalidRequest("message content must be a string or a list of parts", param="messages")


def _image_url(part: dict[str, Any]) -> str:
    image = part.get("image_url")
    return image.get("url", "") if isinstance(image, dict) else str(image or "")


def _has_images(messages: list[Any]) -> bool:
    return any(isinstance(m, dict) and isinstance(m.get("content"), list)
               and any(isinstance(p, dict) and p.get("type") == "image_url" for p in m["content"])
               for m in messages)


def _content(content: Any, multimodal: bool) -> Any:
    parts = _parts(content)
    for part in parts:
        if part.get("type") not in ("text", "image_url"):
            raise InvalidRequest(f"the DashScope provider cannot send {part.get('type')!r} content parts",
                                 param="messages")
    if multimodal:
        return [{"image": _image_url(p)} if p.get("type") == "image_url" else {"text": p.get("text", "")}
                for p in parts]
    return "".join(str(p.get("text", "")) for p in parts)


def _messages(messages: Any, multimodal: bool) -> list[dict[str, Any]]:
    translated = []
    for message in messages:
        if not isinstance(message, dict):
            raise InvalidRequest("each message must be an object", param="messages")
        item = {**message, "content": _content(message.get("content"), multimodal)}
        if item.get("role") == "developer":
            item["role"] = "system"
        translated.append(item)
    return translated


def _prompt(prompt: Any) -> str:
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        return prompt[0]
    if not isinstance(prompt, str):
        raise InvalidRequest("the DashScope provider takes one prompt string", param="prompt")
    return prompt


def text_of(content: Any) -> str:
    """Message content as DashScope answers it: a string, or (multimodal) a list of `{"text"}` parts."""
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


def finish_reason(value: Any) -> str | None:
    # DashScope says "null" (a string) while a choice is still being generated.
    return None if value in (None, "", "null") else str(value)


def openai_usage(usage: Any) -> dict[str, Any] | None:
    if not isinstance(usage, dict) or ("input_tokens" not in usage and "output_tokens" not in usage):
        return None
    prompt, completion = int(usage.get("input_tokens") or 0), int(usage.get("output_tokens") or 0)
    result: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
                              "total_tokens": int(usage.get("total_tokens") or prompt + completion)}
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
    if cached is not None:
        result["prompt_tokens_details"] = {"cached_tokens": cached}
    reasoning = (usage.get("output_tokens_details") or {}).get("reasoning_tokens")
    if reasoning is not None:
        result["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    return result


def _choices(output: Any) -> list[dict[str, Any]]:
    if not isinstance(output, dict):
        return []
    choices = output.get("choices")
    if isinstance(choices, list):
        return [c for c in choices if isinstance(c, dict)]
    if "text" in output:  # result_format "text", should a model ignore our "message"
        return [{"message": {"content": output["text"]}, "finish_reason": output.get("finish_reason")}]
    return []


def _tool_call(call: dict[str, Any], position: int) -> dict[str, Any]:
    function = call.get("function") or {}
    arguments = function.get("arguments")
    if not isinstance(arguments, str):
        arguments = orjson.dumps(arguments).decode() if arguments is not None else ""
    return {"id": call.get("id") or f"call_{position}", "type": call.get("type") or "function",
            "function": {"name": function.get("name") or "", "arguments": arguments}}


def chat_completion(answer: dict[str, Any], call: ProviderCall) -> dict[str, Any]:
    text_mode = call.endpoint == "completions"
    choices = []
    for position, choice in enumerate(_choices(answer.get("output"))):
        message = choice.get("message") or {}
        index = choice.get("index", position)
        text = text_of(message.get("content"))
        finish = finish_reason(choice.get("finish_reason"))
        if text_mode:
            choices.append({"index": index, "text": text, "logprobs": None, "finish_reason": finish})
            continue
        tool_calls = [_tool_call(c, i) for i, c in enumerate(message.get("tool_calls") or [])]
        translated: dict[str, Any] = {"role": "assistant", "content": text or (None if tool_calls else "")}
        if message.get("reasoning_content"):
            translated["reasoning_content"] = message["reasoning_content"]
        if tool_calls:
            translated["tool_calls"] = tool_calls
        choices.append({"index": index, "message": translated, "logprobs": choice.get("logprobs"),
                        "finish_reason": finish})
    prefix, kind = ("cmpl-", "text_completion") if text_mode else ("chatcmpl-", "chat.completion")
    result: dict[str, Any] = {"id": prefix + str(answer.get("request_id") or ""), "object": kind,
                              "created": int(time.time()), "model": call.upstream_model, "choices": choices}
    usage = openai_usage(answer.get("usage"))
    if usage is not None:
        result["usage"] = usage
    return result


def embeddings(answer: dict[str, Any], call: ProviderCall) -> dict[str, Any]:
    output = answer.get("output") or {}
    items = [e for e in output.get("embeddings") or [] if isinstance(e, dict)]
    encode = call.body.get("encoding_format") == "base64"
    data = []
    for position, item in enumerate(sorted(items, key=lambda e: e.get("text_index", 0))):
        vector = item.get("embedding") or []
        value: Any = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode() if encode else vector
        data.append({"object": "embedding", "index": item.get("text_index", position), "embedding": value})
    tokens = int((answer.get("usage") or {}).get("total_tokens") or 0)
    return {"object": "list", "data": data, "model": call.upstream_model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def _answer(body: bytes) -> dict[str, Any]:
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise UpstreamProtocolError(f"DashScope answered with invalid JSON: {exc}") from exc
    if not isinstance(answer, dict):
        raise UpstreamProtocolError("DashScope answered with something other than a JSON object")
    if "output" not in answer:
        if answer.get("code"):
            raise UpstreamHTTPError(502, error_payload(502, answer), f"DashScope error: {answer.get('message')}")
        raise UpstreamProtocolError("DashScope answered without `output`")
    return answer


class DashScopeProvider(Provider):
    endpoints = frozenset({"chat", "completions", "embeddings"})

    def _base_url(self) -> str:
        base = self.config.base_url.rstrip("/")
        for suffix in ("/api/v1", "/compatible-mode/v1"):
            base = base.removesuffix(suffix)
        return base

    def _headers(self, call: ProviderCall | None, stream: bool = False) -> dict[str, str]:
        headers = {"Content-Type": "application/json", **self.config.headers}
        if stream:
            headers["X-DashScope-SSE"] = "enable"
            headers["Accept"] = "text/event-stream"
        if self.config.api_key is not None:
            headers["Authorization"] = f"Bearer {self.config.api_key.get_secret_value()}"
        elif call is not None and call.caller_authorization:
            headers["Authorization"] = call.caller_authorization
        return headers

    def prepare(self, call: ProviderCall) -> UpstreamRequest:
        self.check_endpoint(call.endpoint)
        parameters = {k: v for k, v in call.body.items() if k not in NOT_PARAMETERS and v is not None}
        if call.endpoint == "embeddings":
            path, payload = EMBEDDING_PATH, self._embedding_body(call, parameters)
        else:
            path, payload = self._generation_body(call, parameters)
        body = orjson.dumps(payload)
        stream = call.stream and call.endpoint != "embeddings"
        return UpstreamRequest(self._base_url() + path, self._headers(call, stream), body, body)

    def _generation_body(self, call: ProviderCall, parameters: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        if call.endpoint == "completions":
            messages: Any = [{"role": "user", "content": _prompt(call.body.get("prompt"))}]
            parameters.pop("logprobs", None)  # an int here, a bool in chat; DashScope knows only the latter
        else:
            messages = call.body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise InvalidRequest("messages must be a non-empty list", param="messages")
        if call.body.get("max_completion_tokens") is not None and "max_tokens" not in parameters:
            parameters["max_tokens"] = call.body["max_completion_tokens"]
        parameters["result_format"] = "message"
        if call.stream:
            parameters["incremental_output"] = True
        multimodal = _has_images(messages)
        payload = {"model": call.upstream_model, "input": {"messages": _messages(messages, multimodal)},
                   "parameters": parameters}
        return (MULTIMODAL_PATH if multimodal else TEXT_PATH), payload

    def _embedding_body(self, call: ProviderCall, parameters: dict[str, Any]) -> dict[str, Any]:
        inputs = call.body.get("input")
        texts = [inputs] if isinstance(inputs, str) else inputs
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise InvalidRequest("DashScope embeddings take a string or a list of strings", param="input")
        if call.body.get("dimensions") is not None:
            parameters["dimension"] = call.body["dimensions"]
        payload: dict[str, Any] = {"model": call.upstream_model, "input": {"texts": texts}}
        if parameters:
            payload["parameters"] = parameters
        return payload

    async def complete(self, call: ProviderCall, request: UpstreamRequest) -> Completion:
        reply = await self.transport.request("POST", request.url, request.headers, request.body, self.timeouts)
        if reply.status >= 400:
            raise http_error(reply.status, reply.body, reply.relay_headers)
        answer = _answer(reply.body)
        payload = embeddings(answer, call) if call.endpoint == "embeddings" else chat_completion(answer, call)
        return Completion(reply.status, orjson.dumps(payload), reply.body, b"application/json",
                          reply.relay_headers)

    async def stream(self, call: ProviderCall, request: UpstreamRequest) -> AsyncIterator[bytes]:
        async with self.transport.stream(request.url, request.headers, request.body, self.timeouts) as reply:
            if reply.status >= 400:
                raise http_error(reply.status, await reply.read(), reply.relay_headers)
            translator = StreamTranslator(call, reply.relay_headers)
            # DashScope's own events, for a recorder that keeps the provider's stream beside OpenAI's.
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
        reply = await self.transport.request("GET", self._base_url() + MODELS_PATH, self._headers(None), None,
                                             self.timeouts)
        if reply.status != 200:
            return []
        data = orjson.loads(reply.body).get("data")
        return data if isinstance(data, list) else []


def _event_meta(event: bytes) -> tuple[str, int]:
    """The `event:` name and the `:HTTP_STATUS/NNN` comment DashScope puts in every event."""
    name, status = "", 200
    for line in event.splitlines():
        if line.startswith(b"event:"):
            name = line[6:].strip().decode("latin-1")
        elif line.startswith(b":HTTP_STATUS/") and line[13:].strip().isdigit():
            status = int(line[13:].strip())
    return name, status


class StreamTranslator:
    """DashScope's SSE bytes (with `incremental_output`: each event carries only new text) to OpenAI chunks.

    An error before any chunk is raised as `UpstreamHTTPError`, so the client still gets an error
    status; after that it becomes a last `data: {"error": ...}` event.
    """

    def __init__(self, call: ProviderCall, relay_headers: list[tuple[bytes, bytes]] | None = None) -> None:
        self.text_mode = call.endpoint == "completions"
        self.base: dict[str, Any] = {"id": "", "object": "text_completion" if self.text_mode
                                     else "chat.completion.chunk", "created": int(time.time()),
                                     "model": call.upstream_model}
        self.relay_headers = relay_headers or []
        self.splitter = EventSplitter()
        self.usage: dict[str, Any] | None = None
        self.started: set[int] = set()
        self.finished: set[int] = set()
        self.tool_calls: set[tuple[int, int]] = set()
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
        """What follows the upstream's last byte: a final unterminated event, the usage chunk, [DONE]."""
        tail = self.splitter.rest()
        out = self._event(tail) if tail.strip() and not self.closed else []
        if self.closed:
            return out
        if not self.finished:
            return [*out, *self._fail(502, {"message": "DashScope's stream ended before a finish reason",
                                            "code": "upstream_bad_response"})]
        self.closed = True
        if self.usage is not None:
            out.append(encode_event({**self.base, "choices": [], "usage": self.usage}))
        return [*out, DONE]

    def _chunk(self, index: int, delta: dict[str, Any], finish: str | None = None) -> bytes:
        self.emitted = True
        if self.text_mode:
            piece: dict[str, Any] = {"index": index, "text": delta.get("content", "")}
        else:
            piece = {"index": index, "delta": delta}
        return encode_event({**self.base, "choices": [{**piece, "logprobs": None, "finish_reason": finish}]})

    def _fail(self, status: int, fields: dict[str, Any]) -> list[bytes]:
        self.closed = True
        status = status if status >= 400 else 502
        payload = error_payload(status, fields)
        if not self.emitted:
            raise UpstreamHTTPError(status, payload, f"DashScope stream failed: {fields.get('message', '')}",
                                    relay_headers=self.relay_headers)
        return [b"data: " + payload + b"\n\n"]

    def _event(self, event: bytes) -> list[bytes]:
        name, status = _event_meta(event)
        data = event_data(event)
        if data is None:
            return []
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError:
            return self._fail(502, {"message": "DashScope sent an event that is not JSON",
                                    "code": "upstream_bad_response"})
        if not isinstance(payload, dict) or name == "error" or payload.get("code"):
            return self._fail(status, payload if isinstance(payload, dict) else {})
        if not self.base["id"]:
            self.base["id"] = ("cmpl-" if self.text_mode else "chatcmpl-") + str(payload.get("request_id", ""))
        self.usage = openai_usage(payload.get("usage")) or self.usage
        out: list[bytes] = []
        for position, choice in enumerate(_choices(payload.get("output"))):
            out.extend(self._choice(choice.get("index", position), choice))
        return out

    def _choice(self, index: int, choice: dict[str, Any]) -> list[bytes]:
        message = choice.get("message") or {}
        out = []
        if index not in self.started and not self.text_mode:
            out.append(self._chunk(index, {"role": "assistant", "content": ""}))
        self.started.add(index)
        if message.get("reasoning_content") and not self.text_mode:
            out.append(self._chunk(index, {"reasoning_content": message["reasoning_content"]}))
        text = text_of(message.get("content"))
        if text:
            out.append(self._chunk(index, {"content": text}))
        deltas = self._tool_deltas(index, message.get("tool_calls") or [])
        if deltas and not self.text_mode:
            out.append(self._chunk(index, {"tool_calls": deltas}))
        finish = finish_reason(choice.get("finish_reason"))
        if finish and index not in self.finished:
            self.finished.add(index)
            out.append(self._chunk(index, {}, finish))
        return out

    def _tool_deltas(self, choice: int, calls: list[Any]) -> list[dict[str, Any]]:
        """The first fragment of a call carries its id and name; later ones only argument text."""
        deltas = []
        for position, call in enumerate(c for c in calls if isinstance(c, dict)):
            index = call.get("index", position)
            if (choice, index) not in self.tool_calls:
                self.tool_calls.add((choice, index))
                deltas.append({"index": index, **_tool_call(call, index)})
                continue
            arguments = (call.get("function") or {}).get("arguments")
            if arguments:
                deltas.append({"index": index, "function": {"arguments": arguments}})
        return deltas
