"""The gate's statistics: a paired bootstrap interval for a mean difference, and the
Wilson interval for a proportion. Pure Python, deterministic for a seed.

Paired bootstrap: each example gives one difference (candidate score − control score on
the same prompt), so the pairing removes the between-example variance. The examples are
resampled with replacement ``samples`` times; the interval is the *expanded* percentile
interval of the resampled means (Hesterberg, "What teachers should know about the
bootstrap", 2015): the plain percentile interval is too narrow for small samples (its
spread is the plug-in one, and it uses normal rather than t quantiles), so its distance
from the mean is widened by ``sqrt(n / (n - 1)) * t(n - 1) / z``: 6% at n = 30. Measured
on 600 simulated sets of gains (normal, sd 0.3) whose true mean is the margin, n = 30,
it passes 3.2% of them (the plain percentile interval 3.8%; nominal 2.5%).

``random.Random(seed)`` is the Mersenne Twister, whose sequence for an integer seed is
fixed across Python versions and platforms, so the same scores always give the same
interval and the same decision.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float

    def as_dict(self, digits: int = 4) -> dict[str, float]:
        return {
            "estimate": round(self.estimate, digits),
            "low": round(self.low, digits),
            "high": round(self.high, digits),
        }


def paired_bootstrap(
    differences: Sequence[float],
    *,
    samples: int,
    seed: int,
    confidence: float,
    bounds: tuple[float, float] = (-1.0, 1.0),
) -> Interval:
    """The mean of ``differences`` with its two-sided percentile bootstrap interval, within
    ``bounds`` (a difference of two scores in [0, 1] lies in [-1, 1])."""
    n = len(differences)
    if n == 0:
        raise ValueError("a bootstrap needs at least one difference")
    mean = math.fsum(differences) / n
    rng = random.Random(seed)
    data = list(differences)
    means = sorted(math.fsum(rng.choices(data, k=n)) / n for _ in range(samples))
    tail = (1 - confidence) / 2
    low = means[max(0, math.floor(tail * samples))]
    high = means[min(samples - 1, math.ceil((1 - tail) * samples) - 1)]
    widen = 1.0
    if n > 1:
        z = NormalDist().inv_cdf(1 - tail)
        widen = math.sqrt(n / (n - 1)) * t_quantile(1 - tail, n - 1) / z
    return Interval(
        mean,
        max(bounds[0], mean - (mean - low) * widen),
        min(bounds[1], mean + (high - mean) * widen),
    )


def t_quantile(p: float, df: int) -> float:
    """Student's t quantile, by the Cornish-Fisher expansion around the normal one
    (Abramowitz & Stegun 26.7.5, four terms). From 6 degrees of freedom it is within
    0.3% of the exact value for levels up to 99.5%; below it is too small (at 4: 0.25%
    for 97.5%, 1.2% for 99.5%)."""
    z = NormalDist().inv_cdf(p)
    return (
        z
        + (z**3 + z) / (4 * df)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)
    )


def wilson(successes: float, n: int, confidence: float) -> Interval:
    """The Wilson score interval of a proportion (``successes`` may count halves: ties).

    With n = 0 there is no information: the interval is [0, 1] around 0.5.
    """
    if n == 0:
        return Interval(0.5, 0.0, 1.0)
    z = NormalDist().inv_cdf(1 - (1 - confidence) / 2)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half))
