"""The statistics behind the A/B report, in plain Python (no SciPy on the serving path).

Every function here is checked against SciPy on the same data in ``tests/test_stats.py``.

* scores: mean with a 95% interval from count, sum and sum of squares;
* thumbs (scores 0/1): two-proportion z-test (pooled), the same p-value as a 2×2
  chi-square test without continuity correction;
* stars: Welch's t-test (unequal variances), Student-t p-value and interval;
* sample ratio mismatch: chi-square goodness of fit of assignments to weights;
* Bayesian: P(candidate's true score > control's) under Beta(1 + successes,
  1 + failures) posteriors (scores in [0, 1] count as fractional successes);
* sequential: the mixture SPRT (normal mixing prior over the difference in means) and
  its always-valid p-value and confidence interval, valid however often one looks
  (Johari, Pekelis, Walsh 2017, "Always valid inference"), in the two-sample form that
  takes the difference's estimate and its variance, so the arms may differ in size;
* guardrails: a lower confidence bound for a difference of rates, and distribution-free
  bounds of a quantile from a histogram (order statistics);
* latency: log-scale histograms (10% wide buckets) and their quantiles.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


def norm_sf(z: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2))


@functools.lru_cache(maxsize=64)
def norm_isf(p: float) -> float:
    """The z with ``P(Z > z) = p`` (bisection on :func:`norm_sf`; kept for the few levels
    the rules use, since the decider asks at every look)."""
    lo, hi = -40.0, 40.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if norm_sf(mid) > p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 3e-16
    qab, qap, qam = a + b, a + 1, a - 1
    c, d = 1.0, 1 - qab * x / qap
    d = 1 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1 + aa * d
        d = 1 / (d if abs(d) > tiny else tiny)
        c = 1 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1 + aa * d
        d = 1 / (d if abs(d) > tiny else tiny)
        c = 1 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1) / (a + b + 2):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1 - math.exp(log_front) * _betacf(b, a, 1 - x) / b


def t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with ``df`` degrees of freedom."""
    tail = 0.5 * betainc(df / 2, 0.5, df / (df + t * t))
    return tail if t >= 0 else 1 - tail


def t_ppf(q: float, df: float) -> float:
    """The ``q`` quantile of Student's t (bisection on :func:`t_sf`)."""
    lo, hi = -1e3, 1e3
    for _ in range(200):
        mid = (lo + hi) / 2
        if 1 - t_sf(mid, df) < q:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def gammaincc(a: float, x: float) -> float:
    """The regularized upper incomplete gamma function Q(a, x)."""
    if x <= 0:
        return 1.0
    log_front = -x + a * math.log(x) - math.lgamma(a)
    if x < a + 1:  # series for P, then Q = 1 - P
        term = total = 1 / a
        ap = a
        for _ in range(10_000):
            ap += 1
            term *= x / ap
            total += term
            if abs(term) < abs(total) * 3e-16:
                break
        return 1 - total * math.exp(log_front)
    tiny = 1e-300  # continued fraction for Q (Lentz)
    b = x + 1 - a
    c, d = 1 / tiny, 1 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = 1 / (d if abs(d) > tiny else tiny)
        c = b + an / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1) < 3e-16:
            break
    return math.exp(log_front) * h


def chi2_sf(x: float, k: int) -> float:
    return gammaincc(k / 2, x / 2)


@dataclass(frozen=True)
class Sample:
    """A set of scores summarised as count, sum and sum of squares."""

    n: int
    total: float
    squares: float

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else math.nan

    @property
    def variance(self) -> float:
        """Sample variance (n - 1 in the denominator)."""
        if self.n < 2:
            return math.nan
        return max(self.squares - self.n * self.mean**2, 0.0) / (self.n - 1)

    def interval(self, bounds: tuple[float, float] = (0.0, 1.0)) -> tuple[float, float]:
        """95% interval of the mean (Student t), within ``bounds`` (scores are in [0, 1]:
        a mean cannot be outside, however wide a few users make the interval)."""
        if self.n < 2:
            return (math.nan, math.nan)
        half = t_ppf(0.975, self.n - 1) * math.sqrt(self.variance / self.n)
        return (max(bounds[0], self.mean - half), min(bounds[1], self.mean + half))


@dataclass(frozen=True)
class Comparison:
    test: str
    difference: float  # candidate mean - control mean
    interval: tuple[float, float]  # 95% interval of the difference
    statistic: float
    p_value: float


def two_proportion_z(control: Sample, candidate: Sample) -> Comparison:
    """Thumbs: pooled two-sided z-test of candidate vs control success rates."""
    p1, p2 = control.mean, candidate.mean
    pooled = (control.total + candidate.total) / (control.n + candidate.n)
    se = math.sqrt(pooled * (1 - pooled) * (1 / control.n + 1 / candidate.n))
    z = (p2 - p1) / se if se > 0 else 0.0
    se_diff = math.sqrt(p1 * (1 - p1) / control.n + p2 * (1 - p2) / candidate.n)
    half = 1.959963984540054 * se_diff
    return Comparison(
        "two-proportion z", p2 - p1, (p2 - p1 - half, p2 - p1 + half), z, 2 * norm_sf(abs(z))
    )


def welch_t(control: Sample, candidate: Sample) -> Comparison:
    """Stars (or mixed): Welch's two-sided t-test of the mean scores."""
    v1, v2 = control.variance / control.n, candidate.variance / candidate.n
    diff = candidate.mean - control.mean
    se = math.sqrt(v1 + v2)
    if se == 0:
        return Comparison("welch t", diff, (diff, diff), 0.0, 1.0 if diff == 0 else 0.0)
    df = (v1 + v2) ** 2 / (v1**2 / (control.n - 1) + v2**2 / (candidate.n - 1))
    t = diff / se
    half = t_ppf(0.975, df) * se
    return Comparison("welch t", diff, (diff - half, diff + half), t, 2 * t_sf(abs(t), df))


def sample_ratio_mismatch(
    observed: Sequence[float], weights: Sequence[float]
) -> tuple[float, float]:
    """Chi-square goodness of fit of assignment counts to weights: (chi2, p-value)."""
    if any(o > 0 and w <= 0 for o, w in zip(observed, weights, strict=True)):
        return (math.inf, 0.0)  # traffic to a zero-weight arm: a mismatch, whatever else
    live = [(o, w) for o, w in zip(observed, weights, strict=True) if w > 0]
    n, total_w = sum(o for o, _ in live), sum(w for _, w in live)
    if n == 0 or len(live) < 2:
        return (0.0, 1.0)
    chi2 = sum((o - n * w / total_w) ** 2 / (n * w / total_w) for o, w in live)
    return (chi2, chi2_sf(chi2, len(live) - 1))


def prob_better(control: Sample, candidate: Sample, points: int = 2001) -> float:
    """P(candidate's true mean > control's) under independent Beta posteriors."""
    a1, b1 = 1 + control.total, 1 + control.n - control.total
    a2, b2 = 1 + candidate.total, 1 + candidate.n - candidate.total
    mean2 = a2 / (a2 + b2)
    sd2 = math.sqrt(a2 * b2 / ((a2 + b2) ** 2 * (a2 + b2 + 1)))
    lo, hi = max(0.0, mean2 - 12 * sd2), min(1.0, mean2 + 12 * sd2)
    step = (hi - lo) / (points - 1)
    log_norm = math.lgamma(a2 + b2) - math.lgamma(a2) - math.lgamma(b2)
    total = 0.0
    for i in range(points):  # Simpson's rule over the candidate's posterior
        x = lo + i * step
        if x <= 0 or x >= 1:
            continue
        pdf = math.exp(log_norm + (a2 - 1) * math.log(x) + (b2 - 1) * math.log1p(-x))
        weight = 1 if i in (0, points - 1) else (4 if i % 2 else 2)
        total += weight * pdf * betainc(a1, b1, x)
    return min(max(total * step / 3, 0.0), 1.0)


# -- sequential testing -------------------------------------------------------------------


def floored_variance(sample: Sample) -> float:
    """The sample variance of scores in [0, 1], or, where larger, the variance of the same
    sample with two pseudo-users added, one at 0 and one at 1 (a pseudo-count prior).

    Identical scores have no spread, and a test that reads "no spread" as "no
    information" never decides 118 users who all rated the control down against 122 who
    all rated the candidate up. With the prior the spread is never 0, it shrinks as
    users come in (about ``m(1-m)/n`` for a mean ``m``), and since it only ever raises the
    variance the test stays as conservative as before wherever the data has spread.
    """
    prior = Sample(sample.n + 2, sample.total + 1, sample.squares + 1).variance
    return prior if not sample.variance > prior else sample.variance


def msprt_log_lr(difference: float, variance: float, tau2: float) -> float:
    """log Λ: the mixture likelihood ratio of "difference ≠ 0" against "= 0".

    ``difference`` estimates the true difference θ (candidate − control), normally with
    ``variance`` (``s²_control/n_control + s²_candidate/n_candidate``); θ's mixing prior
    under the alternative is N(0, ``tau2``). Λ = sqrt(v/(v+τ²)) · exp(τ²d² / (2v(v+τ²))).
    With n per arm and per-pair variance V (v = V/n) this is the textbook
    sqrt(V/(V+nτ²)) · exp(n²τ²d² / (2V(V+nτ²))).
    """
    if not variance > 0:
        return 0.0  # no spread: no information (a constant score on both arms)
    return 0.5 * math.log(variance / (variance + tau2)) + tau2 * difference**2 / (
        2 * variance * (variance + tau2)
    )


def stratified(strata: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """One difference and its variance from independent strata ``(d_s, v_s)``, weighted by
    inverse variance: ``D = Σ(d_s/v_s) / Σ(1/v_s)``, ``V = 1 / Σ(1/v_s)``.

    For the mixture SPRT this is exact, not an approximation: the likelihood ratio of a
    common difference θ against 0 over the strata is the product of theirs,
    ``Π exp(θ·d_s/v_s − θ²/(2v_s)) = exp(θ·D/V − θ²/(2V))``, so mixing it over θ gives
    :func:`msprt_log_lr` of ``(D, V)``. Under "no difference in any stratum" that product
    is a nonnegative martingale as the strata fill one after another (the earlier ones
    fixed, the current one growing), and Ville's inequality bounds the chance it ever
    reaches 1/α by α. Strata with no variance carry no information and are left out;
    none left: ``(nan, nan)``.
    """
    informative = [(d, v) for d, v in strata if v > 0 and math.isfinite(d)]
    if not informative:
        return (math.nan, math.nan)
    information = sum(1 / v for _, v in informative)
    return (sum(d / v for d, v in informative) / information, 1 / information)


def msprt_p(difference: float, variance: float, tau2: float) -> float:
    """1/Λ at this look, capped at 1; the always-valid p-value is its running minimum."""
    return min(1.0, math.exp(-msprt_log_lr(difference, variance, tau2)))


def msprt_interval(
    difference: float, variance: float, tau2: float, alpha: float, bound: float = 1.0
) -> tuple[float, float]:
    """The always-valid (1 − alpha) interval at this look: every θ with Λ(θ) < 1/alpha,
    within ``[-bound, bound]`` (a difference of means of scores in [0, 1] lies in [-1, 1])."""
    if not variance > 0:
        return (difference, difference)
    half = math.sqrt(
        variance
        * (variance + tau2)
        / tau2
        * (2 * math.log(1 / alpha) + math.log((variance + tau2) / variance))
    )
    return (max(-bound, difference - half), min(bound, difference + half))


# -- guardrails ---------------------------------------------------------------------------


def rate_increase_lower_bound(
    control: tuple[int, int], candidate: tuple[int, int], alpha: float
) -> float:
    """One-sided (1 − alpha) lower bound of candidate rate − control rate.

    Each argument is (events, trials). Agresti–Caffo: one event and one non-event added to
    each arm, which keeps the bound sane for rates near 0 and small samples.
    """
    (x1, n1), (x2, n2) = control, candidate
    p1, p2 = (x1 + 1) / (n1 + 2), (x2 + 1) / (n2 + 2)
    se = math.sqrt(p1 * (1 - p1) / (n1 + 2) + p2 * (1 - p2) / (n2 + 2))
    return p2 - p1 - norm_isf(alpha) * se


def quantile_bounds(
    histogram: Mapping[int, float], q: float, alpha: float
) -> tuple[float | None, float | None]:
    """One-sided (1 − alpha) lower and upper bounds of the ``q`` quantile.

    Distribution-free: the number of observations below the true quantile is
    Binomial(n, q), so the order statistics at ranks ``nq ∓ z·sqrt(nq(1−q))`` bound it
    (normal approximation). The bounds are bucket bounds of the histogram.
    """
    n = sum(histogram.values())
    if n == 0:
        return (None, None)
    spread = norm_isf(alpha) * math.sqrt(n * q * (1 - q))
    lo_rank, hi_rank = n * q - spread, n * q + spread
    lo = _value_at_rank(histogram, max(lo_rank, 1.0), lower=True)
    hi = _value_at_rank(histogram, hi_rank, lower=False) if hi_rank <= n else None
    return (lo, hi)  # hi None: too few observations to bound the quantile from above


def _value_at_rank(histogram: Mapping[int, float], rank: float, *, lower: bool) -> float:
    seen = 0.0
    for i in sorted(histogram):
        seen += histogram[i]
        if seen >= rank:
            # the rank-th observation lies in bucket i: (RATIO**(i-1), RATIO**i]
            if lower:
                return round(RATIO ** (i - 1), 3) if i > 0 else 0.0
            return round(RATIO**i, 3)
    return round(RATIO ** max(histogram), 3)


# -- latency histograms ------------------------------------------------------------------

RATIO = 1.1  # bucket i holds values in (RATIO**(i-1), RATIO**i] milliseconds


def bucket(ms: float) -> int:
    return 0 if ms <= 1 else math.ceil(math.log(ms) / math.log(RATIO) - 1e-9)


def quantile(histogram: Mapping[int, float], q: float) -> float | None:
    """The ``q`` quantile (upper bucket bound, so within 10% above the true value)."""
    n = sum(histogram.values())
    if n == 0:
        return None
    seen = 0.0
    for i in sorted(histogram):
        seen += histogram[i]
        if seen >= q * n:
            return round(RATIO**i, 3)
    return round(RATIO ** max(histogram), 3)  # pragma: no cover - floating point guard
