"""Every Prometheus metric the gateway exports, defined in one place.

Names follow Prometheus conventions: base units (``_seconds``), counters exposed with
``_total`` (prometheus-client appends it), and labels from bounded sets (experiment,
arm, upstream, status class, reason, rating) — never a user or a response id.

Three kinds of value:

* **Per-process** counters, histograms, summaries and gauges, updated as requests are
  served. Each app gets its own registry, so tests and several apps in one process never
  share them. Under ``gateway serve --workers N`` they live in prometheus-client's
  multiprocess files (``PROMETHEUS_MULTIPROC_DIR``, wiped by :func:`prepare_multiprocess_dir`
  before the workers start) and ``/metrics`` sums them over every worker, whichever one
  answers the scrape; gauges say how in ``multiprocess_mode``.
* **Live state**, read by the worker that answers the scrape (:class:`ScrapeState`):
  experiment weights and control arms (the same on every worker), and circuit-breaker
  states per upstream (that worker's).
* **Retrain** (a batch job, not a server): what ``retrain run`` records in Redis
  (``fw:retrain:runs``, the job registry and the run locks), read at scrape time by
  :func:`read_retrain`, so no Pushgateway is needed.
* **The archive's lag**: the age of the oldest entry of each stream that the archiver's
  consumer group has not acknowledged, read from Redis at scrape time
  (:func:`read_archive_lag`): it rises when no archiver runs at all, whichever process
  was meant to run it, and every worker answers the same.
* **Consumer groups' lag**: the age of the oldest feedback-stream entry each other group
  (``retrain.<experiment>``, ``feedback.consumer_groups``) has not acknowledged, also read
  at scrape time (:func:`read_group_lag`). The stream is trimmed past a lagging group
  once archived; the metric and its alert say which group nobody reads.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Summary,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from redis.exceptions import RedisError, ResponseError

from gateway.core import keys
from gateway.core.records import JobStatus, RunOutcome

log = logging.getLogger(__name__)

# LLM latencies span from a cached 10 ms answer to a two-minute generation.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# The bounded label values of the retrain gauges.
RETRAIN_OUTCOMES = tuple(RunOutcome)
JOB_STATUSES = tuple(JobStatus)


def prepare_multiprocess_dir(path: str | Path) -> Path:
    """Create ``path`` empty (files of an earlier run would be counted again)."""
    p = Path(path)
    if p.exists():
        shutil.rmtree(p)
    p.mkdir(parents=True)
    return p


@dataclass
class ScrapeState:
    """What ``/metrics`` reads at scrape time, beside the per-process metrics."""

    weights: dict[tuple[str, str], float] = field(default_factory=dict)  # (exp, arm) → share
    controls: dict[str, str] = field(default_factory=dict)  # experiment → its control arm
    replicas: dict[tuple[str, str], int] = field(default_factory=dict)  # (upstream, state) → n
    retrain: dict[str, dict[str, Any]] = field(default_factory=dict)  # exp → run summary
    archive_lag: dict[str, float] = field(default_factory=dict)  # stream → seconds behind
    hot_s: float | None = None  # interaction_log.hot_s: records leave Redis this old
    group_lag: dict[tuple[str, str], float] = field(default_factory=dict)  # (stream, group) → s
    feedback_hot_s: float | None = None  # feedback.hot_s: ratings leave Redis this old


class _ScrapeCollector:
    """Renders a :class:`ScrapeState` (a custom collector: never in multiprocess files)."""

    def __init__(self) -> None:
        self.state = ScrapeState()

    def describe(self) -> Iterable[Metric]:
        return []  # names are not registered: the state changes at every scrape

    def collect(self) -> Iterator[Metric]:
        s = self.state
        weight = GaugeMetricFamily(
            "flywheel_experiment_weight",
            "Intended share of each arm in [0, 1], from the live experiment state",
            labels=["experiment", "arm"],
        )
        for (exp, arm), share in sorted(s.weights.items()):
            weight.add_metric([exp, arm], share)
        yield weight
        control = GaugeMetricFamily(
            "flywheel_experiment_control",
            "1 for the experiment's control arm (candidates are compared with it), 0 for others",
            labels=["experiment", "arm"],
        )
        for exp, arm in sorted(s.weights):
            control.add_metric([exp, arm], 1.0 if s.controls.get(exp) == arm else 0.0)
        yield control
        replicas = GaugeMetricFamily(
            "flywheel_upstream_replicas",
            "Replicas of each upstream by circuit-breaker state (closed, open, half_open), "
            "as seen by the worker that answered the scrape",
            labels=["upstream", "state"],
        )
        for (upstream, state), n in sorted(s.replicas.items()):
            replicas.add_metric([upstream, state], n)
        yield replicas
        yield from _retrain_families(s.retrain)
        lag = GaugeMetricFamily(
            "flywheel_archive_lag_seconds",
            "Age of the oldest entry of each stream (interactions, feedback) not yet "
            "archived (acknowledged by the archiver's consumer group); 0 when none waits",
            labels=["stream"],
        )
        for stream, seconds in sorted(s.archive_lag.items()):
            lag.add_metric([stream], seconds)
        yield lag
        hot = GaugeMetricFamily(
            "flywheel_archive_hot_window_seconds",
            "interaction_log.hot_s: an interaction leaves Redis this old, archived or not",
        )
        if s.hot_s is not None:
            hot.add_metric([], s.hot_s)
        yield hot
        group_lag = GaugeMetricFamily(
            "flywheel_stream_group_lag_seconds",
            "Age of the oldest entry of a stream that a consumer group (other than the "
            "archiver's) has not acknowledged, trimmed entries included; 0 when none waits",
            labels=["stream", "group"],
        )
        for (stream, group), seconds in sorted(s.group_lag.items()):
            group_lag.add_metric([stream, group], seconds)
        yield group_lag
        fb_hot = GaugeMetricFamily(
            "flywheel_feedback_hot_window_seconds",
            "feedback.hot_s: a rating leaves Redis this old (once archived)",
        )
        if s.feedback_hot_s is not None:
            fb_hot.add_metric([], s.feedback_hot_s)
        yield fb_hot


def _retrain_families(runs: dict[str, dict[str, Any]]) -> Iterator[Metric]:
    last = GaugeMetricFamily(
        "flywheel_retrain_last_run_timestamp_seconds",
        "When the last retrain run of the experiment finished (Unix time)",
        labels=["experiment"],
    )
    success = GaugeMetricFamily(
        "flywheel_retrain_last_success_timestamp_seconds",
        "When a retrain run of the experiment last finished without error (Unix time)",
        labels=["experiment"],
    )
    outcome = GaugeMetricFamily(
        "flywheel_retrain_last_run_outcome",
        "1 for the outcome of the experiment's last retrain run, 0 for the others",
        labels=["experiment", "outcome"],
    )
    running = GaugeMetricFamily(
        "flywheel_retrain_running",
        "1 while a retrain run of the experiment holds its lock",
        labels=["experiment"],
    )
    examples = GaugeMetricFamily(
        "flywheel_retrain_dataset_examples",
        "Examples per split of the dataset version the last retrain run trained on",
        labels=["experiment", "split"],
    )
    job = GaugeMetricFamily(
        "flywheel_retrain_job_status",
        "1 for the current status of the experiment's latest fine-tuning job, 0 for the others",
        labels=["experiment", "status"],
    )
    for exp, run in sorted(runs.items()):
        if run.get("finished") is not None:
            last.add_metric([exp], float(run["finished"]))
            for name in RETRAIN_OUTCOMES:
                outcome.add_metric([exp, name], 1.0 if run.get("outcome") == name else 0.0)
        if run.get("last_success") is not None:
            success.add_metric([exp], float(run["last_success"]))
        running.add_metric([exp], 1.0 if run.get("running") else 0.0)
        for split, n in sorted((run.get("examples") or {}).items()):
            examples.add_metric([exp, str(split)], float(n))
        if run.get("job_status") is not None:
            for status in JOB_STATUSES:
                job.add_metric([exp, status], 1.0 if run["job_status"] == status else 0.0)
    yield from (last, success, outcome, running, examples, job)


async def read_retrain(
    redis: aioredis.Redis, ks: keys.Keyspace, timeout_s: float = 2.0
) -> dict[str, dict[str, Any]]:
    """Each experiment's last ``retrain run`` (``fw:retrain:runs``), whether one is running
    now (its lock) and its latest job's status; empty when Redis does not answer."""
    try:
        return await asyncio.wait_for(_read_retrain(redis, ks), timeout_s)
    except (RedisError, OSError, TimeoutError, ValueError) as exc:
        log.debug("retrain metrics unavailable: %s", exc)
        return {}


async def _read_retrain(redis: aioredis.Redis, ks: keys.Keyspace) -> dict[str, dict[str, Any]]:
    raw = await redis.hgetall(ks.retrain_runs)
    runs = {keys.text(k): orjson.loads(v) for k, v in raw.items()}
    if not runs:
        return {}
    names = sorted(runs)
    pipe = redis.pipeline(transaction=False)
    for name in names:
        pipe.exists(ks.run_lock(name))
        pipe.get(ks.job(str(runs[name].get("job") or "-")))
    replies = await pipe.execute()
    for i, name in enumerate(names):
        runs[name]["running"] = bool(replies[2 * i])
        job = keys.decode(replies[2 * i + 1])
        runs[name]["job_status"] = job.get("status") if job else None
    return runs


ARCHIVED_STREAMS = ("interactions", "feedback")  # the archive's kinds, as its files name them


async def read_archive_lag(
    redis: aioredis.Redis, ks: keys.Keyspace, timeout_s: float = 2.0
) -> dict[str, float]:
    """Seconds behind of the archive, per stream (``interactions``, ``feedback``): the age
    of the oldest entry the ``archive`` consumer group has not acknowledged (pending or
    not yet delivered), 0 when none waits; empty when Redis does not answer. Three
    commands per stream at most (XINFO GROUPS, XPENDING or XRANGE … COUNT 1)."""
    try:
        return await asyncio.wait_for(_read_archive_lag(redis, ks, time.time()), timeout_s)
    except (RedisError, OSError, TimeoutError, ValueError) as exc:
        log.debug("archive lag unavailable: %s", exc)
        return {}


async def _read_archive_lag(
    redis: aioredis.Redis, ks: keys.Keyspace, now: float
) -> dict[str, float]:
    streams = (ks.interaction_stream, ks.feedback_stream)
    out = {}
    for kind, stream in zip(ARCHIVED_STREAMS, streams, strict=True):
        oldest_ms = await _oldest_unarchived_ms(redis, stream)
        out[kind] = 0.0 if oldest_ms is None else max(0.0, now - oldest_ms / 1000)
    return out


async def read_group_lag(
    redis: aioredis.Redis, ks: keys.Keyspace, timeout_s: float = 2.0
) -> dict[tuple[str, str], float]:
    """Seconds behind of each consumer group of the feedback stream but the archiver's,
    by (``feedback``, group); empty when Redis does not answer."""
    try:
        return await asyncio.wait_for(_read_group_lag(redis, ks, time.time()), timeout_s)
    except (RedisError, OSError, TimeoutError, ValueError) as exc:
        log.debug("consumer group lag unavailable: %s", exc)
        return {}


async def _read_group_lag(
    redis: aioredis.Redis, ks: keys.Keyspace, now: float
) -> dict[tuple[str, str], float]:
    stream = ks.feedback_stream
    try:
        groups: Any = await redis.xinfo_groups(stream)
    except ResponseError:  # no stream yet
        return {}
    groups = [g for g in groups if keys.text(g["name"]) != keys.ARCHIVE_GROUP]
    if not groups:
        return {}
    head: Any = await redis.xrange(stream, count=1)
    first = keys.stream_id_order(keys.text(head[0][0])) if head else None
    out: dict[tuple[str, str], float] = {}
    for g in groups:
        name = keys.text(g["name"])
        if g.get("pending"):
            summary: Any = await redis.xpending(stream, name)
            at = keys.text(summary["min"])
        else:
            at = keys.stream_id_after(keys.text(g["last-delivered-id"]))
        oldest: int | None = None
        if first is not None and keys.stream_id_order(at) < first:  # trimmed past it
            # (a group made at the stream's start and never read: its first entry's age)
            oldest = keys.stream_id_order(at)[0] or first[0]
        else:
            nxt: Any = await redis.xrange(stream, min=at, count=1)
            oldest = keys.stream_id_order(keys.text(nxt[0][0]))[0] if nxt else None
        out[("feedback", name)] = 0.0 if oldest is None else max(0.0, now - oldest / 1000)
    return out


async def _oldest_unarchived_ms(redis: aioredis.Redis, stream: str) -> int | None:
    try:
        groups: Any = await redis.xinfo_groups(stream)
    except ResponseError:  # no stream yet: nothing waits
        return None
    group = next((g for g in groups if keys.text(g["name"]) == keys.ARCHIVE_GROUP), None)
    first: Any
    if group is None:  # no archiver has run yet: every entry waits
        first = await redis.xrange(stream, count=1)
    elif group.get("pending"):  # read, not yet acknowledged: the oldest of them
        summary: Any = await redis.xpending(stream, keys.ARCHIVE_GROUP)
        if summary.get("min") is not None:
            return keys.stream_id_order(keys.text(summary["min"]))[0]
        first = []
    else:  # the first entry after what the group was last given
        after = keys.stream_id_after(keys.text(group["last-delivered-id"]))
        first = await redis.xrange(stream, min=after, count=1)
    return keys.stream_id_order(keys.text(first[0][0]))[0] if first else None


class Metrics:
    def __init__(self) -> None:
        # prometheus-client picked its value storage when it was imported, from the same
        # variable: set it before a worker starts (``gateway serve --workers N`` does).
        self.multiprocess_dir = os.environ.get(MULTIPROC_ENV) or None
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.scrape = _ScrapeCollector()
        r.register(self.scrape)
        self.requests = Counter(
            "flywheel_requests",
            "Chat completion requests by experiment, arm (the model that answered) and status",
            ["experiment", "arm", "status"],
            registry=r,
        )
        self.request_duration = Histogram(
            "flywheel_request_duration_seconds",
            "Time from request received to last byte sent",
            ["experiment", "arm"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "flywheel_time_to_first_token_seconds",
            "Time from request received to the first streamed content chunk",
            ["experiment", "arm"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_duration = Histogram(
            "flywheel_upstream_request_duration_seconds",
            "Time from sending a request upstream to its last byte (or its failure)",
            ["upstream"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_errors = Counter(
            "flywheel_upstream_errors",
            "Failed upstream calls by upstream and reason",
            ["upstream", "reason"],
            registry=r,
        )
        self.fallbacks = Counter(
            "flywheel_fallbacks",
            "Requests answered by the experiment's fallback after the assigned arm failed",
            ["experiment", "arm", "fallback"],
            registry=r,
        )
        self.tokens = Counter(
            "flywheel_tokens",
            "Tokens by experiment, arm and kind (prompt or completion)",
            ["experiment", "arm", "kind"],
            registry=r,
        )
        self.cost = Counter(
            "flywheel_cost",
            "Spend in the price's currency (tokens at the model's price) by experiment and arm; "
            "1000 * rate(cost) / rate(requests) is the cost per 1k requests",
            ["experiment", "arm"],
            registry=r,
        )
        self.spend = Counter(
            "flywheel_spend",
            "Spend in the price's currency by tenant, key and model (what budgets count)",
            ["tenant", "key", "model"],
            registry=r,
        )
        self.budget_used = Gauge(
            "flywheel_budget_used_ratio",
            "Share of a budget spent in its current period, by scope (key or tenant) and owner; "
            "the alert fires at the budget's soft share",
            ["scope", "owner"],
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.budget_soft = Gauge(
            "flywheel_budget_soft_ratio",
            "The budget's soft share (its alert threshold), by scope and owner",
            ["scope", "owner"],
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.quota_refused = Counter(
            "flywheel_quota_refused",
            "Requests refused with 429 insufficient_quota, by scope and owner (key id or tenant)",
            ["scope", "owner"],
            registry=r,
        )
        self.decisions = Counter(
            "flywheel_decisions",
            "The decider's looks at auto_promote experiments, by the action they led to "
            "(promote, ramp, rollback, keep collecting)",
            ["experiment", "action"],
            registry=r,
        )
        self.in_flight = Gauge(
            "flywheel_requests_in_flight",
            "Chat completion requests being served",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.rate_limited = Counter(
            "flywheel_rate_limited",
            "Requests refused with 429 by key name and limit (requests or tokens per minute)",
            ["key", "limit"],
            registry=r,
        )
        self.event_loop_tasks = Gauge(
            "flywheel_event_loop_tasks",
            "asyncio tasks alive (sampled every second); growth with flat traffic is a leak",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.log_written = Counter(
            "flywheel_log_written", "Interaction records written to Redis", registry=r
        )
        self.log_dropped = Counter(
            "flywheel_log_dropped",
            "Interaction records lost (queue full while Redis was unavailable, or at exit)",
            registry=r,
        )
        self.log_queue_depth = Gauge(
            "flywheel_log_queue_depth",
            "Interaction records waiting to be written",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.log_write_errors = Counter(
            "flywheel_log_write_errors", "Failed batch writes to Redis (retried)", registry=r
        )

        self.feedback = Counter(
            "flywheel_feedback",
            "Ratings received by experiment, arm and rating (up, down, 1-5)",
            ["experiment", "arm", "rating"],
            registry=r,
        )
        self.feedback_score = Summary(
            "flywheel_feedback_score",
            "Rating scores in [0, 1]; rate(_sum) / rate(_count) is the rolling mean per arm",
            ["experiment", "arm"],
            registry=r,
        )

        self.shadow_requests = Counter(
            "flywheel_shadow_requests",
            "Requests copied to an experiment's shadow model, by status (ok, error)",
            ["experiment", "arm", "status"],
            registry=r,
        )
        self.shadow_score = Summary(
            "flywheel_shadow_score",
            "Judge scores in [0, 1] of shadow answers against the served answer",
            ["experiment", "arm"],
            registry=r,
        )

    def initialise_arm(self, experiment: str, arm: str) -> None:
        """Create an arm's series at 0 before its first request, so that ``rate()`` and
        ratios see them start (Prometheus's advice for known label values)."""
        for status in ("2xx", "4xx", "5xx"):
            self.requests.labels(experiment, arm, status)
        self.request_duration.labels(experiment, arm)
        self.feedback_score.labels(experiment, arm)

    def close(self) -> None:
        """The app stops: the "live" gauges forget this worker (its counters stay)."""
        if self.multiprocess_dir:
            mark_process_dead(os.getpid(), self.multiprocess_dir)  # type: ignore[no-untyped-call]

    def render(self, state: ScrapeState | None = None) -> bytes:
        """The text exposition: every worker's metrics (multiprocess mode) or this
        process's, and ``state`` read at scrape time."""
        if state is not None:
            self.scrape.state = state
        if not self.multiprocess_dir:
            return generate_latest(self.registry)
        merged = CollectorRegistry(auto_describe=True)
        MultiProcessCollector(merged, path=self.multiprocess_dir)  # type: ignore[no-untyped-call]
        merged.register(self.scrape)
        return generate_latest(merged)


def status_class(status: int) -> str:
    return f"{status // 100}xx"


class ArmMetrics:
    """The metric series of one (experiment, arm), looked up once instead of per request
    (``labels()`` takes a lock and builds a key every call)."""

    def __init__(self, metrics: Metrics, experiment: str, arm: str) -> None:
        self._metrics, self._labels = metrics, (experiment, arm)
        self._requests: dict[str, Any] = {}
        self.duration = metrics.request_duration.labels(experiment, arm)
        self.ttft = metrics.ttft.labels(experiment, arm)
        self.prompt_tokens = metrics.tokens.labels(experiment, arm, "prompt")
        self.completion_tokens = metrics.tokens.labels(experiment, arm, "completion")
        self.cost = metrics.cost.labels(experiment, arm)

    def request(self, status: str) -> Any:
        child = self._requests.get(status)
        if child is None:
            child = self._requests[status] = self._metrics.requests.labels(*self._labels, status)
        return child
