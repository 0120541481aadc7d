"""Model name -> (provider, upstream model): explicit mappings first, then the active provider."""

from __future__ import annotations

from dataclasses import dataclass

from chatledger.config import GatewayConfig
from chatledger.errors import ModelNotFound
from chatledger.providers import Provider


@dataclass(slots=True, frozen=True)
class Route:
    provider: Provider
    upstream_model: str


class Router:
    def __init__(self, config: GatewayConfig, providers: dict[str, Provider]) -> None:
        self.providers = providers
        self._mapped = {name: Route(providers[route.provider], route.upstream_model)
                        for name, route in config.models.items()}
        self.configured_active = config.active_provider
        self.active_provider: str | None = config.active_provider

    def set_active(self, name: str | None) -> None:
        if name is not None and name not in self.providers:
            raise ValueError(f"unknown provider {name!r}; configured: {', '.join(sorted(self.providers))}")
        self.active_provider = name

    def resolve(self, model: str) -> Route:
        route = self._mapped.get(model)
        if route is not None:
            return route
        if self.active_provider is not None:
            return Route(self.providers[self.active_provider], model)
        raise ModelNotFound(f"The model `{model}` does not exist or you do not have access to it.",
                            param="model")

    def mapped_models(self) -> list[tuple[str, str]]:
        return [(name, route.provider.name) for name, route in self._mapped.items()]
