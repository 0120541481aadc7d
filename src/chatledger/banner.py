"""The start-up banner, in the spirit of seed 000: tables ready, counts, path, providers, address."""

from __future__ import annotations

from chatledger import __version__
from chatledger.config import GatewayConfig, Settings


def banner_lines(settings: Settings, config: GatewayConfig, *, location: str | None, schema_version: str | None,
                 counts: dict[str, int] | None, active_provider: str | None, workers: int) -> list[str]:
    lines = [f"chatledger {__version__}"]
    if location is None:
        lines.append("[Database] persistence disabled (ENABLE_PERSISTENCE=false): nothing is recorded")
    else:
        lines.append("[Database] ✓ Tables ready: metadata, sessions, requests, responses, settings "
                     f"(schema version {schema_version})")
        if counts is not None:
            lines.append(f"[Database] Database ready: {{ sessions: {counts['sessions']}, "
                         f"requests: {counts['requests']}, responses: {counts['responses']} }}")
        lines.append(f"[Database] Location: {location}")
    for name, provider in config.providers.items():
        marker = "  <- active: unmapped model names go here" if name == active_provider else ""
        where = f" {provider.base_url}" if provider.base_url else ""
        lines.append(f"[Providers] {name} ({provider.type}){where}{marker}")
    if active_provider == "mock":
        lines.append("[Providers] No API key configured: answering with the built-in offline mock provider.")
        lines.append("[Providers] Set OPENAI_API_KEY (+ OPENAI_BASE_URL), DASHSCOPE_API_KEY or ANTHROPIC_API_KEY, "
                     "or CHATLEDGER_CONFIG, to reach a real model.")
    if active_provider is None:
        lines.append("[Providers] No active provider: only the mapped models below are served.")
    for name, route in config.models.items():
        lines.append(f"[Models] {name} -> {route.provider}:{route.upstream_model}")
    lines.append(f"[Config] providers and models from {config.source}")
    if settings.chatledger_master_key is None:
        lines.append("[Access] No CHATLEDGER_MASTER_KEY: the gateway's own routes answer loopback clients only.")
    base = f"http://{settings.host}:{settings.port}"
    lines.append(f"[Server] OpenAI-compatible API at {base}/v1  (workers: {workers})")
    lines.append(f"[Server] Try: curl {base}/v1/chat/completions -H 'Content-Type: application/json' "
                 "-d '{\"model\": \"gpt-4o-mini\", \"messages\": [{\"role\": \"user\", \"content\": \"Hello!\"}]}'")
    return lines
