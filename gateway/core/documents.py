"""The documents that cross modules and processes, as types (each made by one owner):

* an experiment's live state and its history (``gateway.control.experiments``; read by
  the report, the decider, the console, the admin API and ``retrain``);
* the A/B report and its per-arm parts (``gateway.control.report``; read by the decider,
  the console, ``gateway report`` and the API);
* runtime API keys, tenant policies and their audit (``gateway.control.apikeys``; read by
  the live state, the admin API, the console and ``gateway keys``);
* model versions as the registry lists, shows and stores them
  (``gateway.control.registry``; ``/v1/models``, ``/admin/models``, the console, ``retrain``);
* the review queue's items (queued by ``retrain build``, corrected through the console
  or ``retrain review``);
* a dataset version's manifest (``retrain build``'s ``manifest.json``; read by the next
  build, ``retrain run`` and the console);
* the evaluation gate's result (``retrain``'s gate; kept in its job, shown by the console
  and ``retrain``).

The interaction and rating records, jobs and runs are in :mod:`gateway.core.records`.

They are ``TypedDict``s: the JSON the API returns and Redis holds is the same dict, so
nothing is converted on the way; a type checker sees every key a reader uses.
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict


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


class KeyFields(TypedDict):
    """What an admin sets on a runtime key (a ``KeySpec``, as stored)."""

    name: str
    tenant: str | None
    role: str
    rpm: int | None
    tpm: int | None
    budget: dict[str, Any] | None  # a :class:`gateway.core.config.Budget`, dumped
    experiments: list[str] | None
    models: list[str] | None
    expires_at: float | None


class ApiKey(KeyFields):
    """A runtime key as shown (``GET /admin/keys``): never its secret nor its digest."""

    id: str
    object: Literal["api_key"]
    hint: str  # "fwk-…" and the secret's last four characters
    created_at: float
    created_by: str
    revoked_at: float | None
    revoked_by: NotRequired[str]
    rotated_at: NotRequired[float]


class StoredKey(ApiKey):
    """A runtime key as Redis holds it (``fw:auth:keys``): with its secret's SHA-256."""

    digest: str


class IssuedKey(ApiKey):
    """A key just made or rotated: its secret, returned this once."""

    key: str


class TenantPolicy(TypedDict):
    """A tenant's policy (``fw:auth:tenants``; ``GET /admin/tenants/{tenant}``)."""

    object: Literal["tenant"]
    tenant: str
    budget: dict[str, Any] | None
    updated_at: NotRequired[float]
    updated_by: NotRequired[str]


class Removed(TypedDict):
    """What forgetting a user removed, by kind (an audit entry's ``after``)."""

    removed: dict[str, int]


class AuditEntry(TypedDict):
    """One change of a key or a tenant, or a forgotten user (``GET /admin/audit``): before
    and after as shown, never a secret nor a digest."""

    at: float
    by: str
    by_tenant: str | None
    action: str
    target: str
    tenant: str | None
    before: ApiKey | TenantPolicy | None
    after: ApiKey | TenantPolicy | Removed | None


class ReviewItem(TypedDict):
    """A failure without a correction, waiting for a person (``fw:review:{experiment}``,
    by response id; :mod:`gateway.core.review`)."""

    response_id: str
    experiment: str | None
    arm: str | None
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None
    answer: str
    comment: str | None
    tags: list[str]
    group: str  # who asked (a user, else the conversation): examples of one group split together
    correction: str | None
    dismissed: NotRequired[bool]  # "not a failure": kept so a build does not queue it again
    reviewed_by: NotRequired[str]


class Evaluation(TypedDict):
    """The evaluation gate's verdict on a candidate against a control (``retrain run``,
    ``retrain eval``, ``retrain icl``; a job's ``evaluation``)."""

    control: str
    candidate: str
    cases: int  # test-split examples (0: none)
    golden_cases: int
    rule: str  # the rule in words, as the CLI and the console show it
    config: dict[str, Any]  # retrain.eval as used
    tokenizer: str  # what counted the answer budgets
    tokens_exact: bool
    missing: int  # examples short of eval.min_examples
    test: dict[str, Any] | None  # the test split's summary (n, metric, gain, language...)
    golden: dict[str, Any] | None
    judge: dict[str, Any] | None
    rows: list[dict[str, Any]]  # one per example: prompt, expected, both answers, gain
    outcome: Literal["passed", "rejected", "collect-more"]
    passed: bool
    reason: str


class VersionFields(TypedDict):
    """A model version's settings (a ``gateway.core.config.ModelVersion``, dumped)."""

    upstream: str
    model: str  # the id its upstream serves
    adapter_path: str | None
    price: dict[str, Any] | None
    tenant: str | None
    in_context: dict[str, Any] | None


class ModelEntry(VersionFields):
    """A model version as listed (``GET /admin/models``; ``POST`` answers one)."""

    id: str
    object: Literal["model"]
    source: Literal["config", "registered"]
    parent: NotRequired[str | None]  # an adapter's base model, as its vLLM replicas say


class ModelDetail(ModelEntry):
    """One model version with who registered it, where it came from and who uses it
    (``GET /admin/models/{name}``)."""

    registered_by: str | None
    registered_at: float | None
    price_from: str | None  # the model whose price it inherited
    lineage: dict[str, Any] | None  # job, dataset, experiment, teacher... (retrain's)
    experiments: list[str]  # the experiments that route to it (those the caller sees)


class Registration(TypedDict):
    """A registered model version as Redis holds it (``fw:models``, by name)."""

    name: str
    spec: VersionFields
    registered_by: str
    registered_at: float
    lineage: dict[str, Any] | None
    price_from: str | None


class CostEstimate(TypedDict):
    """What training a dataset version would cost with one price (``retrain.prices``)."""

    provider: str
    model: str
    epochs: int
    tokens: int  # trained tokens times epochs
    tokenizer: str  # what counted them
    cost: float


class Manifest(TypedDict):
    """A dataset version's ``manifest.json``: what it holds, where each example came
    from, what was left out and why, and the rules it was built by."""

    id: str
    experiment: str
    parent: str | None  # the version it was built on
    created: str  # ISO 8601, UTC
    counts: dict[str, int]  # examples per file (train, validation, test, preference)
    new_examples: int  # not in the parent
    by_source: dict[str, Any]  # examples per source (correction, served, teacher...)
    dropped: dict[str, int]  # left out, by reason
    neutral_ratings: int
    review_queue: dict[str, int]  # added, corrections_used
    tokens: dict[str, Any]  # per file
    tokenizer: str
    tokens_exact: bool
    cost_estimates: list[CostEstimate]
    feedback_events: list[str]  # the rating events it read (a rebuild reads none twice)
    events_read: NotRequired[int]
    workload: NotRequired[str | None]
    distill: NotRequired[dict[str, Any] | None]  # a distillation build's teacher, judge...
    forgotten: NotRequired[dict[str, Any]]  # a version rewritten without forgotten users
    rules: dict[str, Any]  # the retrain settings it was built by
