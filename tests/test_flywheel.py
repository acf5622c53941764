"""The loop, end to end: a rated correction becomes a trained, evaluated canary arm."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx
import pytest
import redis
import yaml

from flywheel_stack import VLLMServer, free_port
from gateway.core import keys
from retrain.jobs import JobStore

from .conftest import ADMIN
from .helpers.flywheel import (
    ITEMS,
    answers_a_trained_correction,
    ask,
    config_for,
    correction,
    new_experiment,
    rate_corrections,
    rated_experiment,
    retrain,
)
from .services import GatewayProcess, RedisProcess

KS = keys.PLAIN_KEYSPACE  # these tests run on one Redis


@pytest.mark.vllm
def test_a_rated_correction_comes_back_as_the_canarys_answer(
    gateway: GatewayProcess,
    vllm: VLLMServer,
    redis_server: RedisProcess,
    tiny_model: Path,
    tmp_path: Path,
) -> None:
    exp, config = rated_experiment(gateway, tmp_path, tiny_model)

    first = retrain(
        config,
        "run",
        "--experiment",
        exp,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    r = redis.Redis.from_url(redis_server.url)
    deadline = time.monotonic() + 60
    while not r.exists(KS.run_lock(exp)):
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.05)
    second = retrain(config, "run", "--experiment", exp)  # while the first holds the lock
    assert second.returncode == 5 and "holds the lock" in second.stderr
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, out + err
    assert "is a canary of" in out

    # The experiment gained the candidate as a canary at 5%.
    spec = httpx.get(f"{gateway.url}/admin/experiments/{exp}", headers=ADMIN).json()["spec"]
    (canary,) = [a for a in spec["arms"] if a["model"] != "base"]
    assert canary["weight"] == pytest.approx(1 * 0.05 / 0.95, rel=1e-3)

    # Its answer to a trained question is the correction; the control's is not.
    root = tmp_path / "datasets" / exp
    dataset = (root / "latest").read_text().strip()
    train = (root / dataset / "train.jsonl").read_text()
    trained = [i for i in ITEMS if correction(i) in train]
    assert trained and len(ITEMS) - len(trained) == 6  # six questions held out for the test
    question = f"Can I return {trained[0]}?"
    assert ask(gateway, exp, question, arm=canary["model"]) == correction(trained[0])
    assert ask(gateway, exp, question, arm="base") != correction(trained[0])

    # The job holds the loss curve, the evaluation and the lineage.
    job = JobStore(r, keys.PLAIN_KEYSPACE).list(50)
    (mine,) = [j for j in job if j["experiment"] == exp]
    assert mine["status"] == "registered" and mine["model_name"] == canary["model"]
    assert len(mine["loss"]) >= 10 and all("loss" in row for row in mine["loss"][:5])
    ev = mine["evaluation"]
    assert ev["passed"] and ev["cases"] == len(ITEMS) - len(trained)
    assert ev["test"]["gain"]["low"] >= 0.05 and len(ev["rows"]) == ev["cases"]
    model = httpx.get(f"{gateway.url}/admin/models/{canary['model']}", headers=ADMIN).json()
    assert model["lineage"]["job"] == mine["id"] and model["lineage"]["dataset"] == dataset
    assert model["experiments"] == [exp]
    lineage = retrain(config, "lineage", canary["model"])
    assert lineage.returncode == 0 and f"dataset {dataset}" in lineage.stdout


@pytest.mark.vllm
@pytest.mark.timeout(900)  # two runs, each training the tiny model
def test_a_candidate_that_does_not_beat_the_control_is_not_registered(
    gateway: GatewayProcess,
    vllm: VLLMServer,
    redis_server: RedisProcess,
    tiny_model: Path,
    tmp_path: Path,
) -> None:
    exp, config = rated_experiment(gateway, tmp_path, tiny_model, max_steps=1, learning_rate=1e-9)
    run = retrain(config, "run", "--experiment", exp)
    assert run.returncode == 6, run.stdout + run.stderr
    assert "not registered: chrF" in run.stderr and "< the margin 0.05" in run.stderr
    (job,) = [
        j
        for j in JobStore(redis.Redis.from_url(redis_server.url), keys.PLAIN_KEYSPACE).list(50)
        if j["experiment"] == exp
    ]
    assert job["status"] == "rejected" and "not registered" in job["error"]
    name = f"{exp}-{job['id'].removeprefix('ftjob-')}"
    models = httpx.get(f"{gateway.url}/admin/models", headers=ADMIN).json()["data"]
    assert name not in {m["id"] for m in models}
    assert not (tmp_path / "adapters" / name).exists()  # retrain.local.keep_failed_adapters
    spec = httpx.get(f"{gateway.url}/admin/experiments/{exp}", headers=ADMIN).json()["spec"]
    assert [a["model"] for a in spec["arms"]] == ["base"]

    # The rejected version is not trained again unchanged: that would loop.
    again = retrain(config, "run", "--experiment", exp)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"was already trained (rejected, {job['id']})" in again.stdout


@pytest.mark.vllm
@pytest.mark.timeout(900)  # two runs, each training the tiny model
def test_a_run_killed_during_training_is_resumed_from_its_checkpoint_by_the_next_run(
    gateway: GatewayProcess,
    vllm: VLLMServer,
    redis_server: RedisProcess,
    tiny_model: Path,
    tmp_path: Path,
) -> None:
    exp, config = rated_experiment(gateway, tmp_path, tiny_model)
    killed = retrain(config, "run", "--experiment", exp, crash="checkpoint")  # kill -9 there
    assert killed.returncode == 137
    store = JobStore(redis.Redis.from_url(redis_server.url), keys.PLAIN_KEYSPACE)
    (dead,) = [j for j in store.list(50) if j["experiment"] == exp]
    assert dead["status"] == "running" and dead["checkpoint_step"] == 30  # 300 steps / 10

    again = retrain(config, "run", "--experiment", exp)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "resumed from the checkpoint at step 30" in again.stdout
    (job,) = [j for j in store.list(50) if j["experiment"] == exp and j["id"] != dead["id"]]
    assert job["status"] == "registered" and job["dataset_id"] == dead["dataset_id"]
    assert job["training"]["resumed_from_step"] == 30 and job["training"]["steps"] == 300
    assert answers_a_trained_correction(gateway, exp, tmp_path)
    assert not Path(job["checkpoints"]).exists()  # trained to an outcome: nothing to resume


@pytest.mark.vllm
@pytest.mark.timeout(900)  # two runs, each training the tiny model
def test_a_run_that_finds_the_gateway_down_at_registration_registers_on_the_next_run(
    gateway: GatewayProcess,
    vllm: VLLMServer,
    redis_server: RedisProcess,
    tiny_model: Path,
    tmp_path: Path,
) -> None:
    own = GatewayProcess(yaml.safe_load(gateway.config_path.read_text()), tmp_path / "gw").start()
    try:
        exp, config = rated_experiment(own, tmp_path, tiny_model)
        running = retrain(
            config,
            "run",
            "--experiment",
            exp,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        store = JobStore(redis.Redis.from_url(redis_server.url), keys.PLAIN_KEYSPACE)
        deadline = time.monotonic() + 120
        while not [j for j in store.list(50) if j["experiment"] == exp and j["loss"]]:
            assert running.poll() is None and time.monotonic() < deadline, running.communicate()
            time.sleep(0.05)
        own.stop()  # the gateway goes away while the candidate trains
        out, err = running.communicate(timeout=300)
        assert running.returncode == 1, out + err
        assert "stays untrained and the next run retries it" in err

        down = retrain(config, "run", "--experiment", exp)  # still down: preflight stops it
        assert down.returncode == 2 and "does not answer" in down.stderr, down.stderr
        own.start()
        again = retrain(config, "run", "--experiment", exp)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "is a canary of" in again.stdout and "resumed from the checkpoint" in again.stdout
        assert answers_a_trained_correction(own, exp, tmp_path)
    finally:
        own.stop()


@pytest.mark.vllm
@pytest.mark.timeout(900)  # two runs, each training the tiny model
def test_a_bad_config_consumes_nothing_and_the_fixed_config_trains_the_same_ratings(
    gateway: GatewayProcess, vllm: VLLMServer, tiny_model: Path, tmp_path: Path
) -> None:
    exp = new_experiment(gateway)
    rate_corrections(gateway, exp)
    dead_port = f"http://127.0.0.1:{free_port()}"
    bad = config_for(gateway, tmp_path, tiny_model, base_model=str(tmp_path / "no-model"))
    doc = yaml.safe_load(bad.read_text())
    doc["retrain"]["gateway_url"] = dead_port
    bad.write_text(yaml.safe_dump(doc))
    refused = retrain(bad, "run", "--experiment", exp)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "nothing was consumed" in refused.stderr
    assert f"the gateway at {dead_port} does not answer" in refused.stderr  # every problem,
    assert "no-model is not a model directory" in refused.stderr  # one line each
    assert not (tmp_path / "datasets" / exp).exists()

    fixed = config_for(gateway, tmp_path, tiny_model, base_model=None)  # asked from vLLM
    run = retrain(fixed, "run", "--experiment", exp)
    assert run.returncode == 0, run.stdout + run.stderr
    root = tmp_path / "datasets" / exp
    train = (root / (root / "latest").read_text().strip() / "train.jsonl").read_text()
    assert sum(correction(i) in train for i in ITEMS) >= 3  # the ratings rated before
    assert answers_a_trained_correction(gateway, exp, tmp_path)


@pytest.mark.vllm
@pytest.mark.timeout(900)  # two runs, each training the tiny model
def test_a_run_killed_after_staging_leaves_no_half_registered_model(
    gateway: GatewayProcess,
    vllm: VLLMServer,
    redis_server: RedisProcess,
    tiny_model: Path,
    tmp_path: Path,
) -> None:
    exp, config = rated_experiment(gateway, tmp_path, tiny_model)
    killed = retrain(config, "run", "--experiment", exp, crash="after-stage")
    assert killed.returncode == 137
    store = JobStore(redis.Redis.from_url(redis_server.url), keys.PLAIN_KEYSPACE)
    (job,) = [j for j in store.list(50) if j["experiment"] == exp]
    assert job["status"] == "evaluating"
    models = {
        m["id"] for m in httpx.get(f"{gateway.url}/admin/models", headers=ADMIN).json()["data"]
    }  # noqa: E501
    assert job["model_name"] in models  # staged when the run died

    # The rerun cleans up, then trains the same dataset again (it never reached an outcome).
    again = retrain(config, "run", "--experiment", exp)
    assert again.returncode == 0, again.stderr
    assert f"cleaned up {job['id']}" in again.stdout and "is a canary of" in again.stdout
    assert "never trained to an outcome" in again.stdout
    dead = store.get(job["id"])
    assert dead is not None and dead["status"] == "failed" and "interrupted" in dead["error"]
    models = {
        m["id"] for m in httpx.get(f"{gateway.url}/admin/models", headers=ADMIN).json()["data"]
    }  # noqa: E501
    assert job["model_name"] not in models
    (retried,) = [j for j in store.list(50) if j["experiment"] == exp and j["id"] != job["id"]]
    assert retried["status"] == "registered" and retried["dataset_id"] == job["dataset_id"]


@pytest.mark.vllm
def test_retrain_cancel_stops_a_running_job_and_nothing_is_registered(
    gateway: GatewayProcess,
    vllm: VLLMServer,
    redis_server: RedisProcess,
    tiny_model: Path,
    tmp_path: Path,
) -> None:
    exp, config = rated_experiment(gateway, tmp_path, tiny_model, max_steps=100_000)
    running = retrain(
        config,
        "run",
        "--experiment",
        exp,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    store = JobStore(redis.Redis.from_url(redis_server.url), keys.PLAIN_KEYSPACE)
    deadline = time.monotonic() + 120
    while True:
        mine = [j for j in store.list(50) if j["experiment"] == exp]
        if mine and len(mine[0]["loss"]) >= 3:
            break
        assert running.poll() is None and time.monotonic() < deadline, running.communicate()
        time.sleep(0.1)
    cancel = retrain(config, "cancel", mine[0]["id"])
    assert cancel.returncode == 0 and "asked" in cancel.stdout
    out, err = running.communicate(timeout=120)
    assert running.returncode == 0 and "was cancelled" in out, out + err
    job = store.get(mine[0]["id"])
    assert job is not None and job["status"] == "cancelled" and len(job["loss"]) < 1000
    models = httpx.get(f"{gateway.url}/admin/models", headers=ADMIN).json()["data"]
    assert not any(m["id"].startswith(exp) for m in models)
    assert not any(p.name.startswith(exp) for p in (tmp_path / "adapters").iterdir())
