"""The decider's rules: from an experiment's per-version data to promote, ramp, rollback or
keep collecting. Pure functions on numbers (no I/O): ``decisions.py`` applies them.

**The test: mixture SPRT** (always-valid p-values, Johari, Pekelis, Walsh 2017). The
decider looks every ``control.decide_s``, so a fixed-level test re-run at each look
would act on noise (an A/A experiment looked at every 25 ratings per arm up to 2,000
was auto-promoted or rolled back 31% of the time at a nominal 5%). For each candidate
the difference in mean score d (candidate − control) and its variance v are estimated,
and the mixture likelihood ratio Λ of "d ≠ 0" against "d = 0" with a N(0, τ²) mixing
prior (τ = ``decision.mixture_sd``) is computed (:func:`gateway.core.stats.msprt_log_lr`).
The always-valid p-value is the running minimum of 1/Λ over the looks; the decider
acts when it falls below ``decision.alpha``, in the direction of d. The running
minimum is kept in Redis per experiment version (``fw:ctl:seq:{exp}:{ver}``), updated
at every look of the decider once both arms have ``min_ratings`` users (a look the
report makes on request reads it but does not move it). Each arm's variance has a
floor, its users' scores with two pseudo-users added, one at 0 and one at 1
(:func:`gateway.core.stats.floored_variance`): arms where every user rated alike are still
evidence (118 users all down against 122 all up is decided at the first counted look),
and the floor only ever raises a variance (the A/A numbers below are unchanged by it).
The always-valid interval is kept within [-1, 1], where a difference of scores lies.

**The unit is the user**: the sample of an arm is one mean score per user (each
user's ratings averaged), so a heavy rater counts once, and the sample sizes, the
variances and the sample-ratio check are in users. Requests, ratings and assignments
are kept per experiment version.

**Only the current ramp counts, one stratum per version.** The decider's own ramp steps
(5 → 20 → 50%) keep the experiment's ramp (``ramp_from`` in its state); any other change
(a promote, a rollback, an operator's PUT, a new arm, a changed control) starts a new
one. Each version of the ramp is a stratum: its arms were compared in the same period
under the same allocation, so the stratum's difference d_s of per-user means is
unbiased whatever the weights and whatever the base rate did between stages, and its
variance v_s is estimated as above. The strata are combined by inverse variance
(:func:`gateway.core.stats.stratified`): D = Σ(d_s/v_s)/Σ(1/v_s), V = 1/Σ(1/v_s). For
the normal mixture this is exact: the likelihood ratio of a common difference θ over
the strata is Π exp(θd_s/v_s − θ²/(2v_s)) = exp(θD/V − θ²/(2V)), so Λ of (D, V) is the
mixture of the strata's joint likelihood ratio. Under "no difference" it is one
nonnegative martingale over the whole ramp (the closed strata fixed, the current one
growing), and Ville's inequality bounds the chance it ever reaches 1/α by α — however
many looks and stages. Pooling the ramp's users into one sample per arm instead would
be biased when the base rate moves during the ramp (the candidate's share grows as it
moves, so its sample leans to later periods). The running minimum p kept per version
(``fw:ctl:seq:{exp}:{ver}``) is that of the combined statistic over the looks at that
version: each stage is decided by a look of its own (on the evidence of the whole
ramp), so a candidate whose evidence fades does not move on; the report also shows the
ramp's always-valid p (``ramp_p_value``: the minimum over the ramp's versions).

**Two levels.** A promote (the move to 100%) and a rollback need p < ``alpha``; a move
to a stage below 100% needs p < ``ramp_alpha`` (0.5; never less strict than ``alpha``).
Both are crossings of the same martingale, so an equal candidate is promoted or rolled
back with probability at most ``alpha`` over the whole ramp and leaves its first stage
with probability at most ``ramp_alpha``. A lower bar for the stages below 100% is what a
fast ramp needs: at a 5% canary the candidate's users are few, and a test at ``alpha``
there alone takes about 10,000 rated users for a 0.60 → 0.66 lift.

Measured (``tests/test_decider.py``, in-process, seeded): 1,000 A/A experiments with
both arms at 60% thumbs-up, 50 looks every 40 users per arm from 100 to 2,060, α 0.05,
τ 0.05: **2.0% wrong actions** (1.1% promote, 0.9% rollback), against 28.9% for the
z-test re-run at each look on the same design; a lift from 60% to 65% is promoted in
**72%** of 1,000 experiments within the same 50 looks, and never rolled back. With
heavy raters (each user 1 to ~30 ratings, a liking of their own) the A/A rate is 1.5%;
at a 5% canary (19 control users per candidate user, 400 experiments) it is 2.0%.

**Guardrails** roll a candidate back at any stage; each is a one-sided confidence
bound at ``guardrail_alpha`` (0.001) once both arms have ``min_requests``, so noise does
not trip them:

* errors: the lower bound of the difference in error rate (errors and fail-overs per
  attempt) exceeds ``max_error_rate_increase``;
* latency: the lower bound of the candidate's p95 exceeds ``max_p95_ratio`` times the
  upper bound of the control's (distribution-free order-statistic bounds from the
  latency histograms; the control's slowest request while it has too few requests for
  an upper bound — about 180 at the default level);
* cost (optional): cost per request above ``max_cost_ratio`` times the control's.

No candidate moves up before the guardrails could judge it (``min_requests`` on both
arms under the current version).

**Staged ramp**: a candidate better at ``ramp_alpha`` moves to the next of
``decision.stages`` (e.g. 5 → 20 → 50 → 100% of traffic); each stage is a new version of
the same ramp, so it brings the evidence so far with it and passes its own guardrails.
Reaching 100% is the promote, at ``alpha``: the winner becomes the control. A sample
ratio mismatch (users assigned do not fit the weights) blocks every decision.

Measured (``python -m bench.ramp --before``, ``tests/test_ramp_simulation.py``: the
full ramp from a 5% canary through :func:`evaluate`, a look every 100 rated users, at
most 20,000; ``docs/experiments.md`` has the table): equal arms at 60% are promoted
or rolled back in 1.6% of 400 ramps (before: 0.5%) and reach 20% in 19%; a 0.60 → 0.66
lift reaches 100% after a median of 4,800 rated users, 98% of ramps within 20,000
(before, each stage on its own evidence at ``alpha``: 15,700, and 72%). With the base
rate drifting from 70% to 40% during the ramp, equal arms stay within ``alpha`` (2.5%);
pooled across versions they would be rolled back in 14.5%.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.core import stats
from gateway.core.config import Decision, Experiment

PROMOTE, RAMP, ROLLBACK, KEEP = "promote", "ramp", "rollback", "keep collecting"
TEST = "mixture SPRT"
STAGE_SLACK = 0.5  # percentage points: a share this close to a stage is at that stage


@dataclass(frozen=True)
class ArmData:
    """What the decider knows of one arm under the experiment's current version."""

    model: str
    weight: float
    users: stats.Sample  # one mean score per rated user
    # the same, under each earlier version of the current ramp (oldest first; one per
    # version for every arm, empty where the arm had no rated user): the strata
    earlier: tuple[stats.Sample, ...] = ()
    ratings: int = 0
    assigned: int = 0  # users assigned to it by weight (not forced)
    requests: int = 0
    errors: int = 0
    failed_over: int = 0
    latency: Mapping[int, float] = field(default_factory=dict)  # log-scale histogram, ms
    cost_per_request: float | None = None

    @property
    def attempts(self) -> int:
        return self.requests + self.failed_over


def _r(x: float | None, digits: int = 4) -> float | None:
    return None if x is None or math.isnan(x) or math.isinf(x) else round(x, digits)


def strata(control: ArmData, candidate: ArmData) -> list[tuple[stats.Sample, stats.Sample]]:
    """(control, candidate) per version of the current ramp, the current one last."""
    pairs = list(zip(control.earlier, candidate.earlier, strict=False))
    return [*pairs, (control.users, candidate.users)]


def sequential(
    control: ArmData, candidate: ArmData, rules: Decision, previous_p: float | None
) -> dict[str, Any]:
    """The mixture SPRT at this look, over the strata of the current ramp: the difference,
    its always-valid interval and p-value.

    Each stratum (one version: one period, one allocation) gives the difference of its
    arms' per-user means and its variance; :func:`gateway.core.stats.stratified` combines
    them. ``ready``: both arms have ``min_ratings`` users over the ramp, so this look
    counts (and the running minimum ``p_value``, of this version's looks, includes it).
    """
    used = [(a, b) for a, b in strata(control, candidate) if a.n >= 2 and b.n >= 2]
    if not used:
        return {
            "ready": False,
            "difference": None,
            "interval": [None, None],
            "p_now": None,
            "p_value": previous_p,
            "strata": 0,
        }
    diff, variance = stats.stratified(
        [
            (b.mean - a.mean, stats.floored_variance(a) / a.n + stats.floored_variance(b) / b.n)
            for a, b in used
        ]
    )
    tau2 = rules.mixture_sd**2
    p_now = stats.msprt_p(diff, variance, tau2)
    users_a, users_b = sum(a.n for a, _ in used), sum(b.n for _, b in used)
    ready = users_a >= rules.min_ratings and users_b >= rules.min_ratings
    p = min(p_now, 1.0 if previous_p is None else previous_p) if ready else previous_p
    lo, hi = stats.msprt_interval(diff, variance, tau2, rules.alpha)
    return {
        "ready": ready,
        "difference": diff,
        "interval": [lo, hi],
        "p_now": p_now,
        "p_value": p,
        "strata": len(used),
    }


def guardrails(control: ArmData, candidate: ArmData, rules: Decision) -> list[str]:
    """Every guardrail the candidate breaks, as a reason (empty: none)."""
    if control.attempts < rules.min_requests or candidate.attempts < rules.min_requests:
        return []
    broken = []
    ga = rules.guardrail_alpha
    bad_c, bad_k = control.errors + control.failed_over, candidate.errors + candidate.failed_over
    increase = stats.rate_increase_lower_bound(
        (bad_c, control.attempts), (bad_k, candidate.attempts), ga
    )
    if increase > rules.max_error_rate_increase:
        broken.append(
            f"error rate {bad_k / candidate.attempts:.1%} vs control "
            f"{bad_c / control.attempts:.1%}: at least +{increase:.1%} "
            f"(allowed +{rules.max_error_rate_increase:.1%}, {1 - ga:.1%} confidence)"
        )
    cand_lo, _ = stats.quantile_bounds(candidate.latency, 0.95, ga)
    _, ctrl_hi = stats.quantile_bounds(control.latency, 0.95, ga)
    if ctrl_hi is None and control.latency:  # too few requests to bound it: the slowest one
        ctrl_hi = stats.quantile(control.latency, 1.0)
    if cand_lo is not None and ctrl_hi is not None and cand_lo > rules.max_p95_ratio * ctrl_hi:
        broken.append(
            f"p95 latency at least {cand_lo:g} ms vs control at most {ctrl_hi:g} ms "
            f"(allowed {rules.max_p95_ratio:g}x, {1 - ga:.1%} confidence)"
        )
    ck, cc = candidate.cost_per_request, control.cost_per_request
    if rules.max_cost_ratio is not None and ck is not None and cc:
        if ck > rules.max_cost_ratio * cc:
            broken.append(
                f"cost per 1k requests {ck * 1000:.4g} vs control {cc * 1000:.4g} "
                f"(allowed {rules.max_cost_ratio:g}x)"
            )
    return broken


def _pooled(samples: list[stats.Sample]) -> stats.Sample:
    return stats.Sample(
        sum(s.n for s in samples), sum(s.total for s in samples), sum(s.squares for s in samples)
    )


def compare(
    control: ArmData,
    candidate: ArmData,
    rules: Decision,
    previous_p: float | None,
    ramp_p: float | None = None,
) -> dict[str, Any]:
    """One candidate against the control: test, guardrails, verdict and reasons.

    ``previous_p``: the running minimum of this version's looks; ``ramp_p``: that of the
    ramp's earlier versions (shown as ``ramp_p_value``, the ramp's always-valid p-value).
    Verdicts: ``promote`` (p < ``alpha``, better), ``ramp`` (p < ``ramp_alpha`` only:
    enough to move to a stage below 100%, not to promote), ``rollback``, ``keep
    collecting``; p is this version's running minimum, so each stage is decided by a look
    of its own, on the evidence of the whole ramp.
    """
    seq = sequential(control, candidate, rules, previous_p)
    broken = guardrails(control, candidate, rules)
    pairs = strata(control, candidate)
    a, b = _pooled([c for c, _ in pairs]), _pooled([k for _, k in pairs])  # over the ramp
    over = f"{b.n} and {a.n} users" + (f" in {seq['strata']} stages" if seq["strata"] > 1 else "")
    ramp_alpha = max(rules.ramp_alpha, rules.alpha)
    now_p = seq["p_value"]
    ramp_pv = now_p if ramp_p is None else min(ramp_p, 1.0 if now_p is None else now_p)
    out: dict[str, Any] = {
        "candidate": candidate.model,
        "control": control.model,
        "test": TEST if seq["difference"] is not None else None,
        "difference": _r(seq["difference"]),
        "ci95": [_r(x) for x in seq["interval"]],
        "p_value": None if seq["p_value"] is None else float(f"{seq['p_value']:.4g}"),
        "p_now": None if seq["p_now"] is None else float(f"{seq['p_now']:.4g}"),
        "ramp_p_value": None if ramp_pv is None else float(f"{ramp_pv:.4g}"),
        "strata": seq["strata"],
        "ready": seq["ready"],
        "guardrails_ok": not broken,
    }
    reasons = list(broken)
    verdict = KEEP
    p = seq["p_value"]
    if broken:
        verdict = ROLLBACK
    elif a.n < rules.min_ratings or b.n < rules.min_ratings:
        reasons.append(f"needs {rules.min_ratings} rated users per arm (has {a.n} and {b.n})")
    elif not seq["ready"]:  # enough users over the ramp, but fewer than 2 in every stage
        reasons.append(f"needs 2 rated users per arm in one stage (has {a.n} and {b.n})")
    elif min(control.attempts, candidate.attempts) < rules.min_requests:
        reasons.append(
            f"the guardrails need {rules.min_requests} requests per arm (has "
            f"{control.attempts} and {candidate.attempts})"
        )
    elif p is not None and p < ramp_alpha and seq["difference"] > 0:
        verdict = PROMOTE if p < rules.alpha else RAMP
        reasons.append(
            f"score {b.mean:.3f} vs {a.mean:.3f} over {over}, "
            f"always-valid p = {p:.3g} < {rules.alpha if verdict == PROMOTE else ramp_alpha:g}"
        )
    elif p is not None and p < rules.alpha:
        verdict = ROLLBACK
        reasons.append(
            f"score {b.mean:.3f} vs {a.mean:.3f} over {over} is worse, always-valid p = {p:.3g}"
        )
    else:
        reasons.append(
            f"no significant difference yet (always-valid p = {p:.3g})"
            if p is not None
            else "no significant difference yet"
        )
    out["verdict"], out["reasons"] = verdict, reasons
    return out


def sample_ratio(arms: list[ArmData], version: int, alpha: float) -> dict[str, Any]:
    chi2, p = stats.sample_ratio_mismatch([a.assigned for a in arms], [a.weight for a in arms])
    return {
        "version": version,
        "assigned": sum(a.assigned for a in arms),
        "unit": "users",
        "chi2": _r(chi2),
        "p_value": float(f"{p:.4g}"),
        "mismatch": p < alpha,
    }


def share(exp: Experiment, model: str) -> float:
    """An arm's share of the traffic, in percent."""
    total = sum(a.weight for a in exp.arms)
    return 100 * sum(a.weight for a in exp.arms if a.model == model) / total if total else 0.0


def next_stage(exp: Experiment, model: str) -> float | None:
    """The next stage above the arm's share (None: it already has all the traffic)."""
    now = share(exp, model)
    return next((s for s in exp.decision.stages if s > now + STAGE_SLACK), None)


def stage_weights(exp: Experiment, model: str, target: float) -> dict[str, float]:
    """Weights that give ``model`` ``target`` percent, the others the rest pro rata."""
    others = [a for a in exp.arms if a.model != model]
    rest = sum(a.weight for a in others)
    out = {model: target}
    for a in others:
        out[a.model] = round((100 - target) * a.weight / rest, 6) if rest else 0.0
    return out


def decide(
    exp: Experiment,
    arms: list[ArmData],
    comparisons: list[dict[str, Any]],
    srm: dict[str, Any],
) -> dict[str, Any]:
    """The action: ``{"action", "model", "reasons", "weights", "share"}``.

    ``weights`` are the arms' new weights (ramp, rollback) or None (promote: the winner
    takes all and becomes the control; keep collecting: nothing).
    """
    none = {"weights": None, "share": None}
    if srm["mismatch"]:
        return {
            "action": KEEP,
            "model": None,
            **none,
            "reasons": [
                f"sample ratio mismatch (p = {srm['p_value']:.3g}): users assigned do not fit "
                "the weights, so the results cannot be trusted; check the routing"
            ],
        }
    rollback = [c for c in comparisons if c["verdict"] == ROLLBACK]
    live = {a.model for a in arms if a.weight > 0}
    for c in rollback:
        if c["candidate"] in live:
            return {
                "action": ROLLBACK,
                "model": c["candidate"],
                "reasons": c["reasons"],
                "weights": {c["candidate"]: 0.0},
                "share": 0.0,
            }
    targets = {c["candidate"]: next_stage(exp, c["candidate"]) for c in comparisons}
    better = [
        c
        for c in comparisons
        if targets[c["candidate"]] is not None
        and (
            c["verdict"] == PROMOTE
            or (c["verdict"] == RAMP and (targets[c["candidate"]] or 100) < 100)
        )
    ]
    if better:
        best = max(better, key=lambda c: c["difference"])
        model = best["candidate"]
        target = targets[model]
        if target is not None and target < 100:
            return {
                "action": RAMP,
                "model": model,
                "share": target,
                "weights": stage_weights(exp, model, target),
                "reasons": [
                    f"to {target:g}% of traffic (stage "
                    f"{exp.decision.stages.index(target) + 1} of "
                    f"{len(exp.decision.stages)})",
                    *best["reasons"],
                ],
            }
        if target is not None:
            return {
                "action": PROMOTE,
                "model": model,
                "share": 100.0,
                "weights": None,
                "reasons": best["reasons"],
            }
    reasons = [f"{c['candidate']}: {'; '.join(c['reasons'])}" for c in comparisons]
    return {"action": KEEP, "model": None, **none, "reasons": reasons or ["no candidate arm"]}


def evaluate(
    exp: Experiment,
    version: int,
    arms: list[ArmData],
    previous_p: Mapping[str, float],
    ramp_p: Mapping[str, float] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """Comparisons, sample-ratio check and decision for one look at ``version``.

    ``previous_p``: each candidate's running minimum p over this version's looks;
    ``ramp_p``: over the looks at the ramp's earlier versions (display only).
    """
    by_model = {a.model: a for a in arms}
    control = by_model[exp.control_arm]
    ramp_p = ramp_p or {}
    comparisons = [
        compare(control, a, exp.decision, previous_p.get(a.model), ramp_p.get(a.model))
        for a in arms
        if a is not control and (a.weight > 0 or a.users.n > 0)
    ]
    srm = sample_ratio(arms, version, exp.decision.srm_alpha)
    return comparisons, srm, decide(exp, arms, comparisons, srm)
