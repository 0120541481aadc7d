"""Provider registry: one module per upstream dialect, chosen by the `type` in configuration."""

from __future__ import annotations

from chatledger.config import ProviderConfig
from chatledger.providers.anthropic import AnthropicProvider
from chatledger.providers.base import Completion, Endpoint, Provider, ProviderCall, UpstreamRequest
from chatledger.providers.dashscope import DashScopeProvider
from chatledger.providers.mock import MockProvider
from chatledger.providers.openai import OpenAIProvider
from chatledger.transport import Timeouts, Transport

PROVIDER_TYPES: dict[str, type[Provider]] = {
    "openai": OpenAIProvider,
    "dashscope": DashScopeProvider,
    "anthropic": AnthropicProvider,
    "mock": MockProvider,
}


def build_provider(config: ProviderConfig, transport: Transport, default_timeouts: Timeouts) -> Provider:
    return PROVIDER_TYPES[config.type](config, transport, default_timeouts)


__all__ = ["PROVIDER_TYPES", "Completion", "Endpoint", "Provider", "ProviderCall", "UpstreamRequest",
           "build_provider"]
