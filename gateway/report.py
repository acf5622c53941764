"""The A/B report of one experiment, and the decision it leads to.

Per arm: requests, share of assignments against the intended weight, errors, latency
and time-to-first-token percentiles, tokens and cost per 1k requests, and ratings
(count, mean score with its 95% interval, failure rate, corrections). Each candidate
arm is compared with the control: difference in mean score with its interval and
p-value (two-proportion z-test when both arms were rated with thumbs only, Welch's
t-test otherwise) and the Bayesian probability that it is better.

The decision (``promote``, ``rollback`` or ``keep collecting``) follows the
experiment's ``decision`` rules, in this order:

1. a sample ratio mismatch (assignments of the current weights do not fit them) means
   the data cannot be trusted: keep collecting, and say so;
2. a candidate that breaks a guardrail against the control — error rate higher by more
   than ``max_error_rate_increase``, or p95 latency above ``max_p95_ratio`` times the
   control's — is rolled back, once both have ``min_requests``;
3. until both arms have ``min_ratings`` ratings: keep collecting;
4. a candidate significantly better (p < ``alpha``) is promoted (the best one, when
   several are); one significantly worse is rolled back; otherwise keep collecting.

The data comes from counters kept in Redis as requests and ratings are stored
(``keys.py``), so a report costs a few HGETALLs however much traffic there was.
"""

from __future__ import annotations

import math
import time
from typing import Any

import redis.asyncio as aioredis

from . import keys, stats
from .config import Experiment, ModelVersion

PROMOTE, ROLLBACK, KEEP = "promote", "rollback", "keep collecting"


def _numbers(raw: dict[Any, Any]) -> dict[str, float]:
    return {keys.text(k): float(v) for k, v in raw.items()}


def _histogram(fields: dict[str, float], prefix: str) -> dict[int, float]:
    return {int(k[len(prefix) :]): v for k, v in fields.items() if k.startswith(prefix)}


def _round(x: float | None, digits: int = 4) -> float | None:
    return None if x is None or math.isnan(x) or math.isinf(x) else round(x, digits)


async def collect(
    redis: aioredis.Redis, name: str, exp: Experiment, version: int
) -> dict[str, dict[str, Any]]:
    """The raw counters of every arm: ``{arm: {"req": {...}, "agg": {...}, "assigned": n}}``."""
    arms = [a.model for a in exp.arms]
    pipe = redis.pipeline(transaction=False)
    for arm in arms:
        pipe.hgetall(keys.requests(name, arm))
        pipe.hgetall(keys.aggregate(name, arm))
    pipe.hgetall(keys.assignments(name, version))
    replies = await pipe.execute()
    assigned = _numbers(replies[-1])
    return {
        arm: {
            "req": _numbers(replies[2 * i]),
            "agg": _numbers(replies[2 * i + 1]),
            "assigned": assigned.get(arm, 0.0),
        }
        for i, arm in enumerate(arms)
    }


def arm_summary(
    arm: str, weight: float, total_weight: float, raw: dict[str, Any], price: Any
) -> dict[str, Any]:
    req, agg = raw["req"], raw["agg"]
    requests = int(req.get("requests", 0))
    failed_over = int(req.get("failed_over", 0))
    errors = int(req.get("errors", 0))
    attempts = requests + failed_over
    sample = stats.Sample(
        int(agg.get("count", 0)), agg.get("score_sum", 0.0), agg.get("score_sq", 0.0)
    )
    lo, hi = sample.interval()
    prompt, completion = int(req.get("prompt_tokens", 0)), int(req.get("completion_tokens", 0))
    cost = None
    if price is not None and requests:
        spent = prompt * price.prompt_per_1m / 1e6 + completion * price.completion_per_1m / 1e6
        cost = spent / requests * 1000
    lat, ttft = _histogram(req, "lat:"), _histogram(req, "ttft:")
    return {
        "model": arm,
        "weight": weight,
        "intended_share": _round(weight / total_weight if total_weight else 0.0),
        "requests": requests,
        "assigned": int(raw["assigned"]),
        "errors": errors,
        "failed_over": failed_over,
        "error_rate": _round((errors + failed_over) / attempts) if attempts else None,
        "latency_ms": {"p50": stats.quantile(lat, 0.5), "p95": stats.quantile(lat, 0.95)},
        "ttft_ms": {"p50": stats.quantile(ttft, 0.5), "p95": stats.quantile(ttft, 0.95)},
        "tokens": {"prompt": prompt, "completion": completion},
        "cost_per_1k_requests": _round(cost, 6),
        "ratings": {
            "count": sample.n,
            "thumbs": int(agg.get("thumbs", 0)),
            "mean_score": _round(sample.mean),
            "ci95": [_round(lo), _round(hi)],
            "failure_rate": _round(agg.get("failures", 0) / sample.n) if sample.n else None,
            "corrections": int(agg.get("corrections", 0)),
        },
        "_sample": sample,
        "_attempts": attempts,
    }


def compare(control: dict[str, Any], candidate: dict[str, Any], exp: Experiment) -> dict[str, Any]:
    rules = exp.decision
    a, b = control["_sample"], candidate["_sample"]
    out: dict[str, Any] = {"candidate": candidate["model"], "control": control["model"]}
    reasons: list[str] = []
    verdict = KEEP

    guard_ok = True
    if control["_attempts"] >= rules.min_requests and candidate["_attempts"] >= rules.min_requests:
        extra = (candidate["error_rate"] or 0.0) - (control["error_rate"] or 0.0)
        if extra > rules.max_error_rate_increase:
            guard_ok = False
            reasons.append(
                f"error rate {candidate['error_rate']:.1%} vs control "
                f"{control['error_rate']:.1%} (allowed +{rules.max_error_rate_increase:.1%})"
            )
        p95c, p95k = control["latency_ms"]["p95"], candidate["latency_ms"]["p95"]
        if p95c and p95k and p95k > rules.max_p95_ratio * p95c:
            guard_ok = False
            reasons.append(
                f"p95 latency {p95k:g} ms vs control {p95c:g} ms (allowed {rules.max_p95_ratio:g}x)"
            )
    out["guardrails_ok"] = guard_ok

    if a.n >= 2 and b.n >= 2:
        thumbs_only = control["ratings"]["thumbs"] == a.n and candidate["ratings"]["thumbs"] == b.n
        test = stats.two_proportion_z(a, b) if thumbs_only else stats.welch_t(a, b)
        out.update(
            test=test.test,
            difference=_round(test.difference),
            ci95=[_round(test.interval[0]), _round(test.interval[1])],
            statistic=_round(test.statistic),
            p_value=float(f"{test.p_value:.4g}"),
            prob_better=_round(stats.prob_better(a, b)),
        )
        significant = test.p_value < rules.alpha
    else:
        out.update(test=None, difference=None, ci95=[None, None], statistic=None,
                   p_value=None, prob_better=None)  # fmt: skip
        significant = False

    if not guard_ok:
        verdict = ROLLBACK
    elif a.n < rules.min_ratings or b.n < rules.min_ratings:
        reasons.append(f"needs {rules.min_ratings} ratings per arm (has {a.n} and {b.n})")
    elif significant and out["difference"] > 0:
        verdict = PROMOTE
        reasons.append(
            f"score {b.mean:.3f} vs {a.mean:.3f}, p = {out['p_value']:.3g} < {rules.alpha:g}"
        )
    elif significant:
        verdict = ROLLBACK
        reasons.append(f"score {b.mean:.3f} vs {a.mean:.3f} is worse, p = {out['p_value']:.3g}")
    else:
        reasons.append(f"no significant difference (p = {out['p_value']:.3g})")
    out["verdict"], out["reasons"] = verdict, reasons
    return out


def decide(
    comparisons: list[dict[str, Any]], srm: dict[str, Any], arms: list[dict[str, Any]]
) -> dict[str, Any]:
    if srm["mismatch"]:
        return {
            "action": KEEP,
            "model": None,
            "reasons": [
                f"sample ratio mismatch (p = {srm['p_value']:.3g}): assignments do not fit "
                "the weights, so the results cannot be trusted; check the routing"
            ],
        }
    promote = [c for c in comparisons if c["verdict"] == PROMOTE]
    if promote:
        means = {a["model"]: a["ratings"]["mean_score"] or 0.0 for a in arms}
        best = max(promote, key=lambda c: means[c["candidate"]])
        return {"action": PROMOTE, "model": best["candidate"], "reasons": best["reasons"]}
    rollback = [c for c in comparisons if c["verdict"] == ROLLBACK]
    if rollback:
        return {"action": ROLLBACK, "model": rollback[0]["candidate"],
                "reasons": rollback[0]["reasons"]}  # fmt: skip
    reasons = [f"{c['candidate']}: {'; '.join(c['reasons'])}" for c in comparisons]
    return {"action": KEEP, "model": None, "reasons": reasons or ["no candidate arm"]}


def build(
    name: str,
    exp: Experiment,
    version: int,
    raw: dict[str, dict[str, Any]],
    models: dict[str, ModelVersion],
) -> dict[str, Any]:
    """The report from the counters :func:`collect` read (pure: tested on synthetic data)."""
    total_weight = sum(a.weight for a in exp.arms)
    arms = [
        arm_summary(
            a.model,
            a.weight,
            total_weight,
            raw[a.model],
            models[a.model].price if a.model in models else None,
        )
        for a in exp.arms
    ]
    chi2, p = stats.sample_ratio_mismatch(
        [a["assigned"] for a in arms], [a["weight"] for a in arms]
    )
    srm = {
        "version": version,
        "assigned": sum(a["assigned"] for a in arms),
        "chi2": _round(chi2),
        "p_value": float(f"{p:.4g}"),
        "mismatch": p < exp.decision.srm_alpha,
    }
    by_model = {a["model"]: a for a in arms}
    control = by_model[exp.control_arm]
    comparisons = [
        compare(control, a, exp)
        for a in arms
        if a is not control and (a["weight"] > 0 or a["ratings"]["count"] > 0)
    ]
    decision = decide(comparisons, srm, arms)
    for a in arms:
        del a["_sample"], a["_attempts"]
    return {
        "object": "experiment.report",
        "experiment": name,
        "version": version,
        "generated_at": int(time.time()),
        "control": control["model"],
        "arms": arms,
        "srm": srm,
        "comparisons": comparisons,
        "decision": decision,
    }


async def report(
    redis: aioredis.Redis,
    name: str,
    exp: Experiment,
    version: int,
    models: dict[str, ModelVersion],
) -> dict[str, Any]:
    return build(name, exp, version, await collect(redis, name, exp, version), models)
