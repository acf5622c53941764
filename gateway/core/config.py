"""Configuration: one YAML file, ``${ENV}`` substitution, validated at start-up.

The file is read once (path from ``--config`` or ``FLYWHEEL_CONFIG``); string values
may use ``${NAME}`` (required) or ``${NAME:-default}``. Environment variables named
``FLYWHEEL_<FIELD>`` (nested with ``__``) override top-level keys, e.g.
``FLYWHEEL_REDIS_URL``. Every mistake is reported as one line that names its key
path, e.g. ``experiments.support-bot.arms[1].model: unknown model 'v2'``.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from gateway.core.in_context import MAX_EXAMPLES, MAX_TEXT, read_examples

# One pattern for every name that can become a Redis key (``:``-separated), a metric
# label or a path (experiments, models, adapters, tenants, users, datasets): letters,
# digits, ``_``, ``-`` and single dots, starting with a letter or digit; no ``:``, no
# ``/``, no ``..``, no control characters; at most NAME_MAX characters.
NAME_PATTERN = r"^[A-Za-z0-9](?:\.?[A-Za-z0-9_-])*\.?$"
NAME_MAX = 128


def valid_name(name: str) -> bool:
    return (
        isinstance(name, str)
        and len(name) <= NAME_MAX
        and re.fullmatch(NAME_PATTERN, name) is not None
    )


Name = Annotated[str, Field(pattern=NAME_PATTERN, max_length=NAME_MAX)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Listen(_Strict):
    host: str = Field("127.0.0.1", description="address `gateway serve` listens on (--host)")
    port: int = Field(8000, ge=1, le=65535, description="port `gateway serve` listens on (--port)")


class Budget(_Strict):
    limit: float = Field(
        gt=0, description="spend per period, in the prices' currency; over it: a 429"
    )
    period: Literal["daily", "monthly"] | Annotated[int, Field(ge=1)] = Field(
        "monthly", description="daily or monthly (UTC calendar), or a number of seconds"
    )
    soft: float = Field(
        0.8, ge=0, le=1, description="share of the limit at which the budget alert fires"
    )


class ApiKey(_Strict):
    key: SecretStr = Field(description="the secret sent as 'Authorization: Bearer <key>'")
    name: str = Field(description="who the key belongs to: logged, audited, the default rater")
    tenant: str | None = Field(None, description="whose data it sees; default: the key's name")
    rpm: int | None = Field(None, ge=1, description="requests per minute (all replicas)")
    tpm: int | None = Field(None, ge=1, description="tokens per minute (all replicas)")
    budget: Budget | None = Field(None, description="the key's spend limit per period")


class Auth(_Strict):
    api_keys: list[ApiKey] = Field(
        [], description="client keys; none at all (and no admin key): the gateway is open (dev)"
    )
    admin_keys: list[ApiKey] = Field(
        [],
        description="bootstrap admin keys (every tenant): the admin API, forced arms "
        "(x-flywheel-arm); more keys are made at runtime with `gateway keys create`",
    )
    fail_open: bool = Field(
        True,
        description="while Redis is unreachable, rate limits and budgets admit requests "
        "(serving matters more than metering); false: such requests are a 503",
    )
    spend_sync_s: float = Field(
        0.1,
        gt=0,
        le=10,
        description="how often a replica adds the day's spend (per key, tenant and model) "
        "to Redis and reads the budgets' totals for the metrics (budgets themselves are "
        "checked and reserved in Redis by each budgeted request)",
    )
    reviewer_keys: list[ApiKey] = Field(
        [],
        description="console keys for the review queue and reading interactions (a tenant: "
        "only that tenant's); no admin API, no chat",
    )


class Console(_Strict):
    """The web console under ``/ui/`` (``docs/console.md``)."""

    enabled: bool = Field(True, description="serve the console under /ui/")
    session_hours: float = Field(
        12.0, gt=0, le=24 * 30, description="how long a login lasts (signed cookie)"
    )
    page_size: int = Field(50, ge=5, le=500, description="interactions per page of the list")


Url = Annotated[str, Field(pattern=r"^https?://[^\s]+$")]


class BreakerConfig(_Strict):
    failures: int = Field(5, ge=1, description="consecutive failures that open a replica's circuit")
    open_s: float = Field(10.0, gt=0, description="how long it stays open before one probe")


class Upstream(_Strict):
    kind: Literal["vllm", "openai"] = Field(description="what speaks at the address")
    base_url: Url | None = Field(None, description="one replica, ending in /v1")
    base_urls: list[Url] = Field(default_factory=list, description="several replicas")
    dns_replicas: bool = Field(
        False, description="every address the host name resolves to is a replica (headless)"
    )
    api_key: SecretStr = Field(SecretStr(""), description="sent upstream as a bearer key")
    timeout_s: float = Field(120.0, gt=0, description="total time for one upstream call")
    connect_timeout_s: float = Field(5.0, gt=0, description="time to open a connection")
    first_byte_timeout_s: float = Field(
        30.0, gt=0, description="streams: time until the first data chunk (fallback is possible)"
    )
    idle_timeout_s: float = Field(
        30.0, gt=0, description="streams: longest silence between two chunks"
    )
    breaker: BreakerConfig = BreakerConfig()
    max_lora_rank: int | None = Field(
        None, ge=1, description="vllm: the server's --max-lora-rank (retrain checks its rank)"
    )

    @model_validator(mode="after")
    def _one_address(self) -> Upstream:
        if (self.base_url is None) == (not self.base_urls):
            raise ValueError("give exactly one of base_url and base_urls")
        return self

    @property
    def urls(self) -> list[str]:
        return [self.base_url] if self.base_url else list(self.base_urls)


class Price(_Strict):
    prompt_per_1m: float = Field(0.0, ge=0, description="currency units per 1M prompt tokens")
    completion_per_1m: float = Field(0.0, ge=0, description="per 1M completion tokens")
    gpu_hour: float | None = Field(
        None,
        ge=0,
        description="a local model: what an hour of its GPU costs; with tokens_per_s, the "
        "report adds the GPU time of each completion token to its cost (budgets count the "
        "per-1M prices only)",
    )
    tokens_per_s: float | None = Field(
        None,
        gt=0,
        description="a local model: completion tokens per second its GPU serves, as "
        "measured (bench/), for gpu_hour",
    )

    @model_validator(mode="after")
    def _gpu_pair(self) -> Price:
        if (self.gpu_hour is None) != (self.tokens_per_s is None):
            raise ValueError("gpu_hour and tokens_per_s go together")
        return self

    @property
    def completion_cost_per_1m(self) -> float:
        """Per 1M completion tokens, with the GPU time they take (``gpu_hour``)."""
        gpu = 0.0
        if self.gpu_hour is not None and self.tokens_per_s:
            gpu = self.gpu_hour / 3600 / self.tokens_per_s * 1e6
        return self.completion_per_1m + gpu


class InContextExample(_Strict):
    user: str = Field(min_length=1, max_length=MAX_TEXT, description="the example's question")
    assistant: str = Field(
        min_length=1, max_length=MAX_TEXT, description="the answer it shows the model"
    )


class InContext(_Strict):
    """Examples the gateway puts in front of the conversation (``gateway/core/in_context.py``)."""

    examples: list[InContextExample] = Field(
        min_length=1,
        max_length=MAX_EXAMPLES,
        description="a list of {user, assistant} pairs, or the path of a JSONL file in OpenAI "
        "chat format (a distillation dataset's train.jsonl), read when the model is "
        "registered or the config loaded (its first 500 examples of at most 4000 characters; "
        "a relative path is from the "
        "gateway's working directory)",
    )
    k: int = Field(4, ge=1, le=32, description="how many examples go in front of a request")
    select: Literal["similar", "first"] = Field(
        "similar",
        description="similar: the k most like the request's last user message (character "
        "3-grams); first: the first k",
    )

    @field_validator("examples", mode="before")
    @classmethod
    def _read(cls, v: Any) -> Any:
        return read_examples(v) if isinstance(v, str) else v

    @property
    def pairs(self) -> list[tuple[str, str]]:
        return [(e.user, e.assistant) for e in self.examples]


class ModelVersion(_Strict):
    upstream: str = Field(description="the upstream that serves it (a key of upstreams)")
    model: str = Field(min_length=1, description="the model id the upstream serves")
    adapter_path: str | None = Field(
        None, description="a LoRA adapter dir that vLLM loads at runtime on every replica"
    )
    price: Price | None = Field(None, description="spend, budgets and the report's cost")
    tenant: str | None = Field(None, description="who may call it; unset: every tenant (shared)")
    in_context: InContext | None = Field(
        None, description="examples put in front of every conversation (an in-context candidate)"
    )


class Arm(_Strict):
    model: str = Field(description="the model this arm routes to")
    # Relative; bounded so that a sum of weights is always a finite number.
    weight: float = Field(
        1.0, ge=0, le=1_000_000, description="relative share of users (95 and 5: 5% canary)"
    )


class Decision(_Strict):
    """The rules the decider applies to an experiment's report (``gateway/control/decider.py``).

    The unit is the user, and only data collected under the experiment's current ramp
    counts (the versions the decider's own ramp steps made since the last other change),
    each version a stratum of its own. The score test is the mixture SPRT, valid however
    often it is looked at.
    """

    min_ratings: int = Field(
        50, ge=2, description="rated users each compared arm needs over the current ramp"
    )
    alpha: float = Field(
        0.05,
        gt=0,
        lt=1,
        description="level of the always-valid (mixture SPRT) score test for a promote or a "
        "rollback",
    )
    ramp_alpha: float = Field(
        0.5,
        gt=0,
        lt=1,
        description="level of the same test for a move to a stage below 100% (never below "
        "alpha): an equal candidate leaves its first stage with at most this probability",
    )
    mixture_sd: float = Field(
        0.05,
        gt=0,
        le=1,
        description="sd of the normal mixing prior over the difference in mean score: the "
        "size of effect the test is most sensitive to (scores are in [0, 1])",
    )
    stages: list[float] = Field(
        default_factory=lambda: [5.0, 20.0, 50.0, 100.0],
        min_length=1,
        description="traffic shares (%) a winner is moved through, one ramp: each stage "
        "passes the guardrails on its own requests, the score test adds the stages up; the "
        "last must be 100 (the promote)",
    )
    srm_alpha: float = Field(0.001, gt=0, lt=1, description="p below this: sample ratio mismatch")
    guardrail_alpha: float = Field(
        0.001, gt=0, lt=0.5, description="one-sided level of each guardrail's confidence bound"
    )
    max_error_rate_increase: float = Field(
        0.02, ge=0, le=1, description="candidate error rate may exceed control's by this much"
    )
    max_p95_ratio: float = Field(1.5, ge=1, description="candidate p95 latency / control's")
    max_cost_ratio: float | None = Field(
        None, ge=1, description="candidate cost per request / control's (none: no cost guardrail)"
    )
    min_requests: int = Field(50, ge=1, description="requests each arm needs for the guardrails")

    @model_validator(mode="after")
    def _stages_rise_to_100(self) -> Decision:
        if any(b <= a for a, b in zip(self.stages, self.stages[1:], strict=False)):
            raise ValueError("stages must rise")
        if self.stages[-1] != 100 or self.stages[0] <= 0:
            raise ValueError("stages must be shares in (0, 100] ending with 100")
        return self


class Shadow(_Strict):
    model: str = Field(description="the candidate that answers copies of requests")
    share: float = Field(0.1, ge=0, le=1, description="share of requests also sent to it")


class Experiment(_Strict):
    arms: list[Arm] = Field(min_length=1, description="the models users are split between")
    fallback: str | None = Field(
        None, description="answers when the assigned arm fails before the first byte"
    )
    control: str | None = Field(None, description="the arm candidates are compared with")
    shadow: Shadow | None = None
    auto_promote: bool = Field(
        False, description="the decider applies the report's decision every control.decide_s"
    )
    decision: Decision = Decision()
    tenant: str | None = Field(None, description="who may call it; unset: every tenant (shared)")

    @property
    def control_arm(self) -> str:
        return self.control or self.arms[0].model

    def models(self) -> set[str]:
        """Every model this experiment refers to."""
        out = {a.model for a in self.arms}
        out |= {m for m in (self.fallback, self.control) if m}
        if self.shadow:
            out.add(self.shadow.model)
        return out


class InteractionLogConfig(_Strict):
    queue_size: int = Field(10_000, ge=1, description="records buffered while Redis is slow")
    batch_size: int = Field(
        2048,
        ge=1,
        description="most records per Redis round trip; the writer takes what is queued, so "
        "batches are small unless it fell behind (then big ones let it catch up)",
    )
    retention_days: float = Field(
        30.0,
        gt=0,
        description="how long a late rating may still join its interaction (through the "
        "archive once the record left Redis), and how long the per-version request "
        "statistics are kept",
    )
    hot_s: float = Field(
        86_400.0,
        gt=0,
        description="how long a whole interaction record stays in Redis (compactly "
        "encoded); then only the archive has it. One day: ratings from an app come within "
        "minutes and people reviewing logs mostly rate by the next day, so nearly every "
        "rating joins in Redis, while Redis memory is bounded by one day of traffic; "
        "later ratings still join through the archive",
    )
    redact: bool = Field(
        False,
        description="store messages and answers with e-mail addresses and phone numbers"
        " replaced by [email] and [phone]",
    )


class ArchiveConfig(_Strict):
    enabled: bool = Field(
        True,
        description="run the archiver in the gateway (one replica and worker at a time, "
        "elected by a Redis lock); off: run 'retrain archive' instead, e.g. as a CronJob",
    )
    url: str | None = Field(
        None,
        description="where the two Delta tables (interactions, feedback) go: a directory "
        "or s3://bucket/prefix; unset: data_dir/archive",
    )
    storage_options: dict[str, Any] = Field(
        default_factory=dict,
        description="options for the object store, e.g. for s3:// endpoint_url (MinIO, "
        "Ceph, R2…), key and secret, or client_kwargs: {region_name: …} (s3fs's names, "
        "translated for delta-rs), or delta-rs's own upper-case keys (AWS_ENDPOINT_URL, "
        "AWS_S3_LOCKING_PROVIDER…) as they are; empty: the provider's own defaults "
        "(AWS_* variables, an instance or pod role)",
    )
    every_s: float = Field(
        10.0, gt=0, description="how often the gateway's archiver looks at the streams"
    )
    max_wait_s: float = Field(
        600.0,
        ge=0,
        description="the gateway's archiver writes when 'batch' entries wait or the oldest "
        "has waited this long (few, large files); 'retrain archive' always drains. Below "
        "half of interaction_log.hot_s and feedback.hot_s (checked)",
    )
    batch: int = Field(
        50_000, ge=1, description="most records in one commit (one read from the stream)"
    )
    target_file_mb: float = Field(
        64.0, gt=0, description="compaction writes files of about this size (MiB)"
    )
    compact_files: int = Field(
        16,
        ge=1,
        description="a partition holding more files smaller than half of target_file_mb "
        "is compacted by the archiver's pass",
    )
    vacuum_retention_hours: int = Field(
        1,
        ge=0,
        description="files a compaction replaced stay this long for readers of an older "
        "snapshot, then vacuum deletes them (a forget deletes what it replaced at once)",
    )
    log_retention_hours: int = Field(
        24,
        ge=0,
        description="the table log's commits stay this long (older versions can be read "
        "until then), then the next checkpoint (every 100 commits) deletes them: the log "
        "on disk is bounded by this window, not by the table's age",
    )
    lock_ttl_s: float = Field(
        60.0,
        gt=0,
        description="the archiver's lock lapses this long after its holder stops renewing "
        "it; another replica then takes over",
    )


class FeedbackConfig(_Strict):
    failure_threshold: float = Field(
        0.5, ge=0, le=1, description="a rating whose score is below this is a failure"
    )
    max_comment_chars: int = Field(4000, ge=0, description="longer comments are a 400")
    max_correction_chars: int = Field(32_000, ge=0, description="longer corrections are a 400")
    max_tags: int = Field(16, ge=0, description="more tags on one rating are a 400")
    max_tag_chars: int = Field(64, ge=1, description="longer tags are a 400")
    join_wait_s: float = Field(
        10.0, ge=0, description="how long a rating may wait for its interaction record"
    )
    retention_days: float = Field(365.0, gt=0, description="ratings and feedback events")
    hot_s: float = Field(
        86_400.0,
        gt=0,
        description="how long a rating stays in Redis (its record under fw:fb:{response_id}, "
        "its feedback-stream entry once archived); then only the archive has it. A rating "
        "that replaces one older than this is corrected through the archive. Redis keeps "
        "the per-arm and per-user aggregates for the retention. Keep it at least "
        "interaction_log.hot_s: the console reads the ratings of interactions still in "
        "Redis from Redis",
    )
    consumer_groups: list[str] = Field(
        default_factory=list,
        description="extra consumer groups (besides retrain.<experiment>) on the feedback "
        "stream; trimmed past once archived and older than hot_s, their lag is a metric",
    )


class ControlConfig(_Strict):
    refresh_s: float = Field(
        0.25, gt=0, description="how often a replica checks Redis for experiment changes"
    )
    replica_refresh_s: float = Field(
        5.0, gt=0, description="how often upstream replicas are listed and adapters loaded"
    )
    decide_s: float = Field(60.0, gt=0, description="how often auto_promote experiments decide")
    judge: str | None = Field(None, description="model that scores shadow answers (optional)")


class RetrainSection(BaseModel):
    """The ``retrain`` section as the gateway reads it: where dataset versions live (the
    console shows them). The rest of the section belongs to the retrain package, which
    owns its schema (``retrain/config.py``) and validates all of it when a ``retrain``
    command loads the file (``retrain check-config``)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    dataset_dir: Path = Field(
        Path("./data/datasets"), description="dataset versions, one directory per experiment"
    )


class RedisPool(_Strict):
    max_connections: int = Field(
        100, ge=1, description="connections per gateway process; more requests wait for one"
    )
    wait_s: float = Field(
        5.0, gt=0, description="how long a request waits for a free connection before 503"
    )


class Shutdown(_Strict):
    drain_s: float = Field(
        0.0,
        ge=0,
        description="after SIGTERM: /readyz says 'draining' and requests are still served "
        "this long, so load balancers stop sending before the listener closes",
    )
    grace_s: int = Field(
        30, ge=1, description="then: how long in-flight requests (streams) may take to finish"
    )


class Limits(_Strict):
    max_body_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, description="larger request bodies are a 413"
    )
    max_header_bytes: int = Field(
        32 * 1024, ge=1024, description="all request header names and values together"
    )
    max_headers: int = Field(100, ge=10, description="request header fields")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="FLYWHEEL_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    listen: Listen = Listen()
    redis_url: str | None = Field(
        None, description="redis://, rediss:// or unix:// URL; unset: an embedded Redis"
    )
    redis_cluster: bool = Field(
        False,
        description="redis_url names one node of a Redis Cluster: the cluster client, the "
        "shared state hash-tagged into one slot, interaction records spread over the masters",
    )
    redis_pool: RedisPool = RedisPool()
    data_dir: Path = Field(
        Path("./data"), description="embedded Redis, the id secret, the tiny model, logs"
    )
    id_secret: SecretStr | None = Field(
        None, description="signs response ids; replicas share one (unset: data_dir/id_secret)"
    )
    auth: Auth = Auth()
    console: Console = Console()
    upstreams: dict[Name, Upstream] = Field(
        {}, description="model servers by name (vLLM or OpenAI)"
    )
    models: dict[Name, ModelVersion] = Field(
        default_factory=dict, description="every routable model version (more at runtime)"
    )
    experiments: dict[Name, Experiment] = Field(
        {}, description="what apps put in 'model'; the seed of the live state in Redis"
    )
    interaction_log: InteractionLogConfig = InteractionLogConfig()
    archive: ArchiveConfig = ArchiveConfig()
    feedback: FeedbackConfig = FeedbackConfig()
    control: ControlConfig = ControlConfig()
    retrain: RetrainSection = RetrainSection()
    limits: Limits = Limits()
    shutdown: Shutdown = Shutdown()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment overrides the file: that is how a deployment injects secrets.
        return env_settings, init_settings

    @field_validator("id_secret")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().encode()) < 16:
            raise ValueError("needs at least 16 bytes (e.g. `openssl rand -hex 32`)")
        return value


S = TypeVar("S", bound=Settings)


class ConfigError(Exception):
    """A configuration mistake; ``str()`` is one line per problem, each with its path."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


# The quick-start stack (``gateway up`` with no config file): vLLM on :8001 serving the
# tiny model as "base", one experiment, and a retrain profile that makes the tiny model
# learn from a tutorial's dozen corrections (measured: 300 steps at 5e-3 answer all the
# trained corrections exactly; the global defaults, right for real models, train it 9
# steps and it learns nothing). Real models get a config file: see examples/.
DEFAULT_CONFIG: dict[str, Any] = {
    "upstreams": {
        "local": {"kind": "vllm", "base_url": "http://127.0.0.1:8001/v1", "max_lora_rank": 16}
    },
    "models": {"base": {"upstream": "local", "model": "base"}},
    "experiments": {"default": {"arms": [{"model": "base", "weight": 1}], "fallback": "base"}},
    "retrain": {
        "min_examples": 10,
        # A tutorial's sixteen ratings hold out two test examples, the fewest an interval
        # can be drawn from; real configs keep 30.
        "eval": {"min_examples": 2},
        "local": {"max_steps": 300, "learning_rate": 0.005, "warmup_ratio": 0.1, "patience": 10},
    },
}

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}")


def format_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def substitute_env(value: Any, env: dict[str, str], path: tuple[int | str, ...] = ()) -> Any:
    """Replace ``${NAME}`` / ``${NAME:-default}`` in every string of a parsed document."""
    if isinstance(value, dict):
        return {k: substitute_env(v, env, (*path, k)) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute_env(v, env, (*path, i)) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def repl(m: re.Match[str]) -> str:
        name, has_default, default = m.group(1), m.group(2), m.group(3)
        if name in env:
            return env[name]
        if has_default is not None:
            return default or ""
        raise ConfigError([f"{format_path(path)}: environment variable {name} is not set"])

    return _ENV_REF.sub(repl, value)


def _describe(err: Any) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown key"
    if err["type"] == "missing":
        return "required key is missing"
    return str(err["msg"])


def _check_references(s: Settings) -> list[str]:
    problems = []
    for name, m in s.models.items():
        up = s.upstreams.get(m.upstream)
        if up is None:
            problems.append(f"models.{name}.upstream: unknown upstream '{m.upstream}'")
        elif m.adapter_path and up.kind != "vllm":
            problems.append(
                f"models.{name}.adapter_path: adapters need a vllm upstream, "
                f"'{m.upstream}' is {up.kind}"
            )
    for name, exp in s.experiments.items():
        if name in s.models:
            problems.append(f"experiments.{name}: name is already used by a model")
        problems += [f"experiments.{name}.{p}" for p in experiment_problems(exp, set(s.models))]
    if s.control.judge is not None and s.control.judge not in s.models:
        problems.append(f"control.judge: unknown model '{s.control.judge}'")
    if not s.models:
        problems.append("models: at least one model is needed")
    if s.redis_cluster and not (s.redis_url or "").startswith(("redis://", "rediss://")):
        problems.append(
            "redis_cluster: needs redis_url, a redis:// or rediss:// URL of one cluster node "
            "(the embedded Redis is a single server)"
        )
    if s.archive.enabled:
        # An entry leaves Redis at hot_s whether archived or not, and the lag alert fires
        # at half of it: the archiver's wait must end well before either.
        for section, hot_s in (
            ("interaction_log", s.interaction_log.hot_s),
            ("feedback", s.feedback.hot_s),
        ):
            if s.archive.max_wait_s >= hot_s / 2:
                problems.append(
                    f"archive.max_wait_s: {s.archive.max_wait_s:g} s must be below half of "
                    f"{section}.hot_s ({hot_s:g} s): entries would leave Redis, or raise the "
                    "lag alert, before the archiver writes them"
                )
                break
    return problems


def experiment_problems(exp: Experiment, models: set[str]) -> list[str]:
    """What is wrong with an experiment, given the known model names (paths relative to it)."""
    problems = []
    seen: set[str] = set()
    for i, arm in enumerate(exp.arms):
        if arm.model not in models:
            problems.append(f"arms[{i}].model: unknown model '{arm.model:.128}'")
        if arm.model in seen:
            problems.append(f"arms[{i}].model: '{arm.model:.128}' is already an arm")
        seen.add(arm.model)
    if not any(arm.weight > 0 for arm in exp.arms):
        problems.append("arms: at least one arm needs a weight > 0")
    if exp.fallback is not None and exp.fallback not in models:
        problems.append(f"fallback: unknown model '{exp.fallback:.128}'")
    if exp.control is not None and exp.control not in seen:
        problems.append(f"control: '{exp.control}' is not one of the arms")
    if exp.shadow is not None and exp.shadow.model not in models:
        problems.append(f"shadow.model: unknown model '{exp.shadow.model:.128}'")
    return problems


def build_settings(data: dict[str, Any], schema: type[S] = Settings) -> S:  # type: ignore[assignment]
    """Validate an already-substituted document; raise ConfigError naming every key path.

    ``schema`` is :class:`Settings` or a subclass that owns more of the file (the retrain
    package's ``RetrainSettings`` validates the ``retrain`` section too)."""
    try:
        settings = schema(**data)
    except ValidationError as exc:
        raise ConfigError(
            [f"{format_path(tuple(e['loc']))}: {_describe(e)}" for e in exc.errors()]
        ) from None
    problems = _check_references(settings)
    if problems:
        raise ConfigError(problems)
    return settings


def load_or_exit(path: str | None, schema: type[S], command: str) -> S:
    """The config file for a command line (``gateway``, ``retrain``): on a mistake, one
    line per problem on stderr and exit status 2."""
    try:
        return load_settings(path, schema=schema)
    except ConfigError as exc:
        for line in exc.problems:
            print(f"{command}: config error: {line}", file=sys.stderr)
        raise SystemExit(2) from None


def load_settings(
    path: str | Path | None = None,
    env: dict[str, str] | None = None,
    schema: type[S] = Settings,  # type: ignore[assignment]
) -> S:
    """Load the config file (or the built-in local default when there is none)."""
    env = dict(os.environ) if env is None else env
    path = path or env.get("FLYWHEEL_CONFIG") or None
    if path is None:
        return build_settings(DEFAULT_CONFIG, schema)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read config file: {exc.strerror}"]) from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{where}: invalid YAML: {problem}"]) from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError([f"{path}: the top level must be a mapping, not {type(doc).__name__}"])
    return build_settings(substitute_env(doc, env), schema)


MASKED = "**masked-secret**"  # long enough for every secret's own validation


def _masked(value: Any) -> Any:
    """SecretStr values dump as '**********': one placeholder that check-config accepts."""
    if isinstance(value, dict):
        return {k: _masked(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(v) for v in value]
    return MASKED if value == "**********" else value


def show_config(settings: Settings, source: str, command: str = "gateway") -> str:
    """The effective config as YAML: every default filled in, secrets masked.

    The gateway fills in the defaults of its own sections; ``retrain config show`` those
    of the ``retrain`` section too (the retrain package owns its schema)."""
    doc = _masked(settings.model_dump(mode="json"))
    return (
        f"# Effective Flywheel config ({source}); every default is filled in and secrets\n"
        f"# are masked. `{command} check-config --config FILE` accepts this file as it is.\n"
        + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
    )
