"""The interaction-log writer's throughput: records/s that reach a real Redis.

Drives :class:`gateway.serving.interaction_log.InteractionLog` directly, as the gateway does:
records made by ``Turn.record()`` (the gateway's own shape, a unique signed id each) are
submitted from the event loop in slices (yielding between slices, as request handlers
would) while the background writer drains the queue into Redis. The clock runs from the
first submit until the writer has counted every record written; Redis is then checked
(``XLEN`` of the interaction stream).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass
from typing import Any

import redis.asyncio as aioredis

from gateway.control.routing import Target
from gateway.core import keys
from gateway.core.auth import Principal
from gateway.core.config import InteractionLogConfig as LogConfig
from gateway.core.config import Upstream
from gateway.core.ids import IdIssuer
from gateway.serving.interaction_log import InteractionLog
from gateway.serving.metrics import Metrics
from gateway.serving.turn import Turn

from .procs import group_cpu_seconds
from .systems import ID_SECRET

KS = keys.PLAIN_KEYSPACE  # the benches run on one Redis


@dataclass
class LogResult:
    records: int
    batch_size: int
    seconds: float
    records_per_s: float
    submit_us_per_record: float  # the cost a request pays (``submit``), measured apart
    writer_cpu_us_per_record: float  # this process's CPU while writing (submit + writer)
    redis_cpu_us_per_record: float | None  # the Redis server's, when its pid is known
    written_in_redis: int
    dropped: float

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def make_records(n: int, arms: int = 2) -> list[dict[str, Any]]:
    """``n`` records shaped exactly like the gateway's (``Turn.record()``)."""
    ids = IdIssuer(ID_SECRET.encode())
    upstream = Upstream(kind="vllm", base_url="http://127.0.0.1:1/v1")
    targets = [Target(f"m{i}", "fixed", upstream, f"m{i}") for i in range(arms)]
    principal = Principal("bench", "bench")
    usage = {"prompt_tokens": 9, "completion_tokens": 9, "total_tokens": 18}
    out = []
    t0 = time.perf_counter()
    for i in range(n):
        target = targets[i % arms]
        doc = {
            "model": "ab",
            "messages": [{"role": "user", "content": "hello"}],
            "user": f"u{i % 1000}",
        }
        turn = Turn(
            id=ids.new(),
            request_id=f"req-{i}",
            t0=t0,
            doc=doc,
            principal=principal,
            experiment="ab",
            assigned=target,
            target=target,
            stream=False,
            version=1,
        )
        turn.answer.append("Hello! How can I help you today?")
        turn.finish_reason, turn.usage = "stop", usage
        out.append(turn.record())
    return out


def _written(metrics: Metrics) -> float:
    return metrics.registry.get_sample_value("flywheel_log_written_total") or 0.0


def _dropped(metrics: Metrics) -> float:
    return metrics.registry.get_sample_value("flywheel_log_dropped_total") or 0.0


async def measure(
    redis_url: str, n: int, arms: int = 2, redis_pid: int | None = None, slice_size: int = 256
) -> LogResult:
    defaults = LogConfig()
    client = aioredis.Redis.from_url(redis_url)
    await client.flushdb()
    records = make_records(n, arms)
    metrics = Metrics()
    log = InteractionLog(
        client,
        metrics,
        ks=KS,
        queue_size=max(n, defaults.queue_size),  # measure the writer, not the queue's bound
        batch_size=defaults.batch_size,
        retention_s=defaults.retention_days * 86400,
    )
    # What one submit costs on the request path, on a log that is not running.
    probe = InteractionLog(
        client, Metrics(), ks=KS, queue_size=n, batch_size=defaults.batch_size, retention_s=60
    )
    t = time.perf_counter()
    for rec in records:
        probe.submit(rec)
    submit_us = (time.perf_counter() - t) / n * 1e6

    log.start()
    cpu0, redis0 = time.process_time(), _redis_cpu(redis_pid)
    t0 = time.perf_counter()
    for i in range(0, n, slice_size):
        for rec in records[i : i + slice_size]:
            log.submit(rec)
        await asyncio.sleep(0)
    while _written(metrics) + _dropped(metrics) < n:
        await asyncio.sleep(0.001)
    seconds = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    redis_cpu = _redis_cpu(redis_pid) - redis0 if redis_pid else None
    await log.stop()
    in_redis = int(await client.xlen(KS.interaction_stream))
    await client.flushdb()
    await client.aclose()
    return LogResult(
        records=n,
        batch_size=defaults.batch_size,
        seconds=round(seconds, 3),
        records_per_s=round(n / seconds, 1),
        submit_us_per_record=round(submit_us, 2),
        writer_cpu_us_per_record=round(cpu / n * 1e6, 2),
        redis_cpu_us_per_record=round(redis_cpu / n * 1e6, 2) if redis_cpu is not None else None,
        written_in_redis=in_redis,
        dropped=_dropped(metrics),
    )


def _redis_cpu(pid: int | None) -> float:
    return group_cpu_seconds(pid) if pid else 0.0


def run_log(redis_url: str, n: int, arms: int = 2, redis_pid: int | None = None) -> LogResult:
    """Measure in a fresh event loop (uvloop when installed, as uvicorn would use)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(measure(redis_url, n, arms, redis_pid))
    return uvloop.run(measure(redis_url, n, arms, redis_pid))
