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

from gateway.core import access
from gateway.core.auth import Principal
from gateway.core.config import Experiment, ModelVersion, Price, Settings, Upstream
from gateway.core.errors import InvalidRequest, UnknownModel
from gateway.core.in_context import Shots

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
    adapter: bool = False  # a LoRA adapter: only replicas that list it may serve it
    price: Price | None = None
    shots: Shots | None = None  # in-context examples put in front of the conversation


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
    version: int  # of the experiment's live state (0 for a direct model request)
    primary: Target
    fallback: Target | None
    shadow: Target | None = None
    shadow_share: float = 0.0
    forced: bool = False


class Router:
    """An immutable routing table: replaced as a whole when the live state changes.

    ``models`` and ``experiments`` are the config's merged with the live state in Redis
    (``control.py``); ``versions`` are the experiments' live-state versions.
    """

    def __init__(
        self,
        upstreams: dict[str, Upstream],
        models: dict[str, ModelVersion],
        experiments: dict[str, Experiment],
        versions: dict[str, int] | None = None,
    ) -> None:
        self.models = models
        self.targets = {
            name: _target(name, m, upstreams[m.upstream])
            for name, m in models.items()
            if m.upstream in upstreams
        }
        self.experiments = experiments
        self.versions = versions or {}
        self._assigners = {
            name: Assigner(name, [(a.model, a.weight) for a in exp.arms if a.model in self.targets])
            for name, exp in experiments.items()
            if any(a.weight > 0 and a.model in self.targets for a in exp.arms)
        }

    @classmethod
    def from_settings(cls, settings: Settings) -> Router:
        return cls(settings.upstreams, dict(settings.models), dict(settings.experiments))

    def resolve(
        self,
        model: str,
        user_key: str,
        force_arm: str | None = None,
        caller: Principal | None = None,
    ) -> Route:
        """The route of a request for ``model``. With ``caller``, what that key may not
        call (another tenant's, or outside its allowed list) is answered as unknown, so
        that names do not leak."""
        assigner = self._assigners.get(model)
        if assigner is not None:
            exp = self.experiments[model]
            if caller is not None and not access.calls(caller, "experiment", model, exp.tenant):
                raise _unknown(model)
            if force_arm is not None:
                if force_arm not in {a.model for a in exp.arms} or force_arm not in self.targets:
                    raise InvalidRequest(
                        f"x-flywheel-arm: '{force_arm:.64}' is not an arm of experiment '{model}'.",
                        param="x-flywheel-arm",
                    )
                primary = self.targets[force_arm]
            else:
                primary = self.targets[assigner.arm_for(user_key)]
            fallback = self.targets.get(exp.fallback) if exp.fallback else None
            if fallback is primary:
                fallback = None
            shadow = self.targets.get(exp.shadow.model) if exp.shadow else None
            return Route(
                model,
                self.versions.get(model, 0),
                primary,
                fallback,
                shadow=shadow if shadow is not primary else None,
                shadow_share=exp.shadow.share if exp.shadow else 0.0,
                forced=force_arm is not None,
            )
        target = self.targets.get(model)
        if target is None or (
            caller is not None
            and not access.calls(caller, "model", model, self.models[model].tenant)
        ):
            raise _unknown(model)
        if force_arm is not None:
            raise InvalidRequest(
                "x-flywheel-arm applies only to experiments, not to a model name.",
                param="x-flywheel-arm",
            )
        return Route(None, 0, target, None)


def _unknown(model: str) -> UnknownModel:
    shown = model if len(model) <= 64 else model[:64] + "…"
    return UnknownModel(
        f"The model '{shown}' does not exist: use one of the experiments or models "
        "listed by GET /v1/models.",
        param="model",
    )


def _target(name: str, m: ModelVersion, upstream: Upstream) -> Target:
    return Target(
        name=name,
        upstream_name=m.upstream,
        upstream=upstream,
        upstream_model=m.model,
        adapter=m.adapter_path is not None,
        price=m.price,
        shots=None
        if m.in_context is None
        else Shots.of(m.in_context.pairs, m.in_context.k, m.in_context.select == "similar"),
    )
