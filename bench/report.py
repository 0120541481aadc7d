"""Markdown tables for the benchmark results."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from measure import PERCENTILES

DISTURBED_CORES = 0.05  # other processes using more than this (on 2 cores) visibly move the figures


@dataclass
class Pair:
    """One cell measured in interleaved rounds: the per-round results of each side."""

    direct: list[dict[str, float]] = field(default_factory=list)
    through: list[dict[str, float]] = field(default_factory=list)
    others: float = 0.0  # cores used by processes outside the run while this cell was measured

    def median(self, side: str, key: str) -> float:
        return statistics.median(result[key] for result in getattr(self, side))

    def overhead(self, key: str) -> float:
        """Through minus direct, each the median over the rounds."""
        return self.median("through", key) - self.median("direct", key)

    def errors(self) -> int:
        return int(sum(result["errors"] for result in self.direct + self.through))


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def render(self) -> str:
        lines = [f"### {self.title}", "", "| " + " | ".join(self.header) + " |",
                 "|" + "|".join("---" for _ in self.header) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        if self.notes:
            lines += [""] + [f"{note}" for note in self.notes]
        return "\n".join(lines) + "\n"


@dataclass
class Goal:
    name: str
    target: str  # as the issue states it (its reference machine)
    measured: str
    met: bool | None  # against `target`; None: informational, no verdict
    scaled: str = ""  # the target on this machine (by the hello-world ratio), where speed matters
    met_scaled: bool | None = None

    def row(self) -> list[str]:
        def verdict(met: bool | None) -> str:
            return "n/a" if met is None else ("**met**" if met else "**not met**")
        scaled = self.scaled or "same"
        return [self.name, self.target, self.measured, verdict(self.met), scaled,
                verdict(self.met if not self.scaled else self.met_scaled)]


def cores(value: float) -> str:
    return f"{value:.2f}" + (" (!)" if value > DISTURBED_CORES else "")


def ms(value: float) -> str:
    return f"{value:.3f}"


def rate(value: float) -> str:
    return f"{value:,.0f}"


def triple(pair: Pair, side: str, metric: str) -> str:
    """p50 / p90 / p99 of one side, ms."""
    return " / ".join(ms(pair.median(side, f"{metric}_{p}")) for p in PERCENTILES)


def overhead_triple(pair: Pair, metric: str) -> str:
    return " / ".join(f"{pair.overhead(f'{metric}_{p}'):+.3f}" for p in PERCENTILES)


def render_all(preamble: list[str], tables: list[Table], goals: list[Goal]) -> str:
    goal_table = Table("Goals", ["goal", "target (issue)", "measured", "status", "target on this machine",
                                 "status on this machine"], [goal.row() for goal in goals])
    goal_table.notes.append("Target on this machine: a throughput target times (this machine's hello-world req/s "
                            "/ the reference machine's 21,000), a latency target divided by it; the others do not "
                            "depend on the machine's speed.")
    parts = ["\n".join(preamble) + "\n", *(table.render() for table in tables), goal_table.render()]
    return "\n".join(parts)
