"""Which conversation a request belongs to (seed 003): the MD5 of its first user message.

The key is scoped by a fingerprint of the caller's API key, so two users who both open with
"Hello" get two sessions. An explicit `X-Session-Id` header wins over the derived key.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

FIRST_MESSAGE_PREVIEW_CHARS = 10_000


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text":
                parts.append(str(part.get("text", "")))
            else:
                parts.append(orjson.dumps(part, option=orjson.OPT_SORT_KEYS).decode())
        return "\n".join(parts)
    if content is None:
        return ""
    return orjson.dumps(content, option=orjson.OPT_SORT_KEYS).decode()


def first_user_text(body: dict[str, Any], endpoint: str) -> str:
    """The text that opens the conversation: first user message, completion prompt, embedding input."""
    if endpoint == "chat":
        for message in body.get("messages") or ():
            if isinstance(message, dict) and message.get("role") == "user":
                return _text_of(message.get("content"))
        return "default"
    if endpoint == "completions":
        return _text_of(body.get("prompt"))
    return _text_of(body.get("input"))


def session_key(first_text: str, api_key_hash: str | None) -> str:
    scoped = f"{api_key_hash}\x00{first_text}" if api_key_hash else first_text
    return hashlib.md5(scoped.encode("utf-8", "surrogatepass"), usedforsecurity=False).hexdigest()


def restarted_session_id(key: str, timestamp_ms: int) -> str:
    """A fresh id for a conversation whose previous session expired."""
    return hashlib.md5(f"{key}:{timestamp_ms}".encode(), usedforsecurity=False).hexdigest()


def api_key_fingerprint(authorization: str | None) -> str | None:
    """A stable, non-reversible tag for the caller's key (sha256, 16 hex digits); never the key."""
    if not authorization:
        return None
    token = authorization[7:] if authorization[:7].lower() == "bearer " else authorization
    token = token.strip()
    if not token:
        return None
    return "sk-" + hashlib.sha256(token.encode()).hexdigest()[:16]
