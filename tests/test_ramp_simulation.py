"""The staged ramp (5 → 20 → 50 → 100%) simulated through the decider's own rules
(``bench/ramp.py``: ``decider.evaluate`` on the per-version data the report reads), seeded,
so each test measures the same numbers every run; ``docs/experiments.md`` quotes them.

Each run starts a candidate as a 5% canary; rated users arrive 100 at a time, the
decider looks after each batch, a ramp starts a new version with the new weights, and a
promote or rollback (or 20,000 rated users) ends the run.
"""

from __future__ import annotations

import pytest

from bench import ramp
from gateway.core.config import Decision

ALPHA = Decision().alpha
RAMP_ALPHA = Decision().ramp_alpha


@pytest.mark.slow
def test_equal_arms_are_neither_promoted_nor_rolled_back_through_the_full_ramp() -> None:
    s = ramp.simulate(0.60, 0.0, runs=300, seed=11)
    assert s.wrong <= ALPHA, s
    # an equal candidate may move up a stage (the ramp's lower bar), but at most as often
    # as ramp_alpha allows
    assert s.reached[20.0] / s.runs <= RAMP_ALPHA, s


@pytest.mark.slow
def test_a_lift_from_a_five_percent_canary_reaches_all_the_traffic_within_5000_users() -> None:
    s = ramp.simulate(0.60, 0.06, runs=300, seed=12)
    assert s.quantile(0.5) <= 5_000, s
    assert s.within(20_000) >= 0.9, s
    assert s.rolled_back == 0, s
    # the same lift, each stage on its own evidence at alpha (the decider before ramps
    # kept their evidence): far slower
    before = ramp.simulate(0.60, 0.06, runs=300, seed=12, mode="current", rules=ramp.BEFORE)
    assert before.quantile(0.5) > 2 * s.quantile(0.5), before


@pytest.mark.slow
def test_a_drifting_base_rate_biases_pooled_evidence_but_not_the_strata() -> None:
    """The control's users rate up 70% at the start, 40% after 20,000 users; equal arms.
    The candidate's share grows as it is ramped, so pooling the ramp's users into one
    sample per arm compares the candidate's later (lower) period with the control's
    earlier one; each stage compares its arms in the same period."""
    drifting = {"drift": -0.30}
    stratified = ramp.simulate(0.70, 0.0, runs=300, seed=13, **drifting)
    assert stratified.wrong <= ALPHA, stratified
    pooled = ramp.simulate(0.70, 0.0, runs=300, seed=13, mode="pooled", **drifting)
    assert pooled.rolled_back / pooled.runs > 2 * ALPHA, pooled
    # and a real lift still gets through the drift
    lift = ramp.simulate(0.70, 0.06, runs=200, seed=14, **drifting)
    assert lift.within(20_000) >= 0.9 and lift.rolled_back == 0, lift
