"""The staged ramp, simulated through the decider's own rules (``gateway/control/decider.py``).

``python -m bench.ramp [--runs N] [--seed S] [--step K] [--max-users M]`` prints, for
each scenario, how the decider takes a candidate from a 5% canary through the stages
(5 → 20 → 50 → 100%) when its users rate it as well as the control's (A/A), or better
(0.60 → 0.66 thumbs-up), with the base rate steady or drifting during the ramp.

Each run: rated users arrive ``step`` at a time (one rating each), each assigned to an
arm by the current weights; after each batch the decider looks (``decider.evaluate``,
the function the gateway's report calls, with the same per-version data it reads from
Redis); a ramp starts a new experiment version with the new weights, a promote (100%)
or a rollback ends the run, ``max_users`` rated users end it too. Three ways to count
the evidence:

* ``current``  — only the current version's users (how the decider worked before ramps
  kept their evidence; with ``ramp_alpha`` = ``alpha`` it is that decider exactly);
* ``pooled``   — the ramp's users as one sample per arm, across versions (what one would
  get by not keeping data per version; biased when the base rate moves during the ramp,
  since the candidate's share grows as it moves);
* ``stratified`` — the decider's way now: one stratum per version of the ramp, combined
  (:func:`gateway.core.stats.stratified`).

Also importable: ``tests/test_ramp_simulation.py`` checks the targets with it.
"""

from __future__ import annotations

import argparse
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gateway.control import decider
from gateway.core import stats
from gateway.core.config import Experiment

CONTROL, CANDIDATE = "control", "candidate"
MODES = ("current", "pooled", "stratified")


@dataclass
class Outcome:
    """One simulated ramp: the last share the candidate had, how it ended, and after how
    many rated users it reached 100% (None: it did not)."""

    share: float
    ended: str  # promote, rollback, or keep collecting
    users_to_100: int | None
    stages: list[int] = field(default_factory=list)  # rated users when each stage began


def experiment(share: float, rules: dict[str, Any]) -> Experiment:
    return Experiment.model_validate(
        {
            "arms": [
                {"model": CONTROL, "weight": 100 - share},
                {"model": CANDIDATE, "weight": share},
            ],
            "control": CONTROL,
            "decision": rules,
        }
    )


def _sample(n: int, ups: int) -> stats.Sample:
    return stats.Sample(n, float(ups), float(ups))  # thumbs: each user's mean is 0 or 1


def _arm(
    model: str,
    weight: float,
    n: int,
    ups: int,
    earlier: list[stats.Sample],
    assigned: int | None = None,
) -> Any:
    """The arm as the report gives it to the decider; ``assigned`` (and the requests the
    guardrails count): under the current version, ``n`` unless given."""
    more: dict[str, Any] = {"earlier": tuple(earlier)} if earlier else {}
    now = n if assigned is None else assigned
    return decider.ArmData(
        model, weight, _sample(n, ups), assigned=now, requests=now, ratings=n, **more
    )


def simulate_one(
    rng: np.random.Generator,
    base: float,
    lift: float,
    *,
    mode: str = "stratified",
    rules: dict[str, Any] | None = None,
    first_share: float = 5.0,
    step: int = 100,
    max_users: int = 20_000,
    drift: float = 0.0,
) -> Outcome:
    """One ramp from a ``first_share`` canary. The control's users rate up with
    probability ``base + drift * t`` (t: the share of ``max_users`` seen so far), the
    candidate's ``lift`` more."""
    rules = rules or {}
    exp = experiment(first_share, rules)
    strata: list[tuple[int, int, int, int]] = []  # closed strata: (n_c, up_c, n_k, up_k)
    n_c = up_c = n_k = up_k = 0
    previous: dict[str, float] = {}
    ramp_p: dict[str, float] = {}
    seen = 0
    starts = [0]
    while seen < max_users:
        share = decider.share(exp, CANDIDATE) / 100
        p = base + drift * (seen + step / 2) / max_users
        k = int(rng.binomial(step, share))
        n_k, up_k = n_k + k, up_k + int(rng.binomial(k, min(max(p + lift, 0.0), 1.0)))
        n_c, up_c = n_c + step - k, up_c + int(rng.binomial(step - k, min(max(p, 0.0), 1.0)))
        seen += step
        weights = {a.model: a.weight for a in exp.arms}
        if mode == "stratified":
            ctrl_earlier = [_sample(s[0], s[1]) for s in strata]
            cand_earlier = [_sample(s[2], s[3]) for s in strata]
            arms = [
                _arm(CONTROL, weights[CONTROL], n_c, up_c, ctrl_earlier),
                _arm(CANDIDATE, weights[CANDIDATE], n_k, up_k, cand_earlier),
            ]
        elif mode == "pooled":
            arms = [
                _pooled(CONTROL, weights[CONTROL], strata, n_c, up_c, 0),
                _pooled(CANDIDATE, weights[CANDIDATE], strata, n_k, up_k, 2),
            ]
        else:
            arms = [
                _arm(CONTROL, weights[CONTROL], n_c, up_c, []),
                _arm(CANDIDATE, weights[CANDIDATE], n_k, up_k, []),
            ]
        comparisons, _, decision = decider.evaluate(
            exp, len(starts), arms, previous, *([ramp_p] if mode == "stratified" else [])
        )
        previous.update(
            {c["candidate"]: c["p_value"] for c in comparisons if c["ready"] and c["p_value"]}
        )
        action = decision["action"]
        if action == decider.RAMP:
            if mode != "current":
                strata.append((n_c, up_c, n_k, up_k))
            for arm, p_value in previous.items():
                ramp_p[arm] = min(p_value, ramp_p.get(arm, 1.0))
            n_c = up_c = n_k = up_k = 0
            previous = {}
            exp = experiment(decision["share"], rules)
            starts.append(seen)
        elif action == decider.PROMOTE:
            return Outcome(100.0, action, seen, starts)
        elif action == decider.ROLLBACK:
            return Outcome(decider.share(exp, CANDIDATE), action, None, starts)
    return Outcome(decider.share(exp, CANDIDATE), decider.KEEP, None, starts)


def _pooled(
    model: str, weight: float, strata: list[tuple[int, int, int, int]], n: int, ups: int, at: int
) -> Any:
    """The arm's users over the whole ramp as one sample (no strata)."""
    total = n + sum(s[at] for s in strata)
    return _arm(model, weight, total, ups + sum(s[at + 1] for s in strata), [], assigned=n)


@dataclass
class Summary:
    runs: int
    reached: dict[float, int]  # runs in which the candidate reached at least this share
    promoted: int
    rolled_back: int
    users_to_100: list[int | None]
    users_to_20: list[int | None]  # rated users when the candidate left its first stage

    @property
    def wrong(self) -> float:
        """Share of runs that ended in a promote or a rollback (wrong where the arms are
        equal)."""
        return (self.promoted + self.rolled_back) / self.runs

    def quantile(self, q: float, stage: float = 100.0) -> float:
        """Rated users to 100% (or 20%) at quantile ``q`` of all runs (inf: not reached)."""
        users = self.users_to_100 if stage == 100.0 else self.users_to_20
        xs = sorted(math.inf if x is None else x for x in users)
        return xs[min(len(xs) - 1, math.ceil(q * len(xs)) - 1)]

    def within(self, users: int) -> float:
        return sum(x is not None and x <= users for x in self.users_to_100) / self.runs


def summarise(outcomes: list[Outcome], stages: list[float]) -> Summary:
    reached: Counter[float] = Counter()
    for o in outcomes:
        top = o.share if o.ended != decider.ROLLBACK else stages[len(o.stages) - 1]
        for s in stages:
            if s <= top + decider.STAGE_SLACK:
                reached[s] += 1
    return Summary(
        runs=len(outcomes),
        reached={s: reached[s] for s in stages},
        promoted=sum(o.ended == decider.PROMOTE for o in outcomes),
        rolled_back=sum(o.ended == decider.ROLLBACK for o in outcomes),
        users_to_100=[o.users_to_100 for o in outcomes],
        users_to_20=[o.stages[1] if len(o.stages) > 1 else o.users_to_100 for o in outcomes],
    )


STAGES = [5.0, 20.0, 50.0, 100.0]
# the decider's defaults before ramps kept their evidence (with mode "current")
BEFORE = {"ramp_alpha": 0.05, "min_ratings": 100}


def simulate(base: float, lift: float, *, runs: int, seed: int, **kw: Any) -> Summary:
    rng = np.random.default_rng(seed)
    outcomes = [simulate_one(rng, base, lift, **kw) for _ in range(runs)]
    return summarise(outcomes, (kw.get("rules") or {}).get("stages", STAGES))


SCENARIOS: dict[str, tuple[float, float, float]] = {
    # name: (base rate, lift, drift of the base rate over max_users)
    "A/A": (0.60, 0.0, 0.0),
    "lift 0.60 → 0.66": (0.60, 0.06, 0.0),
    "harm 0.60 → 0.54": (0.60, -0.06, 0.0),
    "A/A, base drifts 0.70 → 0.40": (0.70, 0.0, -0.30),
    "lift, base drifts 0.70 → 0.40": (0.70, 0.06, -0.30),
}


def _fmt_users(x: float) -> str:
    return "–" if math.isinf(x) else f"{x:,.0f}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.ramp", description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=400)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--step", type=int, default=100, help="rated users between looks")
    ap.add_argument("--max-users", type=int, default=20_000)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument(
        "--rule",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a decision setting for every mode (e.g. min_ratings=50); repeatable",
    )
    ap.add_argument(
        "--before",
        action="store_true",
        help="also the decider as it was: only the current version, ramp_alpha = alpha, "
        "min_ratings 100",
    )
    args = ap.parse_args(argv)
    rules = {k: float(v) for k, v in (r.split("=", 1) for r in args.rule)}
    for k in ("min_ratings", "min_requests"):
        if k in rules:
            rules[k] = int(rules[k])
    variants: list[tuple[str, str, dict[str, Any]]] = [
        (m, m, rules) for m in args.modes.split(",") if m
    ]
    if args.before:
        variants.insert(0, ("before", "current", {**rules, **BEFORE}))
    print(
        f"{args.runs} runs per row, seed {args.seed}, a look every {args.step} rated users, "
        f"at most {args.max_users:,} rated users; rules {rules or 'default'}"
    )
    header = (
        f"{'scenario':32} {'evidence':11} {'≥20%':>6} {'≥50%':>6} {'promote':>8} "
        f"{'rollback':>8} {'median to 20%':>14} {'median to 100%':>15} {'p90 to 100%':>12} "
        f"{'≤20k':>6} {'s':>5}"
    )
    print(header)
    for name, (base, lift, drift) in SCENARIOS.items():
        for label, mode, variant_rules in variants:
            t0 = time.perf_counter()
            s = simulate(
                base,
                lift,
                runs=args.runs,
                seed=args.seed,
                mode=mode,
                rules=variant_rules,
                step=args.step,
                max_users=args.max_users,
                drift=drift,
            )
            r = s.runs
            print(
                f"{name:32} {label:11} {s.reached[20.0] / r:6.1%} {s.reached[50.0] / r:6.1%} "
                f"{s.promoted / r:8.1%} {s.rolled_back / r:8.1%} "
                f"{_fmt_users(s.quantile(0.5, 20.0)):>14} "
                f"{_fmt_users(s.quantile(0.5)):>15} {_fmt_users(s.quantile(0.9)):>12} "
                f"{s.within(args.max_users):6.1%} {time.perf_counter() - t0:5.1f}"
            )


if __name__ == "__main__":
    main()
