"""The report's statistics agree with SciPy's on the same data."""

from __future__ import annotations

import math
import random

import pytest
from scipy import integrate
from scipy import stats as sp

from gateway.core import stats


def sample(scores: list[float]) -> stats.Sample:
    return stats.Sample(len(scores), sum(scores), sum(s * s for s in scores))


def thumbs(n: int, up: int) -> list[float]:
    return [1.0] * up + [0.0] * (n - up)


PAIRS = [(400, 200, 400, 280), (50, 20, 80, 41), (1000, 500, 990, 500), (30, 29, 35, 20)]


@pytest.mark.parametrize(("n1", "up1", "n2", "up2"), PAIRS)
def test_two_proportion_z_matches_a_2x2_chi_square(n1: int, up1: int, n2: int, up2: int) -> None:
    ours = stats.two_proportion_z(sample(thumbs(n1, up1)), sample(thumbs(n2, up2)))
    table = [[up1, n1 - up1], [up2, n2 - up2]]
    chi2, p, _, _ = sp.chi2_contingency(table, correction=False)
    assert ours.p_value == pytest.approx(p, rel=1e-9)
    assert ours.statistic**2 == pytest.approx(chi2, rel=1e-9)
    assert ours.difference == pytest.approx(up2 / n2 - up1 / n1)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_welch_t_matches_scipy(seed: int) -> None:
    rng = random.Random(seed)
    stars_a = [(rng.choice([1, 2, 3, 4, 5]) - 1) / 4 for _ in range(rng.randint(20, 300))]
    stars_b = [(rng.choice([2, 3, 4, 5, 5]) - 1) / 4 for _ in range(rng.randint(20, 300))]
    ours = stats.welch_t(sample(stars_a), sample(stars_b))
    theirs = sp.ttest_ind(stars_b, stars_a, equal_var=False)
    assert ours.statistic == pytest.approx(theirs.statistic, rel=1e-9)
    assert ours.p_value == pytest.approx(theirs.pvalue, rel=1e-7)
    ci = theirs.confidence_interval(0.95)
    assert ours.interval[0] == pytest.approx(ci.low, rel=1e-6)
    assert ours.interval[1] == pytest.approx(ci.high, rel=1e-6)


def test_mean_interval_matches_scipy() -> None:
    scores = [0.0, 0.25, 1.0, 0.75, 0.5, 1.0, 1.0, 0.25]
    lo, hi = sample(scores).interval()
    ref = sp.t.interval(0.95, len(scores) - 1, loc=sp.tmean(scores), scale=sp.sem(scores))
    assert (lo, hi) == pytest.approx(ref, rel=1e-7)


@pytest.mark.parametrize(
    ("observed", "weights"),
    [([480, 520], [50, 50]), ([950, 50], [90, 10]), ([300, 330, 370], [1, 1, 1])],
)
def test_sample_ratio_mismatch_matches_scipy_chisquare(
    observed: list[int], weights: list[float]
) -> None:
    n, total = sum(observed), sum(weights)
    chi2, p = stats.sample_ratio_mismatch(observed, weights)
    ref = sp.chisquare(observed, [n * w / total for w in weights])
    assert chi2 == pytest.approx(ref.statistic, rel=1e-9)
    assert p == pytest.approx(ref.pvalue, rel=1e-7)


def test_traffic_to_a_zero_weight_arm_is_a_mismatch() -> None:
    assert stats.sample_ratio_mismatch([100, 3], [1, 0])[1] == 0.0


@pytest.mark.parametrize(
    ("a", "b"), [((400, 200), (400, 280)), ((50, 25), (50, 25)), ((120, 90), (100, 60))]
)
def test_probability_better_matches_numeric_integration(
    a: tuple[int, int], b: tuple[int, int]
) -> None:
    pa, pb = sp.beta(1 + a[1], 1 + a[0] - a[1]), sp.beta(1 + b[1], 1 + b[0] - b[1])
    ref, _ = integrate.quad(lambda x: pb.pdf(x) * pa.cdf(x), 0, 1, limit=200, points=[pb.mean()])
    ours = stats.prob_better(sample(thumbs(*a)), sample(thumbs(*b)))
    assert ours == pytest.approx(ref, abs=1e-6)


def test_incomplete_functions_match_scipy() -> None:
    from scipy import special

    for a, b, x in [(0.5, 3.0, 0.2), (20, 30, 0.45), (200.0, 150.0, 0.6), (1, 1, 0.3)]:
        assert stats.betainc(a, b, x) == pytest.approx(special.betainc(a, b, x), rel=1e-9)
    for a, x in [(0.5, 0.1), (3, 7.5), (50, 40), (1, 30)]:
        assert stats.gammaincc(a, x) == pytest.approx(special.gammaincc(a, x), rel=1e-9)
    for q, df in [(0.975, 5), (0.975, 1000.5), (0.9, 12)]:
        assert stats.t_ppf(q, df) == pytest.approx(sp.t.ppf(q, df), rel=1e-7)


def test_latency_quantile_is_within_a_bucket_of_the_exact_one() -> None:
    rng = random.Random(7)
    values = [rng.lognormvariate(math.log(300), 0.8) for _ in range(5000)]
    hist: dict[int, float] = {}
    for v in values:
        hist[stats.bucket(v)] = hist.get(stats.bucket(v), 0) + 1
    for q in (0.5, 0.95):
        exact = sorted(values)[int(q * len(values)) - 1]
        got = stats.quantile(hist, q)
        assert got is not None and exact <= got <= exact * stats.RATIO * 1.001


@pytest.mark.parametrize(
    ("n", "p", "d", "tau2"),
    [(100, 0.6, 0.05, 0.0025), (2000, 0.6, 0.02, 0.01), (500, 0.3, -0.04, 0.0025)],
)
def test_mixture_sprt_matches_the_equal_arms_closed_form(
    n: int, p: float, d: float, tau2: float
) -> None:
    """n per arm, per-pair variance V = 2p(1-p): Λ = sqrt(V/(V+nτ²))·exp(n²τ²d²/(2V(V+nτ²)))."""
    v = 2 * p * (1 - p)
    closed = math.sqrt(v / (v + n * tau2)) * math.exp(
        n * n * tau2 * d * d / (2 * v * (v + n * tau2))
    )
    assert math.exp(stats.msprt_log_lr(d, v / n, tau2)) == pytest.approx(closed, rel=1e-12)
    assert stats.msprt_p(d, v / n, tau2) == pytest.approx(min(1.0, 1 / closed), rel=1e-12)


def test_the_always_valid_interval_ends_where_lambda_reaches_one_over_alpha() -> None:
    d, v, tau2, alpha = 0.03, 0.0004, 0.0025, 0.05
    lo, hi = stats.msprt_interval(d, v, tau2, alpha)
    for end in (lo, hi):  # Λ of θ = end, i.e. of the difference d - end
        assert math.exp(stats.msprt_log_lr(d - end, v, tau2)) == pytest.approx(1 / alpha)
    assert lo < d < hi


def test_quantile_bounds_cover_the_true_p95_at_their_level() -> None:
    rng = random.Random(3)
    true_p95 = math.exp(math.log(20) + 0.6 * sp.norm.ppf(0.95))
    below = above = 0
    for _ in range(400):
        hist: dict[int, float] = {}
        for _ in range(300):
            b = stats.bucket(rng.lognormvariate(math.log(20), 0.6))
            hist[b] = hist.get(b, 0) + 1
        lo, hi = stats.quantile_bounds(hist, 0.95, 0.05)
        assert lo is not None and hi is not None
        below += lo > true_p95
        above += hi < true_p95
    assert below / 400 <= 0.05 and above / 400 <= 0.05


def test_rate_increase_lower_bound_is_below_the_estimate_and_tightens_with_data() -> None:
    small = stats.rate_increase_lower_bound((1, 50), (6, 50), 0.001)
    large = stats.rate_increase_lower_bound((100, 5000), (600, 5000), 0.001)
    assert small < 0.1 and large < 0.1 and small < large
    assert large == pytest.approx(
        500 / 5002
        - sp.norm.isf(0.001)
        * math.sqrt(
            (101 / 5002) * (1 - 101 / 5002) / 5002 + (601 / 5002) * (1 - 601 / 5002) / 5002
        ),
        rel=1e-6,
    )


def test_the_interval_of_a_mean_score_stays_within_the_scores_range() -> None:
    """Three users (1, 1 and 0.5): the t interval of their mean would end above 1."""
    sample = stats.Sample(3, 2.5, 2.25)
    lo, hi = sample.interval()
    assert 0.0 <= lo < sample.mean < hi == 1.0


def test_strata_combine_by_inverse_variance_and_one_stratum_is_itself() -> None:
    assert stats.stratified([(0.03, 0.0004)]) == pytest.approx((0.03, 0.0004))
    d, v = stats.stratified([(0.10, 0.001), (0.00, 0.003), (0.5, 0.0)])  # no spread: left out
    assert d == pytest.approx((0.10 / 0.001) / (1 / 0.001 + 1 / 0.003))
    assert v == pytest.approx(1 / (1 / 0.001 + 1 / 0.003))
    assert all(math.isnan(x) for x in stats.stratified([(0.2, 0.0)]))


@pytest.mark.parametrize(
    "strata",
    [
        [(0.06, 0.0012), (0.01, 0.0004)],
        [(-0.02, 0.002), (0.05, 0.0009), (0.04, 0.0003)],
    ],
)
def test_the_mixture_over_strata_is_the_product_of_their_likelihood_ratios(
    strata: list[tuple[float, float]],
) -> None:
    """Λ of the combined (D, V) equals ∫ Π_s N(d_s; θ, v_s)/N(d_s; 0, v_s) dN(0, τ²)(θ),
    integrated numerically: the combination is the strata's joint likelihood, exactly."""
    tau2 = 0.0025
    prior = sp.norm(0, math.sqrt(tau2))

    def joint(theta: float) -> float:
        ratio = math.prod(
            sp.norm(theta, math.sqrt(v)).pdf(d) / sp.norm(0, math.sqrt(v)).pdf(d) for d, v in strata
        )
        return float(ratio * prior.pdf(theta))

    expected, _ = integrate.quad(joint, -0.5, 0.5, points=[0.0], limit=200)
    d, v = stats.stratified(strata)
    assert math.exp(stats.msprt_log_lr(d, v, tau2)) == pytest.approx(expected, rel=1e-6)
