"""Seed 000's billing report, per model: requests, tokens and an estimated cost over a time range.

Costs are computed at report time from the token counts: a flat price per million tokens when asked,
else the gateway's own `Pricer` (the model's configured prices, else genai-prices' bundled table,
input and output tokens priced apart), else "unknown".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from chatledger.config import GatewayConfig
from chatledger.ops.sqlite import open_store, translated
from chatledger.pricing import FREE_PROVIDER_TYPES, Pricer

PER_GROUP = """
SELECT r.model, COALESCE(r.provider, ''), COALESCE(r.upstream_model, ''), COUNT(*), SUM(s.error IS NOT NULL),
       COALESCE(SUM(s.prompt_tokens), 0), COALESCE(SUM(s.completion_tokens), 0),
       COALESCE(SUM(COALESCE(s.total_tokens, COALESCE(s.prompt_tokens, 0) + COALESCE(s.completion_tokens, 0))), 0)
FROM requests r LEFT JOIN responses s ON s.request_id = r.id
WHERE r.timestamp >= ? AND r.timestamp < ?
GROUP BY r.model, r.provider, r.upstream_model ORDER BY r.model
"""
MILLION = Decimal(1_000_000)


@dataclass
class ModelBill:
    model: str
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cost: Decimal | None = None  # None: no price known for this model
    sources: set[str] = field(default_factory=set)  # "flat", "config", "free", "genai-prices", "unknown"

    @property
    def price_source(self) -> str:
        return " + ".join(sorted(self.sources)) or "-"


@dataclass
class BillingReport:
    start_ms: int
    end_ms: int
    models: list[ModelBill] = field(default_factory=list)

    @property
    def total_requests(self) -> int:
        return sum(bill.requests for bill in self.models)

    @property
    def total_tokens(self) -> int:
        return sum(bill.total_tokens for bill in self.models)

    @property
    def cost(self) -> Decimal:
        return sum((bill.cost for bill in self.models if bill.cost is not None), Decimal(0))

    @property
    def unpriced(self) -> list[str]:
        return [bill.model for bill in self.models if "unknown" in bill.sources]


class ReportPricer:
    def __init__(self, config: GatewayConfig | None, per_million: float | None) -> None:
        self.per_million = None if per_million is None else Decimal(str(per_million))
        self.pricer = Pricer(config) if config is not None else None
        self.configured = {name for name, route in (config.models if config else {}).items() if route.price}
        self.free = {name for name, item in (config.providers if config else {}).items()
                     if item.type in FREE_PROVIDER_TYPES}

    def price(self, model: str, provider: str, upstream: str, prompt: int, completion: int,
              total: int) -> tuple[Decimal | None, str]:
        if self.per_million is not None:
            return Decimal(total) * self.per_million / MILLION, "flat"
        if self.pricer is None:
            return None, "unknown"
        cost = self.pricer.cost(provider, model, upstream, prompt, completion)
        if cost is None:
            return None, "unknown"
        source = "config" if model in self.configured else "free" if provider in self.free else "genai-prices"
        return Decimal(str(cost)), source


def billing_report(path: Path, start_ms: int, end_ms: int, *, price_per_million: float | None = None,
                   config: GatewayConfig | None = None, busy_timeout_ms: int = 5000) -> BillingReport:
    """Requests in [start_ms, end_ms), grouped by the model the client asked for."""
    connection = open_store(path, busy_timeout_ms=busy_timeout_ms, readonly=True)
    try:
        with translated(path):
            rows = connection.execute(PER_GROUP, (start_ms, end_ms)).fetchall()
    finally:
        connection.close()
    pricer = ReportPricer(config, price_per_million)
    bills: dict[str, ModelBill] = {}
    for model, provider, upstream, requests, errors, prompt, completion, total in rows:
        bill = bills.setdefault(model, ModelBill(model))
        bill.requests += requests
        bill.errors += errors or 0
        bill.prompt_tokens += prompt
        bill.completion_tokens += completion
        bill.total_tokens += total
        cost, source = pricer.price(model, provider, upstream, prompt, completion, total)
        if cost is None and not total:
            continue  # nothing to price
        bill.sources.add(source)
        if cost is not None:
            bill.cost = (bill.cost or Decimal(0)) + cost
    for bill in bills.values():
        if not bill.sources:
            bill.cost = Decimal(0)
    return BillingReport(start_ms, end_ms, list(bills.values()))
