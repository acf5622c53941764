"""The decider's rules on simulated data, in-process (no server): validity under
continuous monitoring, power, the user as the unit, guardrails noise cannot trip, and
the staged ramp.

The simulations are seeded, so each measures the same numbers every run; the numbers
are quoted in ``gateway/control/decider.py``.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pytest

from gateway.control import decider
from gateway.control.decider import KEEP, PROMOTE, RAMP, ROLLBACK, ArmData
from gateway.core import stats
from gateway.core.config import Experiment

ALPHA = 0.05
LOOKS = 50  # one look per decide_s
FIRST, STEP = 100, 40  # users per arm at the first look, and new users per arm between looks


def experiment(weights: tuple[float, float] = (50, 50), **rules: Any) -> Experiment:
    return Experiment.model_validate(
        {
            "arms": [
                {"model": "control", "weight": weights[0]},
                {"model": "tuned", "weight": weights[1]},
            ],
            "decision": {"alpha": ALPHA, **rules},
        }
    )


def arm(model: str, weight: float, means: np.ndarray, **more: Any) -> ArmData:
    sample = stats.Sample(len(means), float(means.sum()), float((means**2).sum()))
    more.setdefault("assigned", len(means))
    more.setdefault("requests", len(means))
    return ArmData(model, weight, sample, **more)


def thumbs_users(rng: np.random.Generator, p: float, n: int) -> np.ndarray:
    """n users with one thumbs rating each."""
    return rng.binomial(1, p, n).astype(float)


def heavy_users(rng: np.random.Generator, p: float, n: int) -> np.ndarray:
    """n users, each with a liking of their own (mean p) and 1 to ~30 ratings: the
    per-user mean of their thumbs."""
    liking = rng.beta(3 * p, 3 * (1 - p), n)
    count = rng.geometric(1 / 6, n)
    return rng.binomial(count, liking) / count


def simulate(
    p_control: float,
    p_tuned: float,
    *,
    runs: int = 1000,
    seed: int = 1,
    users: Any = thumbs_users,
    control_per_tuned: int = 1,
) -> Counter[str]:
    """Each run: 50 looks through the decider's own rules; the first action ends the run.

    ``control_per_tuned``: users of the control for each user of the candidate (19 for a
    5% canary); the candidate has ``FIRST + STEP * look`` users at each look.
    """
    k = control_per_tuned
    # ramp_alpha = alpha: a move to the next stage too at the test's level (each run
    # checks the test itself)
    exp = experiment((100 * k / (k + 1), 100 / (k + 1)), ramp_alpha=ALPHA)
    rng = np.random.default_rng(seed)
    total = FIRST + STEP * (LOOKS - 1)
    outcomes: Counter[str] = Counter()
    for _ in range(runs):
        a, b = users(rng, p_control, total * k), users(rng, p_tuned, total)
        previous: dict[str, float] = {}
        action = KEEP
        for look in range(LOOKS):
            n = FIRST + STEP * look
            arms = [
                arm("control", exp.arms[0].weight, a[: n * k]),
                arm("tuned", exp.arms[1].weight, b[:n]),
            ]
            comparisons, srm, decision = decider.evaluate(exp, 1, arms, previous)
            previous.update({c["candidate"]: c["p_value"] for c in comparisons if c["ready"]})
            if decision["action"] != KEEP:
                action = decision["action"]
                break
        outcomes[action] += 1
    return outcomes


def peeking_z_test(p: float, runs: int = 1000, seed: int = 1) -> float:
    """The old rule (a fixed-level z-test at every look) on the same A/A design."""
    rng = np.random.default_rng(seed)
    total = FIRST + STEP * (LOOKS - 1)
    wrong = 0
    for _ in range(runs):
        a, b = thumbs_users(rng, p, total), thumbs_users(rng, p, total)
        for look in range(LOOKS):
            n = FIRST + STEP * look
            sa = stats.Sample(n, float(a[:n].sum()), float(a[:n].sum()))
            sb = stats.Sample(n, float(b[:n].sum()), float(b[:n].sum()))
            if stats.two_proportion_z(sa, sb).p_value < ALPHA:
                wrong += 1
                break
    return wrong / runs


@pytest.mark.slow
def test_a_a_experiments_looked_at_50_times_act_wrongly_at_most_alpha() -> None:
    outcomes = simulate(0.6, 0.6)
    wrong = (outcomes[PROMOTE] + outcomes[ROLLBACK]) / sum(outcomes.values())
    assert wrong <= ALPHA, outcomes
    # the same design with the fixed-level test re-run at each look acts far more often
    assert peeking_z_test(0.6) > 3 * ALPHA


@pytest.mark.slow
def test_a_a_at_a_five_percent_canary_stays_valid_though_the_arms_differ_in_size() -> None:
    outcomes = simulate(0.6, 0.6, runs=400, seed=3, control_per_tuned=19)
    assert (outcomes[RAMP] + outcomes[ROLLBACK]) / 400 <= ALPHA, outcomes


@pytest.mark.slow
def test_a_known_lift_is_found_with_reasonable_power_and_never_rolled_back() -> None:
    outcomes = simulate(0.6, 0.65)
    assert outcomes[PROMOTE] / sum(outcomes.values()) >= 0.6, outcomes
    assert outcomes[ROLLBACK] == 0


def test_heavy_raters_count_once_so_a_a_stays_valid() -> None:
    """Users who rate up to ~30 times with a liking of their own: per-user means keep the
    A/A error at most alpha (per-rating counts would treat one user as many)."""
    outcomes = simulate(0.6, 0.6, runs=400, seed=2, users=heavy_users)
    assert (outcomes[PROMOTE] + outcomes[ROLLBACK]) / 400 <= ALPHA, outcomes


def test_the_running_minimum_keeps_a_crossing_that_the_next_look_would_lose() -> None:
    exp = experiment(min_ratings=100)
    rng = np.random.default_rng(5)
    a, b = thumbs_users(rng, 0.5, 400), thumbs_users(rng, 0.5, 400)
    comparisons, _, decision = decider.evaluate(
        exp, 1, [arm("control", 50, a), arm("tuned", 50, b)], {"tuned": 0.01}
    )
    assert comparisons[0]["p_now"] > ALPHA and comparisons[0]["p_value"] == 0.01
    assert decision["action"] in (PROMOTE, ROLLBACK)
    # too few users: the look does not count, and nothing is decided however big the gap
    few = decider.evaluate(
        exp, 1, [arm("control", 50, np.zeros(30)), arm("tuned", 50, np.ones(30))], {}
    )
    assert few[0][0]["ready"] is False and few[2]["action"] == KEEP
    assert "needs 100 rated users per arm (has 30 and 30)" in few[2]["reasons"][0]


def test_no_winner_moves_up_before_the_guardrails_could_judge_it() -> None:
    exp = experiment()
    a, b = np.tile([0.0, 1.0, 0.0, 0.0], 50), np.tile([1.0, 1.0, 0.0, 1.0], 50)
    early = [arm("control", 50, a, requests=30), arm("tuned", 50, b, requests=30)]
    comparisons, _, decision = decider.evaluate(exp, 1, early, {})
    assert comparisons[0]["p_value"] < ALPHA and decision["action"] == KEEP
    assert "the guardrails need 50 requests per arm (has 30 and 30)" in decision["reasons"][0]
    _, _, decision = decider.evaluate(exp, 1, [arm("control", 50, a), arm("tuned", 50, b)], {})
    assert decision["action"] == PROMOTE


def latencies(rng: np.random.Generator, median_ms: float, n: int) -> dict[int, float]:
    hist: Counter[int] = Counter(stats.bucket(x) for x in rng.lognormal(np.log(median_ms), 0.6, n))
    return {k: float(v) for k, v in hist.items()}


def test_latency_and_error_noise_never_trips_a_guardrail() -> None:
    """200 looks at two arms with the same latency and error rate, 60 to 400 requests each."""
    exp = experiment()
    rng = np.random.default_rng(7)
    users = np.full(10, 0.5)
    for i in range(200):
        n = 60 + 2 * i
        control = arm(
            "control",
            50,
            users,
            requests=n,
            errors=int(rng.binomial(n, 0.02)),
            latency=latencies(rng, 5, n),
        )
        tuned = arm(
            "tuned",
            50,
            users,
            requests=n,
            errors=int(rng.binomial(n, 0.02)),
            latency=latencies(rng, 5, n),
        )
        assert decider.guardrails(control, tuned, exp.decision) == []


def test_a_slow_or_failing_candidate_is_rolled_back_with_the_reason() -> None:
    exp = experiment()
    rng = np.random.default_rng(8)
    users = np.full(200, 0.9)
    control = arm("control", 50, np.full(200, 0.5), requests=300, latency=latencies(rng, 5, 300))
    slow = arm("tuned", 50, users, requests=300, latency=latencies(rng, 50, 300))
    _, _, decision = decider.evaluate(exp, 1, [control, slow], {})
    assert decision["action"] == ROLLBACK and decision["weights"] == {"tuned": 0.0}
    assert "p95 latency at least" in decision["reasons"][0]
    failing = arm("tuned", 50, users, requests=300, errors=60, latency=latencies(rng, 5, 300))
    _, _, decision = decider.evaluate(exp, 1, [control, failing], {})
    assert (
        decision["action"] == ROLLBACK
        and "error rate 20.0% vs control 0.0%" in decision["reasons"][0]
    )


def test_cost_guardrail_applies_only_when_configured() -> None:
    control = arm("control", 50, np.full(200, 0.5), requests=100, cost_per_request=1e-4)
    dear = arm("tuned", 50, np.full(200, 0.9), requests=100, cost_per_request=3e-4)
    assert decider.guardrails(control, dear, experiment().decision) == []
    (reason,) = decider.guardrails(control, dear, experiment(max_cost_ratio=2).decision)
    assert reason.startswith("cost per 1k requests 0.3 vs control 0.1")


@pytest.mark.parametrize(
    ("weights", "action", "share", "new_weights"),
    [
        ((95, 5), RAMP, 20, {"tuned": 20, "control": 80}),
        ((80, 20), RAMP, 50, {"tuned": 50, "control": 50}),
        ((50, 50), PROMOTE, 100, None),
    ],
)
def test_a_winner_moves_through_the_stages_one_step_per_decision(
    weights: tuple[float, float], action: str, share: float, new_weights: dict[str, float] | None
) -> None:
    exp = experiment(weights)
    a, b = np.full(300, 0.4), np.full(300, 0.6)
    a[::2], b[::2] = 0.6, 0.8  # some spread
    _, _, decision = decider.evaluate(
        exp,
        1,
        [
            arm("control", weights[0], a, assigned=100 * weights[0]),
            arm("tuned", weights[1], b, assigned=100 * weights[1]),
        ],
        {},
    )
    assert (decision["action"], decision["share"], decision["weights"]) == (
        action,
        share,
        new_weights,
    )


def test_a_sample_ratio_mismatch_in_users_blocks_every_decision() -> None:
    exp = experiment()
    control = ArmData("control", 50, stats.Sample(300, 120, 120), assigned=560)
    tuned = ArmData("tuned", 50, stats.Sample(300, 240, 240), assigned=440)
    _, srm, decision = decider.evaluate(exp, 1, [control, tuned], {})
    assert srm["mismatch"] is True and srm["unit"] == "users"
    assert decision["action"] == KEEP and "sample ratio mismatch" in decision["reasons"][0]


def decide_once(control: np.ndarray, tuned: np.ndarray) -> dict[str, Any]:
    """One look of the decider at two arms of 50/50 with these per-user means."""
    exp = experiment()
    arms = [arm("control", 50, control), arm("tuned", 50, tuned)]
    comparisons, _, decision = decider.evaluate(exp, 1, arms, {})
    return {**comparisons[0], "action": decision["action"]}


def test_perfectly_separated_arms_are_decided() -> None:
    """Every user of the control rated it down, every user of the candidate up: no
    spread within either arm, all the evidence there is between them."""
    won = decide_once(np.zeros(118), np.ones(122))
    assert won["p_value"] < ALPHA and won["action"] in (PROMOTE, RAMP), won
    lost = decide_once(np.ones(118), np.zeros(122))
    assert lost["p_value"] < ALPHA and lost["action"] == ROLLBACK, lost


def test_identical_arms_without_spread_are_left_alone() -> None:
    for score in (0.0, 0.75, 1.0):  # all down, all 4 stars, all up
        same = decide_once(np.full(200, score), np.full(200, score))
        assert same["p_value"] == 1.0 and same["action"] == KEEP, same


def test_one_user_an_arm_decides_nothing() -> None:
    one = decide_once(np.zeros(1), np.ones(1))
    assert not one["ready"] and one["action"] == KEEP, one


@pytest.mark.parametrize(
    ("control", "tuned"),
    [(np.zeros(3), np.ones(3)), (np.array([0.0, 1.0, 0.5]), np.array([1.0, 1.0, 0.0]))],
)
def test_the_always_valid_interval_stays_within_the_scores_range(
    control: np.ndarray, tuned: np.ndarray
) -> None:
    lo, hi = decide_once(control, tuned)["ci95"]
    assert -1.0 <= lo <= hi <= 1.0


def test_the_evidence_of_a_ramps_earlier_stages_still_counts() -> None:
    """At 20%, a few users so far: alone they show nothing, with the 5% stage's users
    (the ramp's first stratum) the candidate moves on."""
    exp = experiment((80, 20))
    rng = np.random.default_rng(9)
    first_c, first_t = thumbs_users(rng, 0.5, 3800), thumbs_users(rng, 0.7, 200)
    now_c, now_t = thumbs_users(rng, 0.5, 80), thumbs_users(rng, 0.7, 20)

    def sample(xs: np.ndarray) -> stats.Sample:
        return stats.Sample(len(xs), float(xs.sum()), float((xs**2).sum()))

    alone = [arm("control", 80, now_c, requests=400), arm("tuned", 20, now_t, requests=100)]
    comparisons, _, decision = decider.evaluate(exp, 2, alone, {})
    assert decision["action"] == KEEP and comparisons[0]["strata"] == 1
    ramp = [
        arm("control", 80, now_c, requests=400, earlier=(sample(first_c),)),
        arm("tuned", 20, now_t, requests=100, earlier=(sample(first_t),)),
    ]
    comparisons, _, decision = decider.evaluate(exp, 2, ramp, {}, {"tuned": 0.001})
    (c,) = comparisons
    assert c["strata"] == 2 and c["ramp_p_value"] == min(0.001, c["p_value"])
    assert (decision["action"], decision["share"]) == (RAMP, 50), decision
    assert "in 2 stages" in decision["reasons"][1]


@pytest.mark.parametrize(
    ("weights", "action"), [((95, 5), RAMP), ((80, 20), RAMP), ((50, 50), KEEP)]
)
def test_evidence_short_of_alpha_moves_a_candidate_up_a_stage_but_never_promotes_it(
    weights: tuple[float, float], action: str
) -> None:
    """Always-valid p = 0.2: under ramp_alpha (0.5), over alpha (0.05)."""
    exp = experiment(weights)
    a, b = np.tile([0.0, 1.0], 200), np.tile([0.0, 1.0, 1.0, 0.0, 1.0], 80)
    arms = [
        arm("control", weights[0], a, assigned=10 * weights[0]),
        arm("tuned", weights[1], b, assigned=10 * weights[1]),
    ]
    comparisons, _, decision = decider.evaluate(exp, 1, arms, {"tuned": 0.2})
    assert comparisons[0]["verdict"] == RAMP and decision["action"] == action, decision
    strict = experiment(weights, ramp_alpha=ALPHA)
    _, _, decision = decider.evaluate(strict, 1, arms, {"tuned": 0.2})
    assert decision["action"] == KEEP
