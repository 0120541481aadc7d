"""The gateway's own small routes: models, health, and switching the active provider."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

import orjson

from chatledger.errors import GatewayError, InvalidRequest
from chatledger.gateway.access import check_admin
from chatledger.gateway.asgi import Receive, Scope, Send, client_host, read_body, send_error, send_json
from chatledger.providers.mock import MOCK_MODELS
from chatledger.store.recorder_client import RecorderProcess
from chatledger.store.settings_store import ACTIVE_PROVIDER, set_setting

if TYPE_CHECKING:
    from chatledger.gateway.app import ChatLedgerApp

log = logging.getLogger("chatledger")
UPSTREAM_MODELS_TTL_SECONDS = 60.0


def _authorization(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            return value.decode("latin-1")
    return None


async def list_models(app: ChatLedgerApp, scope: Scope, receive: Receive, send: Send) -> None:
    created = int(app.started_at)
    seen: dict[str, dict[str, Any]] = {}
    for name, provider in app.router.mapped_models():
        seen[name] = {"id": name, "object": "model", "created": created, "owned_by": provider}
    active = app.router.active_provider
    if active is not None:
        for model in await _upstream_models(app, active):
            if isinstance(model, dict) and isinstance(model.get("id"), str):
                seen.setdefault(model["id"], model)
    await send_json(send, 200, {"object": "list", "data": list(seen.values())})


async def _upstream_models(app: ChatLedgerApp, provider_name: str) -> list[dict[str, Any]]:
    provider = app.providers[provider_name]
    if provider.config.type == "mock":
        return [{"id": m, "object": "model", "created": int(app.started_at), "owned_by": "chatledger"}
                for m in MOCK_MODELS]
    cache = app.models_cache
    cached = cache.get(provider_name)
    if cached and time.monotonic() - cached[0] < UPSTREAM_MODELS_TTL_SECONDS:
        return cached[1]
    try:
        models = await asyncio.wait_for(provider.list_models(), 10)
    except (GatewayError, TimeoutError, ValueError) as exc:
        log.info("could not list models of %s: %s", provider_name, exc)
        models = []
    cache[provider_name] = (time.monotonic(), models)
    return models


async def health(app: ChatLedgerApp, scope: Scope, receive: Receive, send: Send) -> None:
    writer = app.writer
    store: dict[str, Any] = {"enabled": writer is not None}
    # Read once, before the error (the recorder sets the error first): a status of degraded always
    # comes with its reason, though the recorder's thread changes both meanwhile.
    healthy = writer is None or writer.healthy
    if writer is not None:
        store.update(healthy=healthy, last_error=writer.last_error, submitted=writer.stats.submitted,
                     committed=writer.stats.committed, dropped=writer.stats.dropped,
                     dead_lettered=writer.stats.dead_lettered, lag=writer.lag, spilled=writer.stats.spilled)
    indexer = app.search_indexer
    if indexer is not None:
        backlog = await asyncio.to_thread(indexer.backlog)
        store["search"] = {"indexed": indexer.indexed, "backlog": backlog, "last_error": indexer.last_error}
    elif isinstance(writer, RecorderProcess) and writer.search is not None:
        store["search"] = writer.search  # as the recorder process last reported it
    status = "ok" if healthy else "degraded"
    await send_json(send, 200, {"status": status, "store": store, "active_provider": app.router.active_provider})


async def list_providers(app: ChatLedgerApp, scope: Scope, receive: Receive, send: Send) -> None:
    try:
        check_admin(app.master_key, _authorization(scope), client_host(scope))
    except GatewayError as error:
        await send_error(send, error)
        return
    providers = [{"name": name, "type": p.config.type, "base_url": p.config.base_url or None,
                  "active": name == app.router.active_provider} for name, p in app.providers.items()]
    await send_json(send, 200, {"data": providers, "active_provider": app.router.active_provider})


async def set_active_provider(app: ChatLedgerApp, scope: Scope, receive: Receive, send: Send) -> None:
    try:
        check_admin(app.master_key, _authorization(scope), client_host(scope))
        raw = await read_body(receive, 65536, None)
        try:
            name = orjson.loads(raw).get("provider")
        except (orjson.JSONDecodeError, AttributeError) as exc:
            raise InvalidRequest('Send {"provider": "<name>"}.') from exc
        if not isinstance(name, str) or name not in app.providers:
            raise InvalidRequest(f"Unknown provider {name!r}; configured: {', '.join(sorted(app.providers))}",
                                 param="provider")
    except GatewayError as error:
        await send_error(send, error)
        return
    app.router.set_active(name)
    if app.store is not None:
        # Stored so that the other replicas (and a restart) follow.
        await asyncio.to_thread(set_setting, app.store.engine, ACTIVE_PROVIDER, name)
    await send_json(send, 200, {"active_provider": name})
