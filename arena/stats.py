"""Seed statistics for leaderboard cells: mean, sample std and a 95 % Student-t interval.

The arena runs a handful of seeds per cell (often 3), where a normal interval would be far too narrow;
scipy is not a dependency, so the t quantiles are tabulated for small samples (where they matter)
and taken from the Cornish-Fisher expansion beyond (accurate to 1e-4 there).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

# t_{0.975, df} for df = 1..30 (scipy.stats.t.ppf(0.975, df), 6 decimals).
_T975 = (12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004, 2.262157, 2.228139,
         2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905, 2.109816, 2.100922, 2.093024, 2.085963,
         2.079614, 2.073873, 2.068658, 2.063899, 2.059539, 2.055529, 2.051831, 2.048407, 2.045230, 2.042272)
_Z975 = 1.959964


def t975(df: int) -> float:
    """The two-sided 95 % Student-t quantile with ``df`` degrees of freedom."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160
    return z + g1 / df + g2 / df**2 + g3 / df**3 + g4 / df**4


@dataclass(frozen=True)
class Summary:
    """``std``, ``ci_low`` and ``ci_high`` are None for a single value: one seed says nothing about spread."""

    mean: float
    n: int
    std: float | None
    ci_low: float | None
    ci_high: float | None

    @property
    def half_width(self) -> float | None:
        return None if self.ci_high is None else (self.ci_high - self.ci_low) / 2

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(values: Iterable[float | None]) -> Summary | None:
    """Mean, sample std and 95 % t interval of the finite values; None when there are none."""
    xs = [float(x) for x in values if x is not None and math.isfinite(x)]
    if not xs:
        return None
    n = len(xs)
    mean = statistics.fmean(xs)
    if n == 1:
        return Summary(mean, 1, None, None, None)
    std = statistics.stdev(xs)
    hw = t975(n - 1) * std / math.sqrt(n)
    return Summary(mean, n, std, mean - hw, mean + hw)


def overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Whether two closed intervals share a point."""
    return a[0] <= b[1] and b[0] <= a[1]
