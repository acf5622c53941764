"""Routing: what a request's ``model`` means, and which arm a user gets.

A ``model`` is either an experiment name (an arm is chosen by weight, sticky per user)
or a model name from ``models:`` (served directly). Assignment is deterministic:
``sha256(experiment, user key)`` → a bucket in [0, 10000) → the arm whose cumulative
weight range holds it. A user keeps their arm while the weights stay the same, and
when a canary grows only the users in the newly covered buckets move.
"""

from __future__ import annotations

import bisect
import hashlib
from dataclasses import dataclass

from .config import Experiment, ModelVersion, Settings, Upstream
from .errors import UnknownModel

BUCKETS = 10_000


def bucket(experiment: str, user_key: str) -> int:
    digest = hashlib.sha256(f"{experiment}\x00{user_key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


@dataclass(frozen=True, slots=True)
class Target:
    """One routable model version, with everything needed to call it."""

    name: str
    upstream_name: str
    upstream: Upstream
    upstream_model: str


class Assigner:
    """Weighted, sticky arm choice for one experiment."""

    def __init__(self, name: str, arms: list[tuple[str, float]]) -> None:
        self.name = name
        live = [(model, w) for model, w in arms if w > 0]
        total = sum(w for _, w in live)
        self._models = [m for m, _ in live]
        # Upper bucket bound (exclusive) of each arm; the last is always BUCKETS.
        self._bounds: list[int] = []
        acc = 0.0
        for _, w in live:
            acc += w
            self._bounds.append(round(acc / total * BUCKETS))
        self._bounds[-1] = BUCKETS

    def arm_for(self, user_key: str) -> str:
        return self._models[bisect.bisect_right(self._bounds, bucket(self.name, user_key))]


@dataclass(frozen=True, slots=True)
class Route:
    experiment: str | None
    primary: Target
    fallback: Target | None


class Router:
    def __init__(self, settings: Settings) -> None:
        self.targets = {
            name: _target(name, m, settings.upstreams[m.upstream])
            for name, m in settings.models.items()
        }
        self.experiments: dict[str, Experiment] = dict(settings.experiments)
        self._assigners = {
            name: Assigner(name, [(a.model, a.weight) for a in exp.arms])
            for name, exp in settings.experiments.items()
        }

    def resolve(self, model: str, user_key: str) -> Route:
        assigner = self._assigners.get(model)
        if assigner is not None:
            exp = self.experiments[model]
            primary = self.targets[assigner.arm_for(user_key)]
            fallback = self.targets[exp.fallback] if exp.fallback else None
            if fallback is primary:
                fallback = None
            return Route(model, primary, fallback)
        target = self.targets.get(model)
        if target is None:
            shown = model if len(model) <= 64 else model[:64] + "…"
            raise UnknownModel(
                f"The model '{shown}' does not exist: use one of the experiments or models "
                "listed by GET /v1/models.",
                param="model",
            )
        return Route(None, target, None)


def _target(name: str, m: ModelVersion, upstream: Upstream) -> Target:
    return Target(name=name, upstream_name=m.upstream, upstream=upstream, upstream_model=m.model)
