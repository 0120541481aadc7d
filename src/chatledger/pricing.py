"""What an exchange cost, in USD: the model's price from configuration, else from genai-prices.

genai-prices ships its price table inside the package (nothing is fetched at run time). Its
`calc_price` costs ~50 µs a call, too much for a writer committing thousands of exchanges a second,
so each (provider, model) is looked up once and its per-million prices kept as floats; only tiered
prices (rare) go through the library each time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from chatledger.config import GatewayConfig

log = logging.getLogger("chatledger")

# How chatledger's provider types are known to genai-prices.
PRICE_PROVIDER_IDS = {"openai": "openai", "anthropic": "anthropic", "dashscope": None, "mock": None}
FREE_PROVIDER_TYPES = frozenset({"mock"})

CostFunction = Callable[[int, int, int], float | None]


@dataclass(frozen=True, slots=True)
class FlatPrice:
    input_per_million: float
    output_per_million: float
    cached_input_per_million: float | None = None

    def __call__(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> float:
        cached_rate = self.cached_input_per_million
        if cached_rate is None:
            cached_rate, cached_tokens = self.input_per_million, 0
        fresh = prompt_tokens - cached_tokens
        return (fresh * self.input_per_million + cached_tokens * cached_rate
                + completion_tokens * self.output_per_million) / 1_000_000


def _unknown(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> None:
    return None


class Pricer:
    """Per-(provider, model) cost functions, built on first use. Used by the writer thread only."""

    def __init__(self, config: GatewayConfig) -> None:
        self._overrides = {name: FlatPrice(route.price.input_per_million, route.price.output_per_million)
                           for name, route in config.models.items() if route.price is not None}
        self._providers = {name: (provider.type, provider.base_url) for name, provider in config.providers.items()}
        self._cache: dict[tuple[str, str, str], CostFunction] = {}

    def cost(self, provider: str, model: str, upstream_model: str, prompt_tokens: int | None,
             completion_tokens: int | None, cached_tokens: int = 0) -> float | None:
        if prompt_tokens is None and completion_tokens is None:
            return None
        key = (provider, model, upstream_model)
        function = self._cache.get(key)
        if function is None:
            function = self._cache[key] = self._lookup(provider, model, upstream_model)
        return function(prompt_tokens or 0, completion_tokens or 0, cached_tokens or 0)

    def _lookup(self, provider: str, model: str, upstream_model: str) -> CostFunction:
        override = self._overrides.get(model)
        if override is not None:
            return override
        kind, base_url = self._providers.get(provider, ("", ""))
        if kind in FREE_PROVIDER_TYPES:
            return FlatPrice(0.0, 0.0)
        return _from_genai_prices(upstream_model or model, PRICE_PROVIDER_IDS.get(kind), base_url)


def _from_genai_prices(model: str, provider_id: str | None, base_url: str) -> CostFunction:
    try:
        from decimal import Decimal

        from genai_prices import Usage, calc_price
    except ImportError:  # an optional dependency: without it, prices come from configuration only
        return _unknown
    options = {"provider_api_url": base_url} if base_url and provider_id != "anthropic" else {}
    if not options and provider_id:
        options = {"provider_id": provider_id}
    try:
        price = calc_price(Usage(input_tokens=1, output_tokens=1), model, **options).model_price
    except (LookupError, ValueError):
        try:  # a custom base URL genai-prices does not know: match on the model name alone
            price = calc_price(Usage(input_tokens=1, output_tokens=1), model).model_price
        except (LookupError, ValueError):
            log.info("no known price for model %r: its cost is recorded as unknown (NULL)", model)
            return _unknown
    rates = (price.input_mtok, price.output_mtok, price.cache_read_mtok)
    if all(rate is None or isinstance(rate, Decimal) for rate in rates):
        return FlatPrice(float(rates[0] or 0), float(rates[1] or 0), None if rates[2] is None else float(rates[2]))

    def tiered(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> float:
        usage = Usage(input_tokens=prompt_tokens, output_tokens=completion_tokens, cache_read_tokens=cached_tokens)
        return float(price.calc_price(usage)["total_price"])

    return tiered
