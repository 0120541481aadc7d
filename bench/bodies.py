"""Request bodies for the benchmarks, written one JSON document per line (the format wrk's Lua and
loadgen.py read).

* small: a ~1 KB chat request (system prompt + one user message), always the same.
* agentic: successive requests of one agent session: a system prompt and tool definitions, then
  alternating user/assistant turns; each request resends the whole history, growing from about
  25 KB to 50 KB. They all open with the same user message, so the gateway files them under one session.
Each has a streaming twin (`"stream":true`, no stream_options: what an OpenAI SDK sends by default).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

MODEL = "gpt-4o-mini"
SMALL_TARGET = 1024
AGENTIC_MIN = 25 * 1024
AGENTIC_MAX = 50 * 1024

SYSTEM_SMALL = "You are a concise assistant. Answer in plain English, cite sources when you use them."
FIRST_TASK = "The build of the billing service fails on CI since this morning. Find the cause and fix it."
TOOLS = [
    {"type": "function", "function": {
        "name": name, "description": description,
        "parameters": {"type": "object", "properties": {arg: {"type": "string", "description": f"The {arg}."}},
                       "required": [arg]}}}
    for name, description, arg in [
        ("read_file", "Read a file from the repository and return its content with line numbers.", "path"),
        ("run_command", "Run a shell command in the repository root and return stdout and stderr.", "command"),
        ("search_code", "Search the repository for a regular expression and return matching lines.", "pattern"),
        ("write_file", "Replace the content of a file in the repository with the given text.", "content"),
    ]
]


@dataclass(frozen=True)
class BodySet:
    name: str
    bodies: list[bytes]

    def sizes(self) -> tuple[int, int, int]:
        lengths = [len(body) for body in self.bodies]
        return min(lengths), sum(lengths) // len(lengths), max(lengths)


def _dump(body: dict[str, Any]) -> bytes:
    # orjson never emits a raw newline, so one body per line is safe.
    return orjson.dumps(body)


def small_body(stream: bool) -> bytes:
    question = "Summarize the following note in two sentences: "
    body: dict[str, Any] = {"model": MODEL, "messages": [
        {"role": "system", "content": SYSTEM_SMALL}, {"role": "user", "content": question}],
        "temperature": 0.2, "max_tokens": 256}
    if stream:
        body["stream"] = True
    # Pad the user message with prose until the whole body is ~1 KB.
    filler = "The quarterly report shows steady growth in all regions and a small rise in costs. "
    base = len(_dump(body))
    repeats = max(0, SMALL_TARGET - base) // len(filler) + 1
    body["messages"][1]["content"] = question + (filler * repeats)[: SMALL_TARGET - base]
    return _dump(body)


def _system_prompt() -> str:
    rules = [f"Rule {i}: keep changes minimal, explain each step, and verify with the test suite before "
             f"claiming success; never touch files outside the repository (policy section {i})." for i in range(24)]
    return "You are a coding agent working in a git repository.\n" + "\n".join(rules)


def _turn(index: int) -> tuple[dict[str, str], dict[str, str]]:
    """One exchange of the session: the agent's message, then the user's (tool output pasted back)."""
    log_lines = "\n".join(f"  src/billing/module_{index}_{j}.py:{40 + j}: test_invoice_{j} PASSED in 0.0{j}s"
                          for j in range(14))
    assistant = {"role": "assistant", "content": (
        f"Step {index}: I will inspect the failing stage. Running the tests of module {index} to narrow the "
        f"failure down, then I will read the file that the first failing assertion points at.")}
    user = {"role": "user", "content": f"Output of step {index}:\n{log_lines}\nexit status: 0"}
    return assistant, user


def agentic_bodies(stream: bool) -> list[bytes]:
    """Every request of the session whose size lies between AGENTIC_MIN and AGENTIC_MAX."""
    messages: list[dict[str, str]] = [{"role": "system", "content": _system_prompt()},
                                      {"role": "user", "content": FIRST_TASK}]
    bodies: list[bytes] = []
    index = 0
    while True:
        body: dict[str, Any] = {"model": MODEL, "messages": list(messages), "tools": TOOLS, "temperature": 0}
        if stream:
            body["stream"] = True
        raw = _dump(body)
        if len(raw) > AGENTIC_MAX:
            return bodies
        if len(raw) >= AGENTIC_MIN:
            bodies.append(raw)
        index += 1
        messages.extend(_turn(index))


def all_sets() -> dict[str, BodySet]:
    return {
        "small": BodySet("small", [small_body(False)]),
        "small-stream": BodySet("small-stream", [small_body(True)]),
        "agentic": BodySet("agentic", agentic_bodies(False)),
        "agentic-stream": BodySet("agentic-stream", agentic_bodies(True)),
    }


def write_sets(directory: Path) -> dict[str, Path]:
    """Write every set (plus a mix of all four for the counted phase); returns name -> file."""
    sets = all_sets()
    paths: dict[str, Path] = {}
    for name, body_set in sets.items():
        paths[name] = directory / f"{name}.jsonl"
        paths[name].write_bytes(b"\n".join(body_set.bodies) + b"\n")
    # The mix alternates the four kinds: small and agentic, streaming and not.
    longest = max(len(body_set.bodies) for body_set in sets.values())
    mix = [body_set.bodies[i % len(body_set.bodies)] for i in range(longest) for body_set in sets.values()]
    paths["mixed"] = directory / "mixed.jsonl"
    paths["mixed"].write_bytes(b"\n".join(mix) + b"\n")
    return paths


if __name__ == "__main__":
    for body_set in all_sets().values():
        low, mean, high = body_set.sizes()
        print(f"{body_set.name}: {len(body_set.bodies)} bodies, {low}..{high} bytes (mean {mean})")
