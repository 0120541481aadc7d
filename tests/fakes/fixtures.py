"""Helpers shared by the gateway-level provider tests (tests/test_proxy_dashscope.py, test_proxy_anthropic.py)."""

from __future__ import annotations

from typing import Any

from chatledger.store.journal import HEADER, RESPONSE
from tests.gateway_server import DatabaseMixin, GatewayThread


def headers_of(request: dict[str, Any]) -> dict[str, str]:
    """A request the fake recorded: its headers, names lower-cased."""
    return {name.lower(): value for name, value in request["headers"].items()}


def stored_bytes(gateway: GatewayThread) -> bytes:
    """Every byte the gateway keeps on disk (the database, its -wal and -shm, the search index, the
    journal), once the recorder has caught up."""
    gateway.settle()
    return b"".join(p.read_bytes() for p in sorted(gateway.db_path.parent.rglob("*")) if p.is_file())


def only_exchange(gateway: GatewayThread) -> tuple[dict[str, Any], dict[str, Any]]:
    """The one requests row and the one responses row the test produced."""
    [request] = gateway.rows("SELECT * FROM requests")
    [response] = gateway.rows("SELECT * FROM responses")
    return dict(request), dict(response)


def journaled_responses(gateway: GatewayThread) -> int:
    """How many response records the gateway's journal holds right now (read frame by frame)."""
    journal = gateway.app.writer.journal
    assert journal is not None
    count = 0
    for segment in sorted(journal.directory.glob("*.log")):
        data = segment.read_bytes()
        offset = 0
        while offset + HEADER.size <= len(data):
            length, _, kind = HEADER.unpack_from(data, offset)
            count += kind == RESPONSE
            offset += HEADER.size + length
    return count


def watch_stream_ends(gateway: GatewayThread) -> list[tuple[str, int, int]]:
    """Note, for each error event or [DONE] the gateway sends on /v1/chat/completions, how many
    responses rows were committed and how many response records were journaled at that moment
    (read in the gateway's own loop, so no race)."""
    seen: list[tuple[str, int, int]] = []
    methods = gateway.app.routes["/v1/chat/completions"]
    handler = methods["POST"]

    def committed() -> int:  # straight from the file: on the loop, there is no waiting for the writer
        return DatabaseMixin.rows(gateway, "SELECT COUNT(*) AS n FROM responses")[0]["n"]

    async def watched(scope: Any, receive: Any, send: Any) -> None:
        async def spy(message: dict[str, Any]) -> None:
            body = message.get("body") or b""
            if b'data: {"error"' in body:
                seen.append(("error", committed(), journaled_responses(gateway)))
            if b"data: [DONE]" in body:
                seen.append(("done", committed(), journaled_responses(gateway)))
            await send(message)

        await handler(scope, receive, spy)

    methods["POST"] = watched
    return seen
