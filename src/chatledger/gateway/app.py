"""The ASGI application: state created in the lifespan, a dispatch table, nothing global.

Two apps with two databases can live in one process; everything they own hangs off the instance.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial

from chatledger.api import build_query_api
from chatledger.config import GatewayConfig, Settings, load_gateway_config
from chatledger.errors import MethodNotAllowed, NotFound
from chatledger.gateway import admin
from chatledger.gateway.asgi import Receive, Scope, Send, send_error
from chatledger.gateway.proxy import ProxyContext, handle_llm
from chatledger.pricing import Pricer
from chatledger.providers import Provider, build_provider
from chatledger.routing import Router
from chatledger.store import Store
from chatledger.store.journal import Journal, Slot, claim_slot
from chatledger.store.recorder_client import Recorder, RecorderProcess, recorder_spec
from chatledger.store.search_indexer import SearchIndexer
from chatledger.store.settings_store import ACTIVE_PROVIDER, get_setting
from chatledger.store.writer import Writer, replay_orphaned_journals
from chatledger.transport import Timeouts, Transport

log = logging.getLogger("chatledger")

Handler = Callable[[Scope, Receive, Send], Awaitable[None]]
SETTINGS_POLL_SECONDS = 2.0
GC_THRESHOLDS = (20_000, 20, 20)  # the collector's generations (gc.set_threshold): see `startup`


class ChatLedgerApp:
    def __init__(self, settings: Settings, config: GatewayConfig | None = None) -> None:
        self.settings = settings
        self.config = config or load_gateway_config(settings)
        self.transport = Transport()
        timeouts = Timeouts(settings.upstream_connect_timeout, settings.upstream_read_timeout)
        self.providers: dict[str, Provider] = {
            name: build_provider(provider, self.transport, timeouts)
            for name, provider in self.config.providers.items()}
        self.router = Router(self.config, self.providers)
        self.store: Store | None = None
        self.writer: Recorder | None = None
        self.search_indexer: SearchIndexer | None = None
        self.journal_slot: Slot | None = None
        self.started_at = time.time()
        self.master_key = (settings.chatledger_master_key.get_secret_value()
                           if settings.chatledger_master_key else None)
        self.models_cache: dict[str, tuple[float, list]] = {}
        self._background: list[asyncio.Task] = []
        self.proxy = ProxyContext(self.router, None, settings.max_body_size, settings.writer_ack_timeout_ms / 1000)
        self.routes: dict[str, dict[str, Handler]] = {
            "/v1/chat/completions": {"POST": partial(handle_llm, self.proxy, "chat")},
            "/v1/completions": {"POST": partial(handle_llm, self.proxy, "completions")},
            "/v1/embeddings": {"POST": partial(handle_llm, self.proxy, "embeddings")},
            "/chat/completions": {"POST": partial(handle_llm, self.proxy, "chat")},
            "/v1/models": {"GET": partial(admin.list_models, self)},
            "/health": {"GET": partial(admin.health, self)},
            "/v1/providers": {"GET": partial(admin.list_providers, self)},
            "/v1/providers/active": {"PUT": partial(admin.set_active_provider, self)},
        }
        # Further routers (the query API) mount here; they see every path the table above does not.
        self.fallback: Handler | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            methods = self.routes.get(scope["path"])
            if methods is not None:
                handler = methods.get(scope["method"])
                if handler is not None:
                    await handler(scope, receive, send)
                    return
                if self.fallback is None:
                    await send_error(send, MethodNotAllowed(f"{scope['method']} is not allowed on {scope['path']}"))
                    return
            if self.fallback is not None:
                await self.fallback(scope, receive, send)
                return
            await send_error(send, NotFound(f"Unknown path {scope['path']}", code="unknown_url"))
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    log.exception("start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def startup(self) -> None:
        settings = self.settings
        await self.transport.start()
        if settings.enable_persistence:
            self.store = await asyncio.to_thread(
                Store.open, database_path=settings.database_path, database_url=settings.database_url,
                session_timeout_ms=settings.session_timeout, synchronous=settings.sqlite_synchronous,
                busy_timeout_ms=settings.sqlite_busy_timeout_ms)
            if not settings.recorder_in_own_process():  # else the recorder process runs it
                await self._start_search_indexer(self.store)
            self.writer = await self._start_recorder(self.store)
            self.proxy.writer = self.writer
            await self.refresh_settings()
            self._background.append(asyncio.create_task(self._poll_settings()))
        if settings.enable_crud_api and self.store is not None:
            self.fallback = build_query_api(self)
        # What start-up built (modules, the app, its routes) lives as long as the process: keep it out
        # of the collector's full passes, which the records in flight would otherwise make expensive.
        gc.freeze()
        # A request allocates a few hundred containers (parsed bodies, frames, records) that die with
        # it: at the default 700 the young generation is collected every few requests, each pass
        # walking what is in flight. Measured (wrk, small bodies, one core, 3 interleaved rounds):
        # 6,741 -> 6,907 req/s. Cycles are rare here; they wait a little longer for collection.
        gc.set_threshold(*GC_THRESHOLDS)

    async def _start_search_indexer(self, store: Store) -> None:
        backend = await asyncio.to_thread(store.search_backend)
        if backend is not None:
            self.search_indexer = SearchIndexer(backend)
            self.search_indexer.start()

    async def _start_recorder(self, store: Store) -> Recorder:
        """The writer, its journal slot (after writing what journals of gone processes still hold)."""
        settings = self.settings
        # Local files, one set per replica, beside the SQLite file (or where it would be).
        local = settings.database_path.parent
        dead_letter_path = store.dead_letter_path() or local / "chatledger.deadletter.jsonl"
        sink_factory = partial(store.sink, Pricer(self.config), connections=settings.writer_pg_connections)
        journal_root = settings.writer_journal_dir or local / "journal"
        self.journal_slot = await asyncio.to_thread(claim_slot, journal_root)
        await replay_orphaned_journals(journal_root, self.journal_slot, sink_factory)
        journal = await asyncio.to_thread(Journal, self.journal_slot.directory)
        writer = partial(Writer, sink_factory, batch_size=settings.writer_batch_size,
                         flush_ms=settings.writer_flush_ms,
                         max_pending_bytes=settings.writer_max_pending_mb * 1024 * 1024,
                         dead_letter_path=dead_letter_path, niceness=settings.writer_niceness)
        if settings.recorder_in_own_process():
            spec = recorder_spec(settings, self.journal_slot.directory, dead_letter_path, self.config)

            def fallback() -> Writer:
                """The journal broke: a writer thread here takes over (no journal: its answers wait for
                their commits), with a search indexer of this process's own (the recorder process's
                goes with it; two at once take turns on the index, as the workers' do)."""
                backend = store.search_backend()
                if backend is not None and self.search_indexer is None:
                    self.search_indexer = SearchIndexer(backend)
                    self.search_indexer.start()
                return writer(on_commit=self.search_indexer.notify if self.search_indexer else None)

            recorder = RecorderProcess(journal, self.journal_slot, spec, ack=settings.recorder_ack(), fallback=fallback)
            await recorder.start()
            return recorder
        thread = writer(journal=journal, ack=settings.recorder_ack(),
                        on_commit=self.search_indexer.notify if self.search_indexer else None)
        thread.start()
        return thread

    def forget_from_search(self, response_ids: list[int]) -> None:
        """Deleted responses leave the search index (searches join the ledger: this is tidying)."""
        if self.search_indexer is not None:
            self.search_indexer.forget(response_ids)
        elif isinstance(self.writer, RecorderProcess):
            self.writer.forget(response_ids)

    async def shutdown(self) -> None:
        for task in self._background:
            task.cancel()
        await self.transport.close()
        if self.writer is not None:
            # Drain: every exchange answered so far is committed before the process exits.
            await asyncio.to_thread(self.writer.close)
        if self.journal_slot is not None:
            self.journal_slot.release()
        if self.search_indexer is not None:
            # Not drained: the next start indexes what is left (search is derived from the rows).
            await asyncio.to_thread(self.search_indexer.stop)
        if self.store is not None:
            self.store.close()

    async def refresh_settings(self) -> None:
        """Pick up the active provider from the settings table (another replica or the CLI may set it)."""
        if self.store is None:
            return
        try:
            active = await asyncio.to_thread(get_setting, self.store.engine, ACTIVE_PROVIDER)
        except Exception as exc:  # noqa: BLE001 - a store hiccup must not stop routing; keep the last value
            log.debug("could not read settings: %s", exc)
            return
        wanted = active if active is not None else self.router.configured_active
        if wanted != self.router.active_provider:
            try:
                self.router.set_active(wanted)
                log.info("active provider is now %s", wanted)
            except ValueError as exc:
                log.warning("ignoring settings.active_provider: %s", exc)

    async def _poll_settings(self) -> None:
        while True:
            await asyncio.sleep(SETTINGS_POLL_SECONDS)
            await self.refresh_settings()


def create_app(settings: Settings | None = None) -> ChatLedgerApp:
    return ChatLedgerApp(settings or Settings())

