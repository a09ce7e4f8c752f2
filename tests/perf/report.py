"""The bench's output: one table of measurements, one verdict line per scenario."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from tests.perf.harness import MiB, Spread

Status = Literal["PASS", "MISS", "SKIP", "ERROR"]


@dataclass(slots=True)
class Row:
    scenario: str
    server: str
    metric: str
    spread: Spread | None
    unit: str
    peak_rss: int | None = None
    note: str = ""

    def cells(self) -> list[str]:
        if self.spread is None:
            median = low_high = "–"
            runs = "0"
        else:
            median = f"{number(self.spread.median)} {self.unit}"
            low_high = f"{number(self.spread.low)}–{number(self.spread.high)}"
            runs = str(self.spread.runs)
        rss = "–" if self.peak_rss is None else f"{self.peak_rss / MiB:.0f} MiB"
        return [self.scenario, self.server, self.metric, median, low_high, runs, rss, self.note]


@dataclass(slots=True)
class Verdict:
    scenario: str
    target: str
    measured: str
    status: Status

    def line(self) -> str:
        return f"{self.status:5} {self.scenario}: target {self.target}; measured {self.measured}"


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        print("  " + " | ".join(row.cells()), flush=True)
        return row

    def verdict(self, scenario: str, target: str, measured: str, ok: bool | None) -> Verdict:
        status: Status = "SKIP" if ok is None else ("PASS" if ok else "MISS")
        return self._keep(Verdict(scenario, target, measured, status))

    def versus(
        self,
        scenario: str,
        target: str,
        ours: Spread,
        theirs: Spread | None,
        against: str,
        at_least: float,
        shown: str,
    ) -> Verdict:
        """A PASS when ``ours`` is ``at_least`` times ``theirs`` (a MISS also when unmeasured)."""
        versus = ratio(ours, theirs)
        return self.verdict(
            scenario,
            target,
            f"{show_ratio(versus, against)} ({shown})",
            versus is not None and versus >= at_least,
        )

    def skip(self, scenario: str, target: str, why: str) -> Verdict:
        return self._keep(Verdict(scenario, target, why, "SKIP"))

    def error(self, scenario: str, target: str, why: str) -> Verdict:
        return self._keep(Verdict(scenario, target, why, "ERROR"))

    def _keep(self, verdict: Verdict) -> Verdict:
        self.verdicts.append(verdict)
        print(verdict.line(), flush=True)
        return verdict

    def table(self) -> str:
        """Markdown, so that it can go into the README as it is."""
        head = ["scenario", "server", "metric", "median", "min–max", "runs", "peak RSS", "note"]
        lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
        lines += ["| " + " | ".join(row.cells()) + " |" for row in self.rows]
        return "\n".join(lines)

    def summary(self) -> str:
        return "\n".join(verdict.line() for verdict in self.verdicts)


def number(value: float) -> str:
    """Three significant figures, without an exponent."""
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def ratio(ours: Spread | None, theirs: Spread | None) -> float | None:
    if ours is None or theirs is None or theirs.median == 0:
        return None
    return ours.median / theirs.median


def show_ratio(value: float | None, against: str) -> str:
    return f"{against} n/a" if value is None else f"{value:.2f}× {against}"
