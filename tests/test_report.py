"""The report's decision on synthetic counters with a known effect (the rules, exactly)."""

from __future__ import annotations

from typing import Any

from gateway import stats
from gateway.config import Experiment, ModelVersion, Price
from gateway.report import KEEP, PROMOTE, ROLLBACK, build

EXP = Experiment.model_validate(
    {"arms": [{"model": "base", "weight": 50}, {"model": "tuned", "weight": 50}]}
)


def arm(
    *, ratings: int, up: int, requests: int = 500, assigned: int | None = None,
    errors: int = 0, latency_ms: float = 200.0, stars: list[int] | None = None,
) -> dict[str, Any]:  # fmt: skip
    if stars is not None:
        scores = [(s - 1) / 4 for s in stars]
        agg = {"count": len(scores), "score_sum": sum(scores),
               "score_sq": sum(x * x for x in scores), "thumbs": 0}  # fmt: skip
    else:
        agg = {"count": ratings, "score_sum": up, "score_sq": up, "thumbs": ratings,
               "failures": ratings - up}  # fmt: skip
    req = {"requests": requests, "errors": errors, "prompt_tokens": 20 * requests,
           "completion_tokens": 50 * requests,
           f"lat:{stats.bucket(latency_ms)}": requests}  # fmt: skip
    return {"req": req, "agg": agg,
            "assigned": requests if assigned is None else assigned}  # fmt: skip


def test_a_clear_winner_is_promoted() -> None:
    # 70% vs 50% thumbs up over 400 ratings each: z ≈ 5.8
    rep = build("exp", EXP, 3, {"base": arm(ratings=400, up=200),
                                "tuned": arm(ratings=400, up=280)}, {})  # fmt: skip
    assert rep["decision"]["action"] == PROMOTE and rep["decision"]["model"] == "tuned"
    (cmp,) = rep["comparisons"]
    assert cmp["test"] == "two-proportion z" and cmp["p_value"] < 1e-6
    assert cmp["difference"] == 0.2 and cmp["ci95"][0] > 0.13 and cmp["prob_better"] > 0.999
    assert rep["srm"]["mismatch"] is False


def test_no_effect_keeps_collecting() -> None:
    rep = build("exp", EXP, 3, {"base": arm(ratings=400, up=210),
                                "tuned": arm(ratings=400, up=214)}, {})  # fmt: skip
    assert rep["decision"]["action"] == KEEP
    assert rep["comparisons"][0]["p_value"] > 0.05
    assert "no significant difference" in rep["decision"]["reasons"][0]


def test_too_few_ratings_keeps_collecting_even_with_a_big_effect() -> None:
    rep = build("exp", EXP, 3, {"base": arm(ratings=40, up=10),
                                "tuned": arm(ratings=40, up=38)}, {})  # fmt: skip
    assert rep["decision"]["action"] == KEEP
    assert "needs 100 ratings per arm (has 40 and 40)" in rep["decision"]["reasons"][0]


def test_a_clear_loser_is_rolled_back() -> None:
    rep = build("exp", EXP, 3, {"base": arm(ratings=400, up=280),
                                "tuned": arm(ratings=400, up=200)}, {})  # fmt: skip
    assert rep["decision"] == {"action": ROLLBACK, "model": "tuned",
                               "reasons": rep["comparisons"][0]["reasons"]}  # fmt: skip


def test_a_skewed_assignment_trips_the_srm_check_and_blocks_the_decision() -> None:
    rep = build("exp", EXP, 3, {"base": arm(ratings=400, up=200, assigned=560),
                                "tuned": arm(ratings=400, up=280, assigned=440)}, {})  # fmt: skip
    assert rep["srm"]["mismatch"] is True and rep["srm"]["p_value"] < 0.001
    assert rep["decision"]["action"] == KEEP
    assert "sample ratio mismatch" in rep["decision"]["reasons"][0]


def test_guardrails_roll_back_a_better_rated_but_failing_or_slow_candidate() -> None:
    errors = build("exp", EXP, 3, {"base": arm(ratings=400, up=200, errors=5),
                                   "tuned": arm(ratings=400, up=280, errors=40)}, {})  # fmt: skip
    assert errors["decision"]["action"] == ROLLBACK
    assert "error rate 8.0% vs control 1.0%" in errors["decision"]["reasons"][0]
    slow = build("exp", EXP, 3, {"base": arm(ratings=400, up=200, latency_ms=200),
                                 "tuned": arm(ratings=400, up=280, latency_ms=900)},
                 {})  # fmt: skip
    assert slow["decision"]["action"] == ROLLBACK
    assert "p95 latency" in slow["decision"]["reasons"][0]


def test_stars_use_welch_and_the_report_shows_cost_and_latency() -> None:
    models = {
        "base": ModelVersion(upstream="u", model="b", price=Price(prompt_per_1m=1.0,
                                                                  completion_per_1m=2.0)),
    }  # fmt: skip
    rep = build("exp", EXP, 3, {"base": arm(ratings=0, up=0, stars=[3, 4, 2, 3, 3] * 40),
                                "tuned": arm(ratings=0, up=0, stars=[4, 5, 4, 3, 5] * 40)},
                models)  # fmt: skip
    assert rep["comparisons"][0]["test"] == "welch t"
    assert rep["decision"]["action"] == PROMOTE
    base = rep["arms"][0]
    # 20 prompt + 50 completion tokens per request at 1 and 2 per 1M: 120e-6 per request
    assert base["cost_per_1k_requests"] == 0.12
    assert rep["arms"][1]["cost_per_1k_requests"] is None  # no price configured
    assert 200 <= base["latency_ms"]["p50"] <= 220
    assert base["intended_share"] == 0.5 and base["ratings"]["count"] == 200
