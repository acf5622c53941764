"""Every Prometheus metric the gateway exports, defined in one place.

Labels are bounded sets (experiment, arm, upstream, status class, reason): never a
user or a response id. Each app gets its own registry, so tests and several apps in
one process never share counters.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Summary,
    generate_latest,
)

# LLM latencies span from a cached 10 ms answer to a two-minute generation.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
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
        self.in_flight = Gauge(
            "flywheel_requests_in_flight", "Chat completion requests being served", registry=r
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
            "flywheel_log_queue_depth", "Interaction records waiting to be written", registry=r
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

        self.experiment_weight = Gauge(
            "flywheel_experiment_weight",
            "Intended share of each arm in [0, 1], from the live experiment state",
            ["experiment", "arm"],
            registry=r,
        )
        self.upstream_replicas = Gauge(
            "flywheel_upstream_replicas",
            "Replicas of each upstream by circuit-breaker state (closed, open, half_open)",
            ["upstream", "state"],
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

    def render(self) -> bytes:
        return generate_latest(self.registry)
