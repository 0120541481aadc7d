"""The built-in offline provider: deterministic answers, real streaming, plausible token counts.

It answers when nothing else is configured, so a fresh `chatledger serve` works at once. The reply
quotes the last user message; with `tools` offered (and `tool_choice` not "none") it calls the first
(or the chosen) tool, unless the last message is already a tool result.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson

from chatledger.providers.base import Completion, Provider, ProviderCall, UpstreamRequest
from chatledger.sse import DONE, encode_event

MOCK_MODELS = ("mock-1", "mock-embed-1")
EMBEDDING_DIMENSIONS = 64


def estimate_tokens(text: str) -> int:
    """About four characters a token, as OpenAI's rule of thumb has it."""
    return max(1, math.ceil(len(text) / 4)) if text else 0


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def _prompt_text(body: dict[str, Any]) -> str:
    messages = body.get("messages") or []
    return "\n".join(_text(m.get("content")) for m in messages if isinstance(m, dict))


def _completion_id(raw: bytes, prefix: str) -> str:
    return prefix + hashlib.sha256(raw).hexdigest()[:24]


def reply_text(body: dict[str, Any]) -> str:
    messages = body.get("messages") or []
    last_user = next((_text(m.get("content")) for m in reversed(messages)
                      if isinstance(m, dict) and m.get("role") == "user"), "")
    if messages and isinstance(messages[-1], dict) and messages[-1].get("role") == "tool":
        return f"The tool answered: {_text(messages[-1].get('content'))}"
    return f"This is the chatledger mock model. You said: {last_user}"


def _tool_call(body: dict[str, Any], call_id: str) -> dict[str, Any] | None:
    tools = body.get("tools") or []
    choice = body.get("tool_choice", "auto")
    messages = body.get("messages") or []
    if not tools or choice == "none" or (messages and messages[-1].get("role") == "tool"):
        return None
    name = tools[0].get("function", {}).get("name", "tool")
    if isinstance(choice, dict):
        name = choice.get("function", {}).get("name", name)
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": "{}"}}


class MockProvider(Provider):
    endpoints = frozenset({"chat", "completions", "embeddings"})

    def prepare(self, call: ProviderCall) -> UpstreamRequest:
        return UpstreamRequest("mock://local", {}, call.raw, None)

    def _usage(self, prompt: str, answer: str) -> dict[str, int]:
        prompt_tokens, completion_tokens = estimate_tokens(prompt), estimate_tokens(answer)
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens}

    async def complete(self, call: ProviderCall, request: UpstreamRequest) -> Completion:
        body, model = call.body, call.upstream_model
        created = int(time.time())
        if call.endpoint == "embeddings":
            payload = self._embeddings(body, model)
        elif call.endpoint == "completions":
            prompt = _text(body.get("prompt")) if not isinstance(body.get("prompt"), str) else body["prompt"]
            answer = f"This is the chatledger mock model continuing: {prompt[:200]}"
            payload = {"id": _completion_id(call.raw, "cmpl-mock-"), "object": "text_completion",
                       "created": created, "model": model,
                       "choices": [{"index": i, "text": answer, "logprobs": None, "finish_reason": "stop"}
                                   for i in range(int(body.get("n") or 1))],
                       "usage": self._usage(prompt, answer)}
        else:
            payload = self._chat(call, created)
        return Completion(200, orjson.dumps(payload), None)

    def _chat(self, call: ProviderCall, created: int) -> dict[str, Any]:
        body = call.body
        completion_id = _completion_id(call.raw, "chatcmpl-mock-")
        tool_call = _tool_call(body, "call_" + completion_id[-16:])
        answer = "" if tool_call else reply_text(body)
        message: dict[str, Any] = {"role": "assistant", "content": answer or None, "refusal": None}
        if tool_call:
            message["tool_calls"] = [tool_call]
        finish = "tool_calls" if tool_call else "stop"
        choices = [{"index": i, "message": message, "logprobs": None, "finish_reason": finish}
                   for i in range(int(body.get("n") or 1))]
        generated = answer + (orjson.dumps(tool_call).decode() if tool_call else "")
        return {"id": completion_id, "object": "chat.completion", "created": created,
                "model": call.upstream_model, "choices": choices,
                "usage": self._usage(_prompt_text(body), generated), "system_fingerprint": "fp_chatledger_mock"}

    def _embeddings(self, body: dict[str, Any], model: str) -> dict[str, Any]:
        inputs = body.get("input")
        items = inputs if isinstance(inputs, list) and not all(isinstance(i, int) for i in inputs) else [inputs]
        data = []
        for index, item in enumerate(items):
            seed = hashlib.sha256(orjson.dumps(item)).digest() * 8
            values = struct.unpack(f"<{EMBEDDING_DIMENSIONS}h", seed[: EMBEDDING_DIMENSIONS * 2])
            norm = math.sqrt(sum(v * v for v in values)) or 1.0
            data.append({"object": "embedding", "index": index, "embedding": [v / norm for v in values]})
        tokens = sum(estimate_tokens(orjson.dumps(i).decode()) for i in items)
        return {"object": "list", "data": data, "model": model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    async def stream(self, call: ProviderCall, request: UpstreamRequest) -> AsyncIterator[bytes]:
        full = orjson.loads((await self.complete(call, request)).body)
        base = {"id": full["id"], "object": "chat.completion.chunk", "created": full["created"],
                "model": full["model"], "system_fingerprint": full.get("system_fingerprint")}
        text_mode = call.endpoint == "completions"
        if text_mode:
            base["object"] = "text_completion"
        for choice in full["choices"]:
            index = choice["index"]
            if not text_mode:
                yield encode_event({**base, "choices": [{"index": index, "delta": {"role": "assistant",
                                                                                    "content": ""},
                                                         "logprobs": None, "finish_reason": None}]})
            content = choice["text"] if text_mode else (choice["message"]["content"] or "")
            for word in _words(content):
                piece = {"index": index, "text": word} if text_mode else {"index": index,
                                                                          "delta": {"content": word}}
                yield encode_event({**base, "choices": [{**piece, "logprobs": None, "finish_reason": None}]})
                await asyncio.sleep(0)
            for position, tool_call in enumerate(choice.get("message", {}).get("tool_calls") or []):
                delta = {"tool_calls": [{"index": position, **tool_call}]}
                yield encode_event({**base, "choices": [{"index": index, "delta": delta,
                                                         "logprobs": None, "finish_reason": None}]})
            end = {"index": index, "text": ""} if text_mode else {"index": index, "delta": {}}
            yield encode_event({**base, "choices": [{**end, "logprobs": None,
                                                     "finish_reason": choice["finish_reason"]}]})
        # Like OpenAI with include_usage: a last chunk with usage and no choices (the gateway hides
        # it from clients that did not ask, exactly as it does for real upstreams).
        yield encode_event({**base, "choices": [], "usage": full["usage"]})
        yield DONE


def _words(text: str) -> list[str]:
    words = text.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)] if text else []
