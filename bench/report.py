"""Summaries, ratio tables and charts shared by the benchmark scripts.

A *ratio* here is always ``anchor time / ninep time``: above 1 ninep is
faster, below 1 slower. Each cell is a median over repetitions, with the
minimum and maximum beside it, so noise shows.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Summary:
    """min / median / max of one metric over repetitions."""

    lo: float
    median: float
    hi: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary | None:
        if not values:
            return None
        return cls(min(values), statistics.median(values), max(values), len(values))

    def cell(self, fmt: str = "{:.3g}") -> str:
        if self.n == 1:
            return fmt.format(self.median)
        return f"{fmt.format(self.median)} [{fmt.format(self.lo)}–{fmt.format(self.hi)}]"


def ratio(anchor: Summary | None, ours: Summary | None) -> float | None:
    """``anchor / ours`` of the medians: > 1 means ours is faster."""
    if anchor is None or ours is None or ours.median <= 0 or anchor.median <= 0:
        return None
    return anchor.median / ours.median


def fmt_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}×"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


def ratio_chart(path: Path, title: str, labels: Sequence[str],
                series: Mapping[str, Sequence[float | None]], xlabel: str,
                targets: Mapping[str, Sequence[float | None]] | None = None) -> None:
    """Horizontal grouped bars of ratios per label, with a line at 1.0.

    *targets* (same keys as *series*) draws each target as a tick mark.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    n = len(series)
    height = 0.8 / max(1, n)
    fig, ax = plt.subplots(figsize=(9, 0.55 * len(labels) * max(1, n) / 1.6 + 1.8))
    for i, (name, values) in enumerate(series.items()):
        ys = [j + (i - (n - 1) / 2) * height for j in range(len(labels))]
        # Bars grow from 1.0 (log scale): right of it ninep is faster, left slower.
        xs = [v if v is not None else 1.0 for v in values]
        ax.barh(ys, [x - 1.0 for x in xs], left=1.0, height=height * 0.95, label=name)
        for y, v in zip(ys, values):
            ax.text(1.0 if v is None else v, y, " n/a" if v is None else f" {v:.2f}×", va="center",
                    ha="left" if v is None or v >= 1 else "right", fontsize=7)
        if targets and name in targets:
            for y, t in zip(ys, targets[name]):
                if t is not None:
                    ax.plot([t, t], [y - height / 2, y + height / 2], color="black", lw=1.5)
    ax.set_xscale("log", base=2)
    known = [v for vs in series.values() for v in vs if v is not None] or [1.0]
    ax.set_xlim(min(min(known), 0.5) / 1.6, max(max(known), 2.0) * 1.6)
    ax.axvline(1.0, color="grey", ls="--", lw=1)
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:g}×"))
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
