"""The metrics catalogue: summed over ``--workers N``, and retrain's state read from Redis."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import redis
import yaml
from prometheus_client.parser import text_string_to_metric_families

from gateway.core import keys
from retrain.jobs import JobStore, record_run

from .conftest import ADMIN_KEY
from .faulty_upstream import FaultyUpstream
from .ops_gateway import EXPERIMENT, chat, fixed_config, rate
from .services import GatewayProcess, RedisProcess


@pytest.fixture(scope="module")
def ops_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    proc = RedisProcess(tmp_path_factory.mktemp("ops-redis"))
    proc.start()
    yield proc
    proc.stop()


def samples(gw: GatewayProcess) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of one scrape, on a fresh connection (any worker may answer)."""
    text = httpx.get(gw.url + "/metrics").text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def total(
    scrape: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in scrape.items() if n == name and want <= ls)


@pytest.mark.slow
def test_metrics_count_the_requests_of_every_worker(
    faulty: FaultyUpstream, ops_redis: RedisProcess, tmp_path: Path
) -> None:
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    (metrics_dir / "counter_99999999.db").write_bytes(b"left by an earlier run")
    gw = GatewayProcess(
        fixed_config(faulty.base_url, ops_redis.url, tmp_path),
        tmp_path / "gw",
        env={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)},
        workers=2,
        ready_path="/readyz",
    ).start(timeout=60)
    try:
        arms: list[str] = []

        def pids() -> set[str]:  # a worker writes its own file once it counts something
            return {p.stem.rsplit("_", 1)[1] for p in metrics_dir.glob("counter_*.db")}

        with ThreadPoolExecutor(8) as pool:  # concurrent connections: both workers accept
            while len(arms) < 60 or (len(pids()) < 2 and len(arms) < 2000):
                batch = range(len(arms), len(arms) + 30)
                arms += pool.map(lambda i: chat(gw, f"user-{i}", stream=i % 3 == 0)[1], batch)
        n = len(arms)
        assert len(pids()) == 2, sorted(metrics_dir.iterdir())
        assert "99999999" not in pids()  # the directory was emptied at start
        for _ in range(8):  # whichever worker answers the scrape, the sums are the same
            s = samples(gw)
            assert total(s, "flywheel_requests_total", experiment=EXPERIMENT, status="2xx") == n
            assert total(s, "flywheel_request_duration_seconds_count", experiment=EXPERIMENT) == n
            assert (
                total(s, "flywheel_upstream_request_duration_seconds_count", upstream="fixed") == n
            )
            assert total(s, "flywheel_tokens_total", kind="completion") == 3 * n
            assert total(s, "flywheel_time_to_first_token_seconds_count") == (n + 2) // 3
            assert total(s, "flywheel_requests_in_flight") == 0
            assert (
                total(s, "flywheel_experiment_weight", experiment=EXPERIMENT, arm="fixed-b") == 0.5
            )
            assert total(s, "flywheel_upstream_replicas", upstream="fixed", state="closed") == 1
            for arm in ("fixed-a", "fixed-b"):
                assert total(s, "flywheel_requests_total", arm=arm) == arms.count(arm) > 0
    finally:
        gw.stop()
    assert not any(metrics_dir.glob("gauge_live*_*.db"))  # exited workers are forgotten


@pytest.mark.slow
def test_retrain_runs_are_exposed_from_redis(
    faulty: FaultyUpstream, ops_redis: RedisProcess, tmp_path: Path
) -> None:
    """``retrain run`` records its outcome in Redis; any gateway replica exposes it."""
    prices = [{"provider": "openai", "model": "gpt-4o-mini-2024-07-18", "per_1m_tokens": 3.0}]
    config = fixed_config(faulty.base_url, ops_redis.url, tmp_path)
    # The openai provider: its preflight needs a key and the gateway, not a model on disk.
    config["retrain"].update(
        prices=prices,
        cost_cap=1e-9,
        provider="openai",
        admin_key=ADMIN_KEY,
        openai={"api_key": "sk-never-called"},
    )
    gw = GatewayProcess(config, tmp_path / "gw", ready_path="/readyz").start(timeout=60)
    try:
        for i in range(3):
            rid, _ = chat(gw, f"r{i}")
            rate(gw, rid, "down", correction=f"The right answer, number {i}.")

        def retrain_run(experiment: str) -> int:
            cfg = tmp_path / "retrain.yaml"
            retrain = {**config["retrain"], "gateway_url": gw.url}
            cfg.write_text(yaml.safe_dump({**config, "retrain": retrain}))
            return subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "retrain",
                    "run",
                    "--experiment",
                    experiment,
                    "--config",
                    str(cfg),
                ],
                capture_output=True,
                timeout=120,
            ).returncode

        t0 = time.time()
        assert retrain_run(EXPERIMENT) == 3  # over the cost cap: a failure to alert on
        assert retrain_run("ops-quiet") == 4  # no ratings: too few examples, as it should
        # What a run that trains records once its dataset is built (retrain/cycle.py).
        client = redis.Redis.from_url(ops_redis.url)
        job = JobStore(client, keys.PLAIN_KEYSPACE).create(experiment="ops-later", provider="local")
        record_run(
            client,
            keys.PLAIN_KEYSPACE,
            "ops-later",
            job=job["id"],
            examples={"train": 40, "test": 5},
        )
        JobStore(client, keys.PLAIN_KEYSPACE).update(job["id"], status="evaluating")
        client.close()
        s = samples(gw)
    finally:
        gw.stop()

    def value(name: str, **labels: str) -> float:
        return total(s, name, **labels)

    assert (
        value("flywheel_retrain_last_run_outcome", experiment=EXPERIMENT, outcome="over_cost_cap")
        == 1
    )
    assert value("flywheel_retrain_last_run_outcome", experiment=EXPERIMENT) == 1
    assert (
        value("flywheel_retrain_last_run_outcome", experiment="ops-quiet", outcome="below_minimum")
        == 1
    )
    assert t0 <= value("flywheel_retrain_last_run_timestamp_seconds", experiment=EXPERIMENT)
    assert (
        "flywheel_retrain_last_success_timestamp_seconds",
        frozenset({("experiment", EXPERIMENT)}),
    ) not in s
    assert t0 <= value("flywheel_retrain_last_success_timestamp_seconds", experiment="ops-quiet")
    assert value("flywheel_retrain_running") == 0
    assert value("flywheel_retrain_dataset_examples", experiment="ops-later", split="train") == 40
    assert value("flywheel_retrain_job_status", experiment="ops-later", status="evaluating") == 1
    assert value("flywheel_retrain_job_status", experiment="ops-later") == 1


def test_the_archive_lag_is_the_age_of_the_oldest_entry_not_acknowledged(
    tmp_path: Path,
) -> None:
    """``flywheel_archive_lag_seconds`` as read from Redis: 0 with nothing to archive; an
    entry no archiver ever saw; one a pass read and died before acknowledging (pending);
    the next one not yet delivered once the first is acknowledged; 0 when all are."""
    import asyncio

    import redis.asyncio as aioredis

    from gateway.core import keys
    from gateway.serving.metrics import read_archive_lag

    server = RedisProcess(tmp_path / "redis")
    server.start()
    ix, group = keys.PLAIN_KEYSPACE.interaction_stream, keys.ARCHIVE_GROUP
    now_ms = int(time.time() * 1000)

    async def steps() -> list[dict[str, float]]:
        r = aioredis.Redis.from_url(server.url)
        seen = [await read_archive_lag(r, keys.PLAIN_KEYSPACE)]
        old = await r.xadd(ix, {"id": "a"}, id=f"{now_ms - 100_000}-0")  # 100 s old
        seen.append(await read_archive_lag(r, keys.PLAIN_KEYSPACE))  # no group yet: no archiver ran
        await r.xgroup_create(ix, group, id="0")
        await r.xreadgroup(group, "dead-pass", {ix: ">"}, count=10)
        seen.append(await read_archive_lag(r, keys.PLAIN_KEYSPACE))  # read, never acknowledged
        await r.xadd(ix, {"id": "b"}, id=f"{now_ms - 40_000}-0")  # 40 s old
        await r.xack(ix, group, old)
        seen.append(await read_archive_lag(r, keys.PLAIN_KEYSPACE))  # the next is not delivered yet
        entries = await r.xreadgroup(group, "pass", {ix: ">"}, count=10)
        await r.xack(ix, group, *[sid for _, batch in entries for sid, _ in batch])
        seen.append(await read_archive_lag(r, keys.PLAIN_KEYSPACE))
        await r.aclose()
        return seen

    try:
        empty, unseen, pending, next_one, done = asyncio.run(steps())
    finally:
        server.stop()
    assert empty == {"interactions": 0.0, "feedback": 0.0}
    assert 100 <= unseen["interactions"] < 130 and unseen["feedback"] == 0
    assert 100 <= pending["interactions"] < 130
    assert 40 <= next_one["interactions"] < 70
    assert done == {"interactions": 0.0, "feedback": 0.0}
