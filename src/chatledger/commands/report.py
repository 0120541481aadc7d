"""`chatledger report billing`: seed 000's usage report, per model, with estimated costs."""

from __future__ import annotations

import importlib.util
from decimal import Decimal
from pathlib import Path

import click
import orjson

from chatledger.commands import database_option, friendly_errors, settings_for
from chatledger.config import ConfigError, GatewayConfig, Settings, load_gateway_config
from chatledger.ops import billing as bills
from chatledger.ops.timerange import format_ms, parse_time


@click.group()
def report() -> None:
    """Usage reports."""


def gateway_config(settings: Settings) -> GatewayConfig:
    """The providers and models the gateway runs with: configured prices, and which providers are free."""
    try:
        return load_gateway_config(settings)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc


@report.command()
@click.option("--from", "start", required=True, help="YYYY-MM-DD or ms since the epoch (UTC), inclusive.")
@click.option("--to", "end", required=True, help="YYYY-MM-DD (that whole day included) or ms, exclusive.")
@click.option("--price-per-million", type=click.FloatRange(min=0), default=None,
              help="A flat price per million tokens for every model, instead of per-model prices.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@database_option
@friendly_errors
def billing(start: str, end: str, price_per_million: float | None, as_json: bool, database_path: Path | None) -> None:
    """Total requests, tokens and estimated cost per model between two dates."""
    settings = settings_for(database_path)
    start_ms, end_ms = parse_time(start), parse_time(end, end=True)
    result = bills.billing_report(settings.database_path, start_ms, end_ms, price_per_million=price_per_million,
                                  config=gateway_config(settings),
                                  busy_timeout_ms=settings.sqlite_busy_timeout_ms)
    if as_json:
        click.echo(orjson.dumps(as_document(result), option=orjson.OPT_INDENT_2).decode())
        return
    click.echo(f"Usage Report {format_ms(start_ms)} .. {format_ms(end_ms)}")
    click.echo("============")
    if result.models:
        width = max(8, *(len(bill.model) for bill in result.models))
        click.echo(f"{'model':<{width}}  {'requests':>8}  {'prompt':>12}  {'completion':>12}  {'total':>12}  "
                   f"{'cost':>12}  price")
        for bill in result.models:
            cost = money(bill.cost) if bill.cost is not None else "unknown price"
            click.echo(f"{bill.model:<{width}}  {bill.requests:>8}  {bill.prompt_tokens:>12,}  "
                       f"{bill.completion_tokens:>12,}  {bill.total_tokens:>12,}  {cost:>12}  {bill.price_source}")
        click.echo("")
    click.echo(f"Total Requests: {result.total_requests}")
    click.echo(f"Total Tokens: {result.total_tokens:,}")
    click.echo(f"Estimated Cost: {money(result.cost)}")
    if result.unpriced:
        click.echo(f"(no price known for: {', '.join(result.unpriced)}; use --price-per-million"
                   + ("" if importlib.util.find_spec("genai_prices") else " or install genai-prices") + ")")


def money(amount: Decimal) -> str:
    """Dollars and cents, as seed 000 prints them; sub-dollar amounts keep six decimals."""
    return f"${amount:,.2f}" if amount >= 1 or amount == 0 else f"${amount:.6f}"


def as_document(result: bills.BillingReport) -> dict:
    return {"from": result.start_ms, "to": result.end_ms, "total_requests": result.total_requests,
            "total_tokens": result.total_tokens, "estimated_cost": str(result.cost),
            "unpriced_models": result.unpriced,
            "models": [{"model": bill.model, "requests": bill.requests, "errors": bill.errors,
                        "prompt_tokens": bill.prompt_tokens, "completion_tokens": bill.completion_tokens,
                        "total_tokens": bill.total_tokens,
                        "cost": str(bill.cost) if bill.cost is not None else None,
                        "price_source": bill.price_source} for bill in result.models]}
