"""The documents that cross modules and processes, as types: an experiment's live state
and its history (stored in Redis by ``gateway.control.experiments``, read by the report,
the decider, the console, the admin API and ``retrain``), and the A/B report with its
per-arm parts (made by ``gateway.control.report``, read by the decider, the console,
``gateway report`` and the API). The interaction and rating records are in
:mod:`gateway.core.records`.

They are ``TypedDict``s: the JSON the API returns and Redis holds is the same dict, so
nothing is converted on the way; a type checker sees every key a reader uses.
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict


class Pin(TypedDict):
    """A person's change that paused the decider (until ``resume``)."""

    by: str
    at: float
    version: int
    action: str


class ExperimentState(TypedDict):
    """An experiment's live state (``fw:experiments`` in Redis; ``GET
    /admin/experiments/{name}``)."""

    object: Literal["experiment"]
    name: str
    version: int
    spec: dict[str, Any]  # a :class:`gateway.core.config.Experiment`, dumped
    previous: dict[str, Any] | None
    updated_at: float
    updated_by: str
    pin: Pin | None
    ramp_from: int  # the ramp's first version: the report keeps the evidence since


class HistoryEntry(TypedDict):
    """One change of an experiment (``GET /admin/experiments/{name}/history``)."""

    version: int
    action: str
    by: str
    at: float
    before: dict[str, Any] | None
    after: dict[str, Any]


class Quantiles(TypedDict):
    p50: float | None
    p95: float | None


class Tokens(TypedDict):
    prompt: int
    completion: int


class ArmRatings(TypedDict):
    users: int
    count: int
    mean_score: float | None
    ci95: list[float | None]
    failure_rate: float | None
    corrections: int


class AllVersions(TypedDict):
    ratings: int
    mean_score: float | None


class ArmReport(TypedDict, total=False):
    """One arm of the report (``language`` is added where the report reads languages)."""

    model: str
    weight: float
    intended_share: float | None
    requests: int
    assigned: int
    errors: int
    failed_over: int
    error_rate: float | None
    latency_ms: Quantiles
    ttft_ms: Quantiles
    tokens: Tokens
    cost_per_1k_requests: float | None
    ratings: ArmRatings
    all_versions: AllVersions
    language: dict[str, Any]
    traffic_share: float | None  # the console's plots: the arm's share of the requests


class Savings(TypedDict):
    """What promoting a candidate would save against the control."""

    candidate: str
    control: str
    per_1k_requests: float | None
    requests: int
    over_requests: float | None
    text: str


class Report(TypedDict):
    """The A/B report of one experiment (``GET /admin/experiments/{name}/report``)."""

    object: Literal["experiment.report"]
    experiment: str
    version: int
    generated_at: int
    control: str
    pin: Pin | None
    ramp_from: int
    paused: bool
    stages: list[float]
    arms: list[ArmReport]
    savings: list[Savings]
    srm: dict[str, Any]
    comparisons: list[dict[str, Any]]
    decision: dict[str, Any]
