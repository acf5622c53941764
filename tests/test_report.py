"""The report on synthetic per-version counters with a known effect (the rules, exactly)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.cli import print_report
from gateway.control.report import KEEP, PROMOTE, ROLLBACK, build
from gateway.core import stats
from gateway.core.config import ModelVersion, Price

SPEC = {"arms": [{"model": "base", "weight": 50}, {"model": "tuned", "weight": 50}]}
STATE = {"spec": SPEC, "version": 3, "pin": None}


def arm(
    *,
    users: int,
    up: int,
    requests: int = 500,
    assigned: int | None = None,
    errors: int = 0,
    latency_ms: float = 200.0,
    stars: list[int] | None = None,
    ratings_per_user: int = 1,
) -> dict[str, Any]:
    """``users`` rated users, ``up`` of them liked it (per-user mean 1, else 0)."""
    if stars is not None:
        means = [(s - 1) / 4 for s in stars]
    else:
        means = [1.0] * up + [0.0] * (users - up)
    scores = {
        "users": len(means),
        "mean_sum": sum(means),
        "mean_sq": sum(m * m for m in means),
        "ratings": len(means) * ratings_per_user,
    }
    k = ratings_per_user
    agg = {
        "count": len(means) * k,
        "score_sum": sum(means) * k,
        "failures": sum(m < 0.5 for m in means) * k,
        "corrections": 2,
    }
    req = {
        "requests": requests,
        "errors": errors,
        "prompt_tokens": 20 * requests,
        "completion_tokens": 50 * requests,
        f"lat:{stats.bucket(latency_ms)}": requests,
    }
    return {
        "req": req,
        "users": scores,
        "agg": agg,
        "assigned": users if assigned is None else assigned,
    }


def test_a_clear_winner_at_half_the_traffic_is_promoted_and_the_test_is_named() -> None:
    rep = build("exp", STATE, {"base": arm(users=400, up=200), "tuned": arm(users=400, up=280)}, {})
    assert rep["decision"]["action"] == PROMOTE and rep["decision"]["model"] == "tuned"
    (cmp,) = rep["comparisons"]
    assert cmp["test"] == "mixture SPRT" and cmp["p_value"] < 1e-4
    assert cmp["difference"] == 0.2 and 0.05 < cmp["ci95"][0] < 0.2 and cmp["prob_better"] > 0.999
    assert rep["srm"]["mismatch"] is False and rep["srm"]["unit"] == "users"


def test_no_effect_keeps_collecting() -> None:
    rep = build("exp", STATE, {"base": arm(users=400, up=210), "tuned": arm(users=400, up=214)}, {})
    assert rep["decision"]["action"] == KEEP
    assert rep["comparisons"][0]["p_value"] > 0.05
    assert "no significant difference yet" in rep["decision"]["reasons"][0]


def test_an_earlier_look_below_alpha_still_counts() -> None:
    counters = {"base": arm(users=400, up=210), "tuned": arm(users=400, up=214)}
    rep = build("exp", STATE, counters, {}, previous_p={"tuned": 0.01})
    assert rep["comparisons"][0]["p_value"] == 0.01 and rep["decision"]["action"] == PROMOTE


def test_too_few_rated_users_keeps_collecting_even_with_a_big_effect() -> None:
    rep = build(
        "exp",
        STATE,
        {"base": arm(users=40, up=10), "tuned": arm(users=40, up=38, ratings_per_user=10)},
        {},
    )
    assert rep["decision"]["action"] == KEEP
    assert "needs 50 rated users per arm (has 40 and 40)" in rep["decision"]["reasons"][0]
    assert rep["arms"][1]["ratings"] | {"ci95": None} == {
        "users": 40,
        "count": 400,
        "mean_score": 0.95,
        "ci95": None,
        "failure_rate": 0.05,
        "corrections": 2,
    }


def test_a_clear_loser_is_rolled_back() -> None:
    rep = build("exp", STATE, {"base": arm(users=400, up=280), "tuned": arm(users=400, up=200)}, {})
    assert rep["decision"]["action"] == ROLLBACK and rep["decision"]["model"] == "tuned"
    assert rep["decision"]["weights"] == {"tuned": 0.0}


def test_a_skewed_assignment_of_users_trips_the_srm_check_and_blocks_the_decision() -> None:
    rep = build(
        "exp",
        STATE,
        {
            "base": arm(users=400, up=200, assigned=560),
            "tuned": arm(users=400, up=280, assigned=440),
        },
        {},
    )
    assert rep["srm"]["mismatch"] is True and rep["srm"]["p_value"] < 0.001
    assert rep["decision"]["action"] == KEEP
    assert "sample ratio mismatch" in rep["decision"]["reasons"][0]


def test_guardrails_roll_back_a_better_rated_but_failing_or_slow_candidate() -> None:
    errors = build(
        "exp",
        STATE,
        {"base": arm(users=400, up=200, errors=5), "tuned": arm(users=400, up=280, errors=40)},
        {},
    )
    assert errors["decision"]["action"] == ROLLBACK
    assert "error rate 8.0% vs control 1.0%" in errors["decision"]["reasons"][0]
    slow = build(
        "exp",
        STATE,
        {
            "base": arm(users=400, up=200, latency_ms=200),
            "tuned": arm(users=400, up=280, latency_ms=900),
        },
        {},
    )
    assert slow["decision"]["action"] == ROLLBACK
    assert "p95 latency" in slow["decision"]["reasons"][0]


def test_a_pause_is_shown_with_who_set_it_at_which_version_whatever_the_evidence_says() -> None:
    pin = {"by": "ops", "at": 1.0, "version": 3, "action": "rolled back"}
    for data, action in (
        ({"base": arm(users=10, up=5), "tuned": arm(users=10, up=9)}, KEEP),
        ({"base": arm(users=400, up=217), "tuned": arm(users=400, up=326)}, PROMOTE),
    ):
        rep = build("exp", {**STATE, "pin": pin}, data, {})
        assert rep["paused"] is True and rep["pin"] == pin
        assert rep["decision"]["action"] == action
        assert rep["decision"]["reasons"][0] == (
            "paused by ops at version 3 (rolled back): no automatic action until an "
            "operator resumes"
        )
    assert build("exp", STATE, data, {})["paused"] is False


def test_stars_and_the_report_shows_cost_and_latency() -> None:
    models = {
        "base": ModelVersion(
            upstream="u", model="b", price=Price(prompt_per_1m=1.0, completion_per_1m=2.0)
        ),
    }
    rep = build(
        "exp",
        STATE,
        {
            "base": arm(users=0, up=0, stars=[3, 4, 2, 3, 3] * 40),
            "tuned": arm(users=0, up=0, stars=[4, 5, 4, 3, 5] * 40),
        },
        models,
    )
    assert rep["decision"]["action"] == PROMOTE
    base = rep["arms"][0]
    # 20 prompt + 50 completion tokens per request at 1 and 2 per 1M: 120e-6 per request
    assert base["cost_per_1k_requests"] == 0.12
    assert rep["arms"][1]["cost_per_1k_requests"] is None  # no price configured
    assert 200 <= base["latency_ms"]["p50"] <= 220
    assert base["intended_share"] == 0.5 and base["ratings"]["users"] == 200


def test_a_ramps_earlier_versions_are_strata_of_the_comparison_and_shown(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """At 20% (version 4 of a ramp from version 3): the 5% stage's users still count."""
    state = {
        "spec": {"arms": [{"model": "base", "weight": 80}, {"model": "tuned", "weight": 20}]},
        "version": 4,
        "pin": None,
        "ramp_from": 3,
    }
    counters = {
        "base": {
            **arm(users=80, up=40, assigned=80),
            "earlier": [{"users": 1900.0, "mean_sum": 950.0, "mean_sq": 950.0}],
        },
        "tuned": {
            **arm(users=20, up=12, assigned=20),
            "earlier": [{"users": 100.0, "mean_sum": 70.0, "mean_sq": 70.0}],
        },
    }
    rep = build("exp", state, counters, {}, previous_p={}, ramp_p={"tuned": 0.3})
    (cmp,) = rep["comparisons"]
    assert rep["ramp_from"] == 3 and cmp["strata"] == 2 and cmp["ready"]
    assert cmp["ramp_p_value"] == min(0.3, cmp["p_value"])
    alone = build(
        "exp", {**state, "ramp_from": 4}, {k: {**v, "earlier": []} for k, v in counters.items()}, {}
    )
    assert alone["comparisons"][0]["strata"] == 1 and not alone["comparisons"][0]["ready"]
    print_report(rep)
    assert f"(ramp {cmp['ramp_p_value']:.3g}, 2 stages)" in capsys.readouterr().out


def test_the_report_says_what_promoting_a_cheaper_local_student_would_save(
    capsys: pytest.CaptureFixture[str],
) -> None:
    models = {
        "base": ModelVersion(  # a hosted teacher, priced per token
            upstream="u", model="b", price=Price(prompt_per_1m=2.5, completion_per_1m=10.0)
        ),
        "tuned": ModelVersion(  # a local student: its GPU's hour over the tokens it serves
            upstream="u", model="t", price=Price(gpu_hour=3.6, tokens_per_s=1000)
        ),
    }
    rep = build("exp", STATE, {"base": arm(users=40, up=30), "tuned": arm(users=40, up=29)}, models)
    base, tuned = rep["arms"]
    # 20 prompt + 50 completion tokens a request: 20 × 2.5 + 50 × 10 per 1M = 0.55 per 1k
    assert base["cost_per_1k_requests"] == 0.55
    # 50 completion tokens at 1000/s take 0.05 s of a GPU at 0.001 a second: 0.05 per 1k
    assert tuned["cost_per_1k_requests"] == 0.05
    assert tuned["ratings"]["ci95"][0] is not None  # quality with its interval, beside it
    (saving,) = rep["savings"]
    assert saving["per_1k_requests"] == 0.5 and saving["requests"] == 1000
    assert saving["over_requests"] == 0.5
    print_report(rep)
    out = capsys.readouterr().out
    assert "promoting tuned instead of base would save 0.5 per 1k requests" in out
    with pytest.raises(ValueError, match="gpu_hour and tokens_per_s go together"):
        Price(gpu_hour=2.0)
