"""Helpers shared by the gateway-level provider tests (tests/test_proxy_dashscope.py, test_proxy_anthropic.py)."""

from __future__ import annotations

from typing import Any

from tests.gateway_server import GatewayThread


def headers_of(request: dict[str, Any]) -> dict[str, str]:
    """A request the fake recorded: its headers, names lower-cased."""
    return {name.lower(): value for name, value in request["headers"].items()}


def stored_bytes(gateway: GatewayThread) -> bytes:
    """Every byte of the gateway's SQLite files (the database, its -wal and -shm) as they are on disk now."""
    return b"".join(p.read_bytes() for p in sorted(gateway.db_path.parent.iterdir()) if p.is_file())


def only_exchange(gateway: GatewayThread) -> tuple[dict[str, Any], dict[str, Any]]:
    """The one requests row and the one responses row the test produced."""
    [request] = gateway.rows("SELECT * FROM requests")
    [response] = gateway.rows("SELECT * FROM responses")
    return dict(request), dict(response)


def watch_stream_ends(gateway: GatewayThread) -> list[tuple[str, int]]:
    """Note, for each error event or [DONE] the gateway sends on /v1/chat/completions, how many
    responses rows were committed at that moment (read in the gateway's own loop, so no race)."""
    seen: list[tuple[str, int]] = []
    methods = gateway.app.routes["/v1/chat/completions"]
    handler = methods["POST"]

    async def watched(scope: Any, receive: Any, send: Any) -> None:
        async def spy(message: dict[str, Any]) -> None:
            body = message.get("body") or b""
            if b'data: {"error"' in body:
                seen.append(("error", gateway.count("responses")))
            if b"data: [DONE]" in body:
                seen.append(("done", gateway.count("responses")))
            await send(message)

        await handler(scope, receive, spy)

    methods["POST"] = watched
    return seen
