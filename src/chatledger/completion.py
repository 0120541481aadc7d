"""Reading OpenAI completions: usage and finish reasons, and a whole completion rebuilt from chunks."""

from __future__ import annotations

from typing import Any

CUT_FINISH_REASON = "client_disconnected"


def usage_of(payload: dict[str, Any]) -> tuple[int | None, int | None, int | None]:
    usage = payload.get("usage")
    if not isinstance(usage, dict):
        return None, None, None
    prompt = usage.get("prompt_tokens")
    completion = usage.get("completion_tokens")
    total = usage.get("total_tokens")
    if total is None and isinstance(prompt, int) and isinstance(completion, int):
        total = prompt + completion
    return prompt, completion, total


def finish_reason_of(payload: dict[str, Any]) -> str | None:
    choices = payload.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        return choices[0].get("finish_reason")
    return None


class ChunkAccumulator:
    """Folds `chat.completion.chunk` (or `text_completion`) payloads into one complete response."""

    def __init__(self) -> None:
        self.id: str | None = None
        self.model: str | None = None
        self.created: int | None = None
        self.system_fingerprint: str | None = None
        self.usage: dict[str, Any] | None = None
        self.object = "chat.completion"
        self.choices: dict[int, dict[str, Any]] = {}
        self.error: Any = None

    def add(self, chunk: dict[str, Any]) -> None:
        if "error" in chunk and "choices" not in chunk:
            self.error = chunk["error"]
            return
        self.id = self.id or chunk.get("id")
        self.model = self.model or chunk.get("model")
        self.created = self.created or chunk.get("created")
        self.system_fingerprint = self.system_fingerprint or chunk.get("system_fingerprint")
        if chunk.get("object") == "text_completion":
            self.object = "text_completion"
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            self._add_choice(choice)

    def _add_choice(self, choice: dict[str, Any]) -> None:
        index = choice.get("index", 0)
        slot = self.choices.setdefault(index, {"index": index, "message": {"role": "assistant"},
                                               "text": None, "finish_reason": None, "tool_calls": {}})
        if choice.get("finish_reason"):
            slot["finish_reason"] = choice["finish_reason"]
        if "text" in choice:
            slot["text"] = (slot["text"] or "") + (choice.get("text") or "")
        if choice.get("logprobs") is not None:
            slot.setdefault("logprobs", choice["logprobs"])
        delta = choice.get("delta") or {}
        message = slot["message"]
        for key, value in delta.items():
            if key == "tool_calls":
                self._add_tool_calls(slot["tool_calls"], value or [])
            elif key == "role":
                message["role"] = value or message["role"]
            elif isinstance(value, str):
                message[key] = message.get(key, "") + value
            elif value is not None:
                message[key] = value

    @staticmethod
    def _add_tool_calls(calls: dict[int, dict[str, Any]], deltas: list[dict[str, Any]]) -> None:
        for delta in deltas:
            index = delta.get("index", len(calls))
            call = calls.setdefault(index, {"id": None, "type": "function",
                                            "function": {"name": "", "arguments": ""}})
            if delta.get("id"):
                call["id"] = delta["id"]
            if delta.get("type"):
                call["type"] = delta["type"]
            function = delta.get("function") or {}
            if function.get("name"):
                call["function"]["name"] += function["name"]
            if function.get("arguments"):
                call["function"]["arguments"] += function["arguments"]

    def result(self, cut: bool = False) -> dict[str, Any]:
        choices = []
        for index in sorted(self.choices):
            slot = self.choices[index]
            finish = slot["finish_reason"] or (CUT_FINISH_REASON if cut else None)
            if self.object == "text_completion":
                choices.append({"index": index, "text": slot["text"] or "", "logprobs": slot.get("logprobs"),
                                "finish_reason": finish})
                continue
            message = dict(slot["message"])
            message.setdefault("content", None)
            if slot["tool_calls"]:
                message["tool_calls"] = [slot["tool_calls"][i] for i in sorted(slot["tool_calls"])]
            choices.append({"index": index, "message": message, "logprobs": slot.get("logprobs"),
                            "finish_reason": finish})
        if not choices and cut:
            choices.append({"index": 0, "message": {"role": "assistant", "content": None},
                            "logprobs": None, "finish_reason": CUT_FINISH_REASON})
        result: dict[str, Any] = {"id": self.id, "object": self.object, "created": self.created,
                                  "model": self.model, "choices": choices, "usage": self.usage}
        if self.system_fingerprint:
            result["system_fingerprint"] = self.system_fingerprint
        return result
