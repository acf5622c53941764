"""Training providers: local LoRA (SFT and DPO) on CPU, and OpenAI's fine-tuning API."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml

from flywheel_stack import VLLMServer
from gateway.core import keys
from retrain.config import LocalTraining, OpenAITraining
from retrain.jobs import JobStore
from retrain.local_train import plan, train
from retrain.openai_ft import OpenAIProvider

from .conftest import ADMIN
from .helpers.flywheel import (
    ITEMS,
    config_for,
    correction,
    new_experiment,
    rate_corrections,
    retrain,
)
from .helpers.training import write_dataset
from .openai_ft_server import FineTuningServer
from .openapi_schema import Check
from .services import GatewayProcess, RedisProcess


@pytest.mark.slow
def test_local_training_on_cpu_lowers_the_validation_loss(tiny_model: Path, tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "data")
    rows: list[dict[str, Any]] = []
    cfg = LocalTraining(max_steps=40, learning_rate=1e-2, batch_size=4, patience=100)
    summary = train(
        data,
        tmp_path / "adapter",
        cfg,
        base_model=str(tiny_model),
        checkpoint_dir=tmp_path / "checkpoints",
        on_log=rows.append,
    )
    assert summary["device"] == "cpu" and summary["steps"] == 40
    assert summary["eval_loss_last"] < summary["eval_loss_first"] - 0.1, summary
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 41))
    # Evaluated before training, then every 40 // 10 steps; each reported once.
    assert [r["step"] for r in rows if "eval_loss" in r] == list(range(0, 41, 4))
    adapter = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 16 and adapter["lora_alpha"] == 32
    assert adapter["bias"] == "none" and not adapter.get("use_dora")
    assert not adapter.get("modules_to_save")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").stat().st_size > 0


def test_training_stops_when_asked(tiny_model: Path, tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "data")
    steps: list[int] = []
    cfg = LocalTraining(max_steps=500, learning_rate=1e-3, batch_size=4)
    summary = train(
        data,
        tmp_path / "adapter",
        cfg,
        base_model=str(tiny_model),
        checkpoint_dir=tmp_path / "checkpoints",
        on_log=lambda r: steps.append(r["step"]),
        should_stop=lambda: len(steps) >= 5,
    )
    assert summary["cancelled"] and summary["steps"] < 20


def test_the_plan_evaluates_a_set_number_of_times_whatever_the_dataset_size() -> None:
    cfg = LocalTraining()  # 3 epochs, batch 4, 10 evaluations, 3% warm-up
    assert plan(1000, cfg) == {"steps": 750, "warmup_steps": 22, "eval_steps": 75}
    assert plan(6, cfg) == {"steps": 6, "warmup_steps": 0, "eval_steps": 1}
    assert plan(6, LocalTraining(max_steps=300, warmup_ratio=0.1)) == {
        "steps": 300,
        "warmup_steps": 30,
        "eval_steps": 30,
    }


@pytest.mark.vllm
def test_dpo_on_preference_pairs_saves_an_adapter_vllm_loads(
    tiny_model: Path, vllm: VLLMServer, tmp_path: Path
) -> None:
    data = write_dataset(tmp_path / "data")
    cfg = LocalTraining(method="dpo", max_steps=4, learning_rate=1e-3, batch_size=2)
    summary = train(
        data,
        tmp_path / "dpo-adapter",
        cfg,
        base_model=str(tiny_model),
        checkpoint_dir=tmp_path / "checkpoints",
    )
    assert summary["steps"] == 4 and summary["train_loss"] > 0
    name = f"dpo-{uuid.uuid4().hex[:6]}"
    loaded = httpx.post(
        vllm.base_url + "/load_lora_adapter",
        timeout=60,
        json={"lora_name": name, "lora_path": str(tmp_path / "dpo-adapter")},
    )
    assert loaded.status_code == 200, loaded.text
    listed = {m["id"] for m in httpx.get(vllm.base_url + "/models").json()["data"]}
    assert name in listed
    httpx.post(vllm.base_url + "/unload_lora_adapter", json={"lora_name": name})


def provider(server: FineTuningServer, **cfg: Any) -> OpenAIProvider:
    settings = OpenAITraining(base_url=server.base_url, api_key="sk-test", poll_s=0.01, **cfg)
    return OpenAIProvider(settings)


def test_openai_provider_sends_documented_requests_and_follows_the_job(
    tmp_path: Path, check_schema: Check
) -> None:
    server = FineTuningServer().start()
    try:
        data = write_dataset(tmp_path / "data")
        p = provider(server, n_epochs=2, learning_rate_multiplier=0.5)
        job_id = p.launch(data, suffix="support-bot-1", seed=7)
        events: list[dict[str, Any]] = []
        outcome = p.wait(job_id, on_event=events.append, should_stop=lambda: False)
    finally:
        server.stop()
    uploads = [r for r in server.requests if r["path"] == "/files"]
    assert [(u["purpose"], u["filename"]) for u in uploads] == [
        ("fine-tune", "train.jsonl"),
        ("fine-tune", "validation.jsonl"),
    ]
    assert uploads[0]["bytes"] == (data / "train.jsonl").read_bytes()
    (create,) = [r["json"] for r in server.requests if r["path"] == "/fine_tuning/jobs"]
    assert create == {
        "model": "gpt-4o-mini-2024-07-18",
        "training_file": "file-abc121",
        "validation_file": "file-abc122",
        "suffix": "support-bot-1",
        "seed": 7,
        "method": {
            "type": "supervised",
            "supervised": {
                "hyperparameters": {
                    "n_epochs": 2,
                    "batch_size": "auto",
                    "learning_rate_multiplier": 0.5,
                }
            },
        },
    }
    assert outcome == {
        "status": "succeeded",
        "error": None,
        "model": "ft:gpt-4o-mini-2024-07-18:org-123:support-bot-1:abc123",
    }
    assert [e["message"] for e in events][0] == "Created fine-tuning job"
    assert events[-1]["message"] == "Fine-tuning job succeeded"
    assert len({e["id"] for e in events}) == len(events)  # each relayed once
    for schema, body in server.responses:  # the stand-in answers as OpenAI documents
        check_schema(schema, body)


def test_openai_provider_reports_failure_and_cancels(tmp_path: Path, check_schema: Check) -> None:
    data = write_dataset(tmp_path / "data")
    held_out = (data / "preference.jsonl").read_text().splitlines()[:1]
    (data / "preference_validation.jsonl").write_text("\n".join(held_out) + "\n")
    failing = FineTuningServer(outcome="failed").start()
    try:
        p = provider(failing, method="dpo", beta=0.25)
        outcome = p.wait(
            p.launch(data, suffix="x", seed=0), on_event=lambda e: None, should_stop=lambda: False
        )
        (create,) = [r["json"] for r in failing.requests if r["path"] == "/fine_tuning/jobs"]
        assert create["method"]["type"] == "dpo" and create["validation_file"]
        assert create["method"]["dpo"]["hyperparameters"]["beta"] == 0.25
        uploads = [r for r in failing.requests if r["path"] == "/files"]
        assert [u["filename"] for u in uploads] == [
            "preference.jsonl",
            "preference_validation.jsonl",
        ]
    finally:
        failing.stop()
    assert outcome["status"] == "failed"
    assert outcome["error"] == "The job failed due to an invalid training file."

    slow = FineTuningServer().start()
    try:
        p = provider(slow)
        outcome = p.wait(
            p.launch(data, suffix="x", seed=0), on_event=lambda e: None, should_stop=lambda: True
        )
        assert any(r["path"].endswith("/cancel") for r in slow.requests)
    finally:
        slow.stop()
    assert outcome["status"] == "cancelled"
    for schema, body in failing.responses + slow.responses:
        check_schema(schema, body)


@contextmanager
def openai_stack(
    vllm: VLLMServer, redis_server: RedisProcess, tiny_model: Path, tmp_path: Path
) -> Iterator[tuple[GatewayProcess, FineTuningServer, str, Path]]:
    """A gateway with an ``openai`` upstream on the fine-tuning stand-in, an experiment
    with rated corrections, and a retrain config whose provider ``openai`` is the
    stand-in: (gateway, stand-in, experiment, config)."""
    from .conftest import gateway_config
    from .faulty_upstream import FaultyUpstream

    server = FineTuningServer(answer="Yes: items can be returned within 30 days with the receipt.")
    server.start()
    faulty = FaultyUpstream().start()
    cfg = gateway_config(vllm.base_url, faulty.base_url, redis_server.url)
    cfg["upstreams"]["openai"] = {
        "kind": "openai",
        "base_url": server.base_url,
        "api_key": "sk-test",
    }
    gw = GatewayProcess(cfg, tmp_path / "gw").start()
    try:
        exp = new_experiment(gw)
        rate_corrections(gw, exp)
        config = config_for(gw, tmp_path, tiny_model)
        doc = yaml.safe_load(config.read_text())
        doc["retrain"]["openai"] = {
            "base_url": server.base_url,
            "api_key": "sk-test",
            "poll_s": 0.01,
        }
        config.write_text(yaml.safe_dump(doc))
        yield gw, server, exp, config
    finally:
        gw.stop()
        faulty.stop()
        server.stop()


@pytest.mark.vllm
def test_retrain_run_with_openai_registers_the_ft_model_as_a_canary(
    vllm: VLLMServer, redis_server: RedisProcess, tiny_model: Path, tmp_path: Path
) -> None:
    with openai_stack(vllm, redis_server, tiny_model, tmp_path) as (gw, server, exp, config):
        run = retrain(config, "run", "--experiment", exp, "--provider", "openai")
        assert run.returncode == 0, run.stdout + run.stderr
        (job,) = [
            j
            for j in JobStore(redis.Redis.from_url(redis_server.url), keys.PLAIN_KEYSPACE).list(100)
            if j["experiment"] == exp
        ]
        assert job["status"] == "registered" and job["result_model"].startswith("ft:")
        assert [e["message"] for e in job["events"]][-1] == "Fine-tuning job succeeded"
        model = httpx.get(f"{gw.url}/admin/models/{job['model_name']}", headers=ADMIN).json()
        assert model["upstream"] == "openai" and model["model"] == job["result_model"]
        assert model["experiments"] == [exp]
        status = retrain(config, "status", job["id"])
        assert status.returncode == 0 and "registered" in status.stdout


@pytest.mark.vllm
def test_a_hosted_student_is_fine_tuned_on_the_teachers_answers_and_canaried_beside_it(
    vllm: VLLMServer, redis_server: RedisProcess, tiny_model: Path, tmp_path: Path
) -> None:
    """Distillation to a smaller hosted model: ``--provider openai --student MODEL``
    fine-tunes that model on the teacher's answers (here the corrections users gave them,
    which win) and canaries the ``ft:`` model beside the teacher."""
    student = "gpt-4.1-nano-2025-04-14"
    with openai_stack(vllm, redis_server, tiny_model, tmp_path) as (gw, server, exp, config):
        # The session's vLLM model answers other tests too: this test's teacher traffic
        # is its own workload.
        workload = f"returns-{uuid.uuid4().hex[:6]}"
        rate_corrections(gw, exp, workload=workload)
        run = retrain(
            config, "run", "--experiment", exp, "--provider", "openai",
            "--distill", "--teacher", "base", "--student", student, "--workload", workload,
        )  # fmt: skip
        assert run.returncode == 0, run.stdout + run.stderr
        (create,) = [
            r for r in server.requests if r["path"] == "/fine_tuning/jobs" and r["method"] == "POST"
        ]
        assert create["json"]["model"] == student
        uploaded = [r for r in server.requests if r["path"] == "/files"]
        training = uploaded[0]["bytes"].decode()
        taught = [item for item in ITEMS if correction(item) in training]
        assert len(taught) == len(ITEMS) - 6  # six held out for the gate
        (job,) = [
            j
            for j in JobStore(redis.Redis.from_url(redis_server.url), keys.PLAIN_KEYSPACE).list(100)
            if j["experiment"] == exp
        ]
        assert job["status"] == "registered" and job["result_model"].startswith(f"ft:{student}:")
        model = httpx.get(f"{gw.url}/admin/models/{job['model_name']}", headers=ADMIN).json()
        assert model["upstream"] == "openai" and model["lineage"]["teacher"] == "base"
        spec = httpx.get(f"{gw.url}/admin/experiments/{exp}", headers=ADMIN).json()["spec"]
        assert {a["model"] for a in spec["arms"]} == {"base", job["model_name"]}


@pytest.mark.vllm
def test_a_run_that_died_while_openai_trained_is_finished_by_the_next_without_a_second_job(
    vllm: VLLMServer, redis_server: RedisProcess, tiny_model: Path, tmp_path: Path
) -> None:
    """``retrain run`` dies once its OpenAI job is launched; the job succeeds meanwhile.
    The next run adopts it: its ``ft:`` model is registered, evaluated and made a canary,
    and OpenAI saw one job created and none cancelled — nothing was bought twice."""
    with openai_stack(vllm, redis_server, tiny_model, tmp_path) as (gw, server, exp, config):
        store = JobStore(redis.Redis.from_url(redis_server.url), keys.PLAIN_KEYSPACE)

        def jobs() -> list[dict[str, Any]]:
            return [j for j in store.list(100) if j["experiment"] == exp]

        killed = retrain(
            config, "run", "--experiment", exp, "--provider", "openai", crash="remote-training"
        )
        assert killed.returncode == 137, killed.stdout + killed.stderr
        (dead,) = jobs()
        assert dead["status"] == "running" and dead["provider_job"] in server.jobs
        remote = OpenAIProvider(OpenAITraining(base_url=server.base_url, api_key="sk-test"))
        while remote.status(dead["provider_job"]).status != "succeeded":
            pass  # the hosted training goes on without the run, and ends

        again = retrain(config, "run", "--experiment", exp, "--provider", "openai")
        assert again.returncode == 0, again.stdout + again.stderr
        assert f"{dead['id']}: adopted" in again.stdout and "not trained again" in again.stdout
        assert f"{exp}-{dead['id'].removeprefix('ftjob-')} is a canary of" in again.stdout
        (job,) = jobs()  # the same job, finished: no second one
        assert job["id"] == dead["id"] and job["status"] == "registered"
        assert job["result_model"] == server.jobs[dead["provider_job"]]["fine_tuned_model"]
        assert job["evaluation"]["passed"] and job["dataset_id"] == dead["dataset_id"]
        assert [e["message"] for e in job["events"]][-1] == "Fine-tuning job succeeded"
        model = httpx.get(f"{gw.url}/admin/models/{job['model_name']}", headers=ADMIN).json()
        assert model["upstream"] == "openai" and model["model"] == job["result_model"]
        assert model["experiments"] == [exp]
        creates = [
            r for r in server.requests if r["path"] == "/fine_tuning/jobs" and r["method"] == "POST"
        ]
        assert len(creates) == 1
        assert not [r for r in server.requests if r["path"].endswith("/cancel")]
        nothing = retrain(config, "run", "--experiment", exp, "--provider", "openai")
        assert nothing.returncode == 0 and "nothing new" in nothing.stdout, nothing.stdout
        assert len(jobs()) == 1
