"""The A/B report of one experiment: the data of its current version, and the decision.

Per arm, under the experiment's current version: requests, users assigned against the
intended share, errors, latency and time-to-first-token percentiles, tokens and cost
per 1k requests, and ratings (rated users, ratings, the mean of the per-user mean
scores with its 95% interval). Failure rate and corrections are over all versions
(``all_versions``). Each candidate arm is compared with the control and the decision
follows, by the rules of :mod:`gateway.control.decider` (mixture SPRT on per-user means,
guardrails, staged ramp); the report also says whether a person's change paused
automatic decisions (``paused``: by whom, at which version), in which case the decision
is what the evidence says, and nothing applies it until an operator resumes.

The data comes from counters kept in Redis as requests and ratings are stored
(``keys.py``), so a report costs a few HGETALLs however much traffic there was.

One number is not a counter: per arm, the share of answers written in the language of
the question (``language``, :func:`languages`), over a sample — each arm's most recent
:data:`LANGUAGE_SAMPLE` answered interactions of the current version still in Redis
(the hot window, ``interaction_log.hot_s``), found among the newest
:data:`LANGUAGE_SCAN` entries of the interaction stream. The languages are guessed
(``gateway.core.text.language``) when a report is asked for, in a process of their own
(:class:`LanguageGuesser`): the language models take about a second to load and hold Python's
GIL while they work, so the gateway process never loads them — chat completions are
not held up by a report, and the decider's own looks never guess a language.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import redis.asyncio as aioredis

from gateway.control import decider
from gateway.control.decider import KEEP, PROMOTE, RAMP, ROLLBACK
from gateway.core import keys, stats, text
from gateway.core.config import Experiment, ModelVersion, Price
from gateway.core.documents import ArmReport, ExperimentState, Pin, Report, Savings
from gateway.core.records import last_user_text
from gateway.core.store import set_parent_death_signal

__all__ = ["KEEP", "PROMOTE", "RAMP", "ROLLBACK", "build", "collect", "languages", "report"]

LANGUAGE_SAMPLE = 200  # answers per arm the language share is computed over, at most
LANGUAGE_SCAN = 5000  # newest interaction stream entries read to find them, at most
_SCAN_BATCH = 500


def _numbers(raw: dict[Any, Any]) -> dict[str, float]:
    return {keys.text(k): float(v) for k, v in raw.items() if not keys.text(k).startswith("u:")}


def _histogram(fields: dict[str, float], prefix: str) -> dict[int, float]:
    return {int(k[len(prefix) :]): v for k, v in fields.items() if k.startswith(prefix)}


def _round(x: float | None, digits: int = 4) -> float | None:
    return None if x is None or math.isnan(x) or math.isinf(x) else round(x, digits)


_USER_FIELDS = ("users", "mean_sum", "mean_sq", "ratings")
MAX_RAMP_VERSIONS = 32  # earlier versions of a ramp read, at most (a ramp has one per stage)


def ramp_versions(state: ExperimentState) -> list[int]:
    """The earlier versions of the experiment's current ramp, oldest first: those since
    ``ramp_from`` (the version the last change by anyone but the decider's ramp steps
    made; a state without it is a ramp of its own)."""
    version = int(state["version"])
    start = int(state.get("ramp_from") or version)
    return list(range(max(start, version - MAX_RAMP_VERSIONS), version))


def _user_numbers(raw: list[Any]) -> dict[str, float]:
    return {k: float(v) for k, v in zip(_USER_FIELDS, raw, strict=True) if v is not None}


async def collect(
    redis: aioredis.Redis,
    ks: keys.Keyspace,
    name: str,
    exp: Experiment,
    version: int,
    earlier: Sequence[int] = (),
) -> dict[str, dict[str, Any]]:
    """The raw counters of every arm under ``version``: ``{arm: {"req", "users", "agg",
    "assigned", "earlier"}}`` (``agg``: the ratings of all versions; ``earlier``: the
    per-user scores under each of the ``earlier`` versions, the strata of the ramp)."""
    arms = [a.model for a in exp.arms]
    pipe = redis.pipeline(transaction=False)
    for arm in arms:
        pipe.hgetall(ks.version_requests(name, version, arm))
        pipe.hmget(ks.user_scores(name, version, arm), *_USER_FIELDS)
        pipe.hgetall(ks.aggregate(name, arm))
        pipe.scard(ks.version_users(name, version, arm))
        for v in earlier:
            pipe.hmget(ks.user_scores(name, v, arm), *_USER_FIELDS)
    replies = await pipe.execute()
    out = {}
    width = 4 + len(earlier)
    for i, arm in enumerate(arms):
        req, users, agg, assigned, *before = replies[width * i : width * (i + 1)]
        out[arm] = {
            "req": _numbers(req),
            "users": _user_numbers(users),
            "agg": _numbers(agg),
            "assigned": float(assigned),
            "earlier": [_user_numbers(u) for u in before],
        }
    return out


def cost_per_request(req: dict[str, float], price: Price | None) -> float | None:
    requests = req.get("requests", 0)
    if price is None or not requests:
        return None
    spent = (
        req.get("prompt_tokens", 0) * price.prompt_per_1m
        + req.get("completion_tokens", 0) * price.completion_cost_per_1m
    ) / 1e6
    return spent / requests


def savings(arms: list[ArmReport], control: str) -> list[Savings]:
    """What promoting each candidate would save against the control, per 1k requests and
    over this version's traffic (every arm's requests), where both have a cost."""
    ctl = next((a for a in arms if a["model"] == control), None)
    if ctl is None or ctl["cost_per_1k_requests"] is None:
        return []
    traffic = sum(a["requests"] for a in arms)
    out: list[Savings] = []
    control_cost = ctl["cost_per_1k_requests"]
    for a in arms:
        cost = a["cost_per_1k_requests"]
        if a["model"] == control or cost is None:
            continue
        per_1k = control_cost - cost
        total = per_1k * traffic / 1000
        verb = "save" if per_1k >= 0 else "cost"
        out.append(
            {
                "candidate": a["model"],
                "control": control,
                "per_1k_requests": _round(per_1k, 6),
                "requests": traffic,
                "over_requests": _round(total, 6),
                "text": f"promoting {a['model']} instead of {control} would {verb} "
                f"{abs(per_1k):.4g} per 1k requests: {abs(total):.4g} over the {traffic} "
                "requests of this version",
            }
        )
    return out


def _sample(users: dict[str, float]) -> stats.Sample:
    return stats.Sample(
        int(users.get("users", 0)), users.get("mean_sum", 0.0), users.get("mean_sq", 0.0)
    )


def arm_data(
    model: str, weight: float, raw: dict[str, Any], price: Price | None
) -> decider.ArmData:
    req, users = raw["req"], raw["users"]
    return decider.ArmData(
        model=model,
        weight=weight,
        users=_sample(users),
        earlier=tuple(_sample(u) for u in raw.get("earlier", ())),
        ratings=int(users.get("ratings", 0)),
        assigned=int(raw["assigned"]),
        requests=int(req.get("requests", 0)),
        errors=int(req.get("errors", 0)),
        failed_over=int(req.get("failed_over", 0)),
        latency=_histogram(req, "lat:"),
        cost_per_request=cost_per_request(req, price),
    )


def arm_summary(arm: decider.ArmData, total_weight: float, raw: dict[str, Any]) -> ArmReport:
    req, agg = raw["req"], raw["agg"]
    lo, hi = arm.users.interval()
    ratings_all = int(agg.get("count", 0))
    ttft = _histogram(req, "ttft:")
    cost = arm.cost_per_request
    return {
        "model": arm.model,
        "weight": arm.weight,
        "intended_share": _round(arm.weight / total_weight if total_weight else 0.0),
        "requests": arm.requests,
        "assigned": arm.assigned,
        "errors": arm.errors,
        "failed_over": arm.failed_over,
        "error_rate": _round((arm.errors + arm.failed_over) / arm.attempts)
        if arm.attempts
        else None,
        "latency_ms": {
            "p50": stats.quantile(arm.latency, 0.5),
            "p95": stats.quantile(arm.latency, 0.95),
        },
        "ttft_ms": {"p50": stats.quantile(ttft, 0.5), "p95": stats.quantile(ttft, 0.95)},
        "tokens": {
            "prompt": int(req.get("prompt_tokens", 0)),
            "completion": int(req.get("completion_tokens", 0)),
        },
        "cost_per_1k_requests": _round(None if cost is None else cost * 1000, 6),
        "ratings": {
            "users": arm.users.n,
            "count": arm.ratings,
            "mean_score": _round(arm.users.mean),
            "ci95": [_round(lo), _round(hi)],
            "failure_rate": _round(agg.get("failures", 0) / ratings_all) if ratings_all else None,
            "corrections": int(agg.get("corrections", 0)),
        },
        "all_versions": {
            "ratings": ratings_all,
            "mean_score": _round(agg.get("score_sum", 0) / ratings_all) if ratings_all else None,
        },
    }


def build(
    name: str,
    state: ExperimentState,
    raw: dict[str, dict[str, Any]],
    models: dict[str, ModelVersion],
    previous_p: dict[str, float] | None = None,
    ramp_p: dict[str, float] | None = None,
) -> Report:
    """The report from the counters :func:`collect` read (pure: tested on synthetic data).

    ``state`` is the experiment's live state (``spec``, ``version``, ``pin``,
    ``ramp_from``); ``previous_p`` the running minimum of each candidate's always-valid
    p-value over the looks at this version, ``ramp_p`` over the ramp's earlier versions.
    """
    exp = Experiment.model_validate(state["spec"])
    version = int(state["version"])
    total_weight = sum(a.weight for a in exp.arms)
    arms = [
        arm_data(
            a.model, a.weight, raw[a.model], models[a.model].price if a.model in models else None
        )
        for a in exp.arms
    ]
    comparisons, srm, decision = decider.evaluate(exp, version, arms, previous_p or {}, ramp_p)
    samples = {a.model: a.users for a in arms}
    for c in comparisons:  # shown, not used: the decision rests on the sequential test
        a, b = samples[c["control"]], samples[c["candidate"]]
        c["prob_better"] = _round(stats.prob_better(a, b)) if a.n >= 2 and b.n >= 2 else None
    pin = state.get("pin")
    if pin:
        decision["reasons"].insert(0, paused_text(pin))
    return {
        "object": "experiment.report",
        "experiment": name,
        "version": version,
        "generated_at": int(time.time()),
        "control": exp.control_arm,
        "pin": pin,
        "ramp_from": int(state.get("ramp_from") or version),
        "paused": pin is not None,
        "stages": exp.decision.stages,
        "arms": (summaries := [arm_summary(a, total_weight, raw[a.model]) for a in arms]),
        "savings": savings(summaries, exp.control_arm),
        "srm": srm,
        "comparisons": comparisons,
        "decision": decision,
    }


def paused_text(pin: Pin) -> str:
    """What the report, the console and ``gateway report`` say of a paused experiment."""
    return (
        f"paused by {pin['by']} at version {pin['version']} ({pin['action']}): no "
        "automatic action until an operator resumes"
    )


async def report(
    redis: aioredis.Redis,
    ks: keys.Keyspace,
    name: str,
    state: ExperimentState,
    models: dict[str, ModelVersion],
) -> Report:
    exp = Experiment.model_validate(state["spec"])
    version = int(state["version"])
    earlier = ramp_versions(state)
    raw = await collect(redis, ks, name, exp, version, earlier)
    pipe = redis.pipeline(transaction=False)
    for v in [*earlier, version]:
        pipe.hgetall(ks.sequential(name, v))
    *before, stored = await pipe.execute()
    previous = {keys.text(k): float(v) for k, v in stored.items()}
    ramp_p: dict[str, float] = {}
    for looks in before:
        for k, v in looks.items():
            arm = keys.text(k)
            ramp_p[arm] = min(float(v), ramp_p.get(arm, 1.0))
    return build(name, state, raw, models, previous, ramp_p)


def language_share(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """How many of the (question, answer) ``pairs`` are answered in the question's
    language: ``sample`` pairs, ``known`` where both languages can be told (only those
    count), ``same`` of those in one language, ``share`` = same / known (None: none
    known)."""
    told = [text.same_language(q, a) for q, a in pairs]
    known = sum(t is not None for t in told)
    same = sum(t is True for t in told)
    return {
        "sample": len(pairs),
        "known": known,
        "same": same,
        "share": _round(same / known) if known else None,
    }


async def languages(
    redis: aioredis.Redis,
    ks: keys.Keyspace,
    guesser: LanguageGuesser,
    name: str,
    arms: list[str],
    version: int,
) -> dict[str, dict[str, Any]]:
    """Per arm, :func:`language_share` of its most recent answered interactions under
    ``version`` (see the module docstring for the sample), with ``since``: the time of
    the oldest interaction in the sample (None: no sample)."""
    from gateway.serving.interaction_log import load

    found: dict[str, list[tuple[str, str, int]]] = {arm: [] for arm in arms}
    hi, scanned = "+", 0
    while scanned < LANGUAGE_SCAN and any(len(v) < LANGUAGE_SAMPLE for v in found.values()):
        entries: Any = await redis.xrevrange(ks.interaction_stream, hi, "-", count=_SCAN_BATCH)
        if not entries:
            break
        scanned += len(entries)
        hi = f"({keys.text(entries[-1][0])}"
        ids = []
        for _, fields in entries:
            fd = {keys.text(k): keys.text(v) for k, v in fields.items()}
            got = found.get(fd.get("arm") or "")
            if fd.get("experiment") == name and got is not None and len(got) < LANGUAGE_SAMPLE:
                ids.append(fd["id"])  # (an arm whose sample is full reads no more records)
        for rec in await load(redis, ids):
            if rec is None or rec.get("experiment_version") != version:
                continue
            if rec.get("status") != "ok" or rec.get("shadow_of"):
                continue
            got = found.get(rec["arm"])
            if got is not None and len(got) < LANGUAGE_SAMPLE:
                answer = rec.get("answer") or ""
                got.append(
                    (last_user_text(rec.get("messages")), answer, int(rec.get("created") or 0))
                )
        if len(entries) < _SCAN_BATCH:
            break

    pairs = {arm: [(q, a) for q, a, _ in got] for arm, got in found.items()}
    counted = await guesser.shares(pairs)
    for arm, got in found.items():
        counted[arm]["since"] = min((t for _, _, t in got), default=None)
    return counted


def _shares(pairs: dict[str, list[tuple[str, str]]]) -> dict[str, dict[str, Any]]:
    return {arm: language_share(p) for arm, p in pairs.items()}


class LanguageGuesser:
    """One worker process that guesses languages, started at the first report (spawned:
    a fork of a process with threads and an event loop is unsafe), kept for the next,
    and stopped with the gateway (:meth:`close`, a step of the lifespan's shutdown); a
    gateway killed outright takes it along (a parent-death signal)."""

    def __init__(self) -> None:
        self._pool: ProcessPoolExecutor | None = None

    async def shares(self, pairs: dict[str, list[tuple[str, str]]]) -> dict[str, dict[str, Any]]:
        """:func:`language_share` of each arm's pairs, computed in the worker."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._started(), _shares, pairs)
        except BrokenProcessPool:  # the worker died (killed, out of memory): a new one
            self.close()
            return await loop.run_in_executor(self._started(), _shares, pairs)

    def _started(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=set_parent_death_signal,  # a gateway killed takes it along
            )
        return self._pool

    def close(self) -> None:
        """Stop the worker (a guess in progress is abandoned)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
