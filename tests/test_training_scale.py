"""Training at scale on CPU: two processes (gloo) against one, a merged export served by
vLLM as a plain model, and what this machine refuses (QLoRA, sharding)."""

from __future__ import annotations

import json
import os
import stat
import uuid
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis
from pydantic import ValidationError

from flywheel_stack import VLLMServer, make_test_adapter
from gateway.core import keys
from retrain.config import LocalTraining, RetrainSettings
from retrain.jobs import JobStore
from retrain.local_train import problems, train

from .helpers.flywheel import (
    ADMIN,
    answers_a_trained_correction,
    config_for,
    rated_experiment,
    retrain,
)
from .services import GatewayProcess, RedisProcess

RECOVERY_DB = 3  # the stand-in OpenAI's job ids repeat: these tests' jobs stay apart
REMOTE_JOBS_DB = 4
ORDERS = [1111, 2345, 5678, 9012, 3456, 7890, 4321, 8765, 5555, 6543]


def order_dataset(root: Path) -> Path:
    """Ten conversations of the same token length: 8 to train, 2 to validate."""

    def row(n: int) -> str:
        return json.dumps(
            {
                "messages": [
                    {"role": "user", "content": f"Can I return order {n}?"},
                    {"role": "assistant", "content": f"Yes: order {n} can be returned."},
                ]
            }
        )

    root.mkdir(parents=True, exist_ok=True)
    (root / "train.jsonl").write_text("\n".join(row(n) for n in ORDERS[:8]) + "\n")
    (root / "validation.jsonl").write_text("\n".join(row(n) for n in ORDERS[8:]) + "\n")
    return root


def token_lengths(model: Path, data: Path) -> set[int]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model))
    lines = (data / "train.jsonl").read_text().splitlines()
    rows = [json.loads(line)["messages"] for line in lines]
    return {len(tok.apply_chat_template(m, tokenize=True)["input_ids"]) for m in rows}


def adapter_weights(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(path / "adapter_model.safetensors"))


def training_processes(marker: Path) -> list[str]:
    """Command lines of live processes that mention ``marker`` (a run's directory)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(marker) in cmd and int(pid) != os.getpid():
            found.append(cmd)
    return found


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_processes_train_the_same_adapter_as_one_with_the_same_rows_per_step(
    tiny_model: Path, tmp_path: Path
) -> None:
    data = order_dataset(tmp_path / "data")
    # Rows of one length: the per-process token averages equal the global one, so two
    # processes of 2 rows each must follow one process of 4 rows step for step.
    assert len(token_lengths(tiny_model, data)) == 1
    runs: dict[int, list[dict[str, Any]]] = {}
    summaries: dict[int, dict[str, Any]] = {}
    for n in (1, 2):
        rows: list[dict[str, Any]] = []
        checkpoints: list[int] = []
        cfg = LocalTraining(
            max_steps=8, learning_rate=1e-2, batch_size=4, patience=100, processes=n
        )
        summaries[n] = train(
            data,
            tmp_path / f"adapter-{n}",
            cfg,
            base_model=str(tiny_model),
            checkpoint_dir=tmp_path / "checkpoints" / f"run-{n}",
            on_log=rows.append,
            on_checkpoint=checkpoints.append,
        )
        runs[n] = rows
        # Reported once each (rank 0 only), as they came: every step, every evaluation.
        assert [r["step"] for r in rows if "loss" in r] == list(range(1, 9))
        assert [r["step"] for r in rows if "eval_loss" in r] == list(range(0, 9))
        assert checkpoints == list(range(1, 9))
    assert summaries[1]["processes"] == 1 and summaries[2]["processes"] == 2
    assert summaries[2]["steps"] == 8 and not summaries[2]["cancelled"]
    for one, two in zip(runs[1], runs[2], strict=True):
        assert one["step"] == two["step"]
        for key in ("loss", "eval_loss"):
            if key in one:
                assert two[key] == pytest.approx(one[key], abs=1e-4), (key, one, two)
    assert runs[2][-1]["eval_loss"] < runs[2][0]["eval_loss"] - 0.5  # it learned
    w1, w2 = adapter_weights(tmp_path / "adapter-1"), adapter_weights(tmp_path / "adapter-2")
    assert w1.keys() == w2.keys()
    # The same up to float32 summation order (two half-batch means averaged vs one mean),
    # which Adam's normalised steps carry into the weights: measured 3e-6 to 2e-5 with
    # weights up to 0.12, depending on the tiny model's build.
    assert max(float((w1[k] - w2[k]).abs().max()) for k in w1) < 1e-4
    # One adapter, in vLLM's layout; the launch's own files are gone, no rank is left.
    assert sorted(p.name for p in (tmp_path / "adapter-2").iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["run-1", "run-2"]
    assert training_processes(tmp_path) == []


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_machines_train_like_one_machine_with_both_processes(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two "machines" on this one, each with one process, as a multi-node operator
    describes them (torchrun's PET_* variables); the second joins with
    ``retrain join-training``. The result is the one-process training of the same rows."""
    import subprocess
    import sys

    from flywheel_stack import free_port

    data = order_dataset(tmp_path / "data")
    launch_dir = tmp_path / "shared" / "launch"
    nodes = {
        "PET_NNODES": "2",
        "PET_MASTER_ADDR": "127.0.0.1",
        "PET_MASTER_PORT": str(free_port()),
        "FLYWHEEL_LAUNCH_DIR": str(launch_dir),
    }
    second = subprocess.Popen(
        [sys.executable, "-m", "retrain", "join-training"],
        env={**os.environ, **nodes, "PET_NODE_RANK": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        cfg = LocalTraining(max_steps=4, learning_rate=1e-2, batch_size=4, patience=100)
        one = train(
            data,
            tmp_path / "adapter-1",
            cfg,
            base_model=str(tiny_model),
            checkpoint_dir=tmp_path / "checkpoints" / "one",
        )
        for name, value in {**nodes, "PET_NODE_RANK": "0"}.items():
            monkeypatch.setenv(name, value)
        rows: list[dict[str, Any]] = []
        two = train(
            data,
            tmp_path / "adapter-2",
            cfg,
            base_model=str(tiny_model),
            checkpoint_dir=tmp_path / "checkpoints" / "two",
            on_log=rows.append,
        )
        out, _ = second.communicate(timeout=120)
    finally:
        if second.poll() is None:
            second.kill()
            second.wait()
    assert second.returncode == 0, out
    assert one["processes"] == 1 and two["processes"] == 2 and two["steps"] == 4
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]
    assert two["eval_loss_last"] == pytest.approx(one["eval_loss_last"], abs=1e-4)
    w1, w2 = adapter_weights(tmp_path / "adapter-1"), adapter_weights(tmp_path / "adapter-2")
    assert max(float((w1[k] - w2[k]).abs().max()) for k in w1) < 1e-5
    assert not launch_dir.exists()  # the spec is gone: no later join trains it again


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_processes_stop_together_when_asked_and_leave_no_process(
    tiny_model: Path, tmp_path: Path
) -> None:
    data = order_dataset(tmp_path / "data")
    steps: list[int] = []
    cfg = LocalTraining(max_steps=5000, learning_rate=1e-3, batch_size=4, processes=2)
    summary = train(
        data,
        tmp_path / "adapter",
        cfg,
        base_model=str(tiny_model),
        checkpoint_dir=tmp_path / "checkpoints" / "run",
        on_log=lambda r: steps.append(r["step"]),
        should_stop=lambda: len(steps) >= 5,
    )
    assert summary["cancelled"] and summary["processes"] == 2
    assert summary["steps"] < 1000
    assert training_processes(tmp_path) == []


def test_sharding_and_qlora_are_refused_on_a_machine_without_gpus() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: nothing is refused")
    (fsdp,) = problems(LocalTraining(processes=2, distributed="fsdp"))
    assert "fsdp shards the model between GPUs and there is none here" in fsdp
    assert "quietly run as DDP" in fsdp
    assert problems(LocalTraining(processes=2, distributed="deepspeed"))
    assert problems(LocalTraining(processes=2)) == []  # DDP over gloo works on CPU
    (qlora,) = problems(LocalTraining(quantization="4bit"))
    assert "4bit (QLoRA) needs a CUDA GPU and there is none here" in qlora
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        train(
            Path("/nonexistent"),
            Path("/nonexistent"),
            LocalTraining(quantization="4bit"),
            base_model="x",
            checkpoint_dir=Path("/nonexistent"),
        )


def test_the_batch_must_split_evenly_between_processes() -> None:
    with pytest.raises(ValidationError, match="does not split evenly between 3 processes"):
        LocalTraining(batch_size=4, processes=3)


def no_gpu() -> bool:
    import torch

    return not torch.cuda.is_available()


@pytest.mark.vllm
@pytest.mark.timeout(600)
def test_retrain_run_in_two_processes_registers_one_canary_that_learned(
    gateway: GatewayProcess,
    vllm: VLLMServer,
    redis_server: RedisProcess,
    tiny_model: Path,
    tmp_path: Path,
) -> None:
    exp, config = rated_experiment(gateway, tmp_path, tiny_model)
    run = retrain(config, "run", "--experiment", exp, "--processes", "2")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "is a canary of" in run.stdout
    (job,) = [
        j
        for j in JobStore(redis.Redis.from_url(redis_server.url), keys.PLAIN_KEYSPACE).list(200)
        if j["experiment"] == exp
    ]
    assert job["status"] == "registered" and job["training"]["processes"] == 2
    steps = [row["step"] for row in job["loss"] if "loss" in row]
    assert steps == list(range(1, job["training"]["steps"] + 1))  # rank 0 alone reported
    # One adapter written, one model registered, and it answers a trained correction.
    adapters = [p for p in (tmp_path / "adapters").iterdir() if not p.name.startswith(".")]
    assert [p.name for p in adapters] == [job["model_name"]]
    models = httpx.get(f"{gateway.url}/admin/models", headers=ADMIN).json()["data"]
    assert [m["id"] for m in models if m["id"].startswith(exp)] == [job["model_name"]]
    assert answers_a_trained_correction(gateway, exp, tmp_path)


@pytest.mark.vllm
def test_qlora_and_an_uneven_split_are_refused_before_anything_is_consumed(
    gateway: GatewayProcess,
    vllm: VLLMServer,
    redis_server: RedisProcess,
    tiny_model: Path,
    tmp_path: Path,
) -> None:
    if not no_gpu():
        pytest.skip("this machine has a GPU: QLoRA is not refused")
    exp, config = rated_experiment(gateway, tmp_path, tiny_model, quantization="4bit")
    refused = retrain(config, "run", "--experiment", exp)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "nothing was consumed" in refused.stderr
    assert "retrain.local.quantization: 4bit (QLoRA) needs a CUDA GPU" in refused.stderr
    uneven = retrain(
        config_for(gateway, tmp_path, tiny_model), "run", "--experiment", exp, "--processes", "3"
    )
    assert uneven.returncode == 2
    assert "batch_size 4 does not split evenly between 3 processes" in uneven.stderr
    assert not (tmp_path / "datasets" / exp).exists()
    jobs = JobStore(redis.Redis.from_url(redis_server.url), keys.PLAIN_KEYSPACE).list(200)
    assert not [j for j in jobs if j["experiment"] == exp]


def test_export_copies_an_adapter_and_refuses_a_used_directory(
    tiny_model: Path, tmp_path: Path
) -> None:
    adapter = make_test_adapter(tiny_model, tmp_path / "adapter")
    copied = retrain_cli("export", str(adapter), "--out", str(tmp_path / "copy"))
    assert copied.returncode == 0, copied.stderr
    assert (tmp_path / "copy" / "adapter_config.json").is_file()
    mode = (tmp_path / "copy" / "adapter_model.safetensors").stat().st_mode
    assert stat.S_IMODE(mode) == 0o644
    again = retrain_cli("export", str(adapter), "--merged", "--out", str(tmp_path / "copy"))
    assert again.returncode == 2 and "not empty" in again.stderr
    assert not (tmp_path / "copy" / "config.json").exists()  # nothing merged into it


def retrain_cli(*args: str) -> Any:
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "retrain", *args], capture_output=True, text=True, timeout=300
    )


def chat(base_url: str, model: str, question: str) -> str:
    with openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0) as client:
        answer = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": question}],
            temperature=0,
            max_tokens=24,
        )
    return answer.choices[0].message.content or ""


@pytest.mark.vllm
@pytest.mark.timeout(600)
def test_a_merged_export_is_served_by_vllm_as_a_plain_model_and_answers_like_the_adapter(
    gateway: GatewayProcess, vllm: VLLMServer, tiny_model: Path, tmp_path: Path
) -> None:
    adapter = make_test_adapter(tiny_model, tmp_path / "adapter", seed=7)
    name = f"export-{uuid.uuid4().hex[:6]}"
    body = {"name": name, "upstream": "local", "model": name, "adapter_path": str(adapter)}
    registered = httpx.post(f"{gateway.url}/admin/models", headers=ADMIN, json=body, timeout=60)
    assert registered.is_success, registered.text
    try:
        config = config_for(gateway, tmp_path, tiny_model)
        out = tmp_path / "merged"
        exported = retrain_cli(
            "export", name, "--merged", "--out", str(out), "--config", str(config)
        )
        assert exported.returncode == 0, exported.stdout + exported.stderr
        assert (out / "config.json").is_file() and not (out / "adapter_config.json").exists()
        for path in out.iterdir():
            assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
        questions = [f"Can I return {item}?" for item in ("shoes", "hats", "a lamp")]
        with VLLMServer(
            out, log_path=tmp_path / "vllm-merged.log", served_model_name="merged"
        ) as plain:
            merged = [chat(plain.base_url, "merged", q) for q in questions]
        with_adapter = [chat(vllm.base_url, name, q) for q in questions]
        base = [chat(vllm.base_url, "base", q) for q in questions]
        assert merged == with_adapter
        assert with_adapter != base  # the adapter changes the answers: the merge carried it
    finally:
        httpx.delete(f"{gateway.url}/admin/models/{name}", headers=ADMIN, timeout=60)


@pytest.mark.slow
def test_bench_train_measures_tokens_per_second_on_cpu(tmp_path: Path) -> None:
    import subprocess
    import sys

    if not no_gpu():
        pytest.skip("a GPU machine: run bench/train there with the model shape of the README")

    out = tmp_path / "train-bench.json"
    argv = [sys.executable, "-m", "bench", "train", "--small", "--batch", "2", "--seq", "64"]
    argv += ["--steps", "2", "--warmup", "1", "--variants", "naive,liger", "--out", str(out)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "| naive |" in done.stdout and "tokens/s" in done.stdout
    assert "liger: skipped" in done.stderr  # a GPU-only kernel is skipped, not faked
    (naive,) = json.loads(out.read_text())["results"]
    assert naive["variant"] == "naive" and naive["tokens_per_s"] > 0
    assert naive["loss"] > 0 and naive["mfu"] is None  # no known peak for a CPU


def test_local_dpo_measures_its_validation_loss_on_held_out_pairs(
    tiny_model: Path, tmp_path: Path
) -> None:
    from .helpers.training import write_dataset

    data = write_dataset(tmp_path / "data")
    pairs = (data / "preference.jsonl").read_text().splitlines()
    (data / "preference.jsonl").write_text("\n".join(pairs[:2]) + "\n")
    (data / "preference_validation.jsonl").write_text("\n".join(pairs[2:]) + "\n")
    rows: list[dict[str, Any]] = []
    cfg = LocalTraining(method="dpo", max_steps=4, learning_rate=1e-3, batch_size=2)
    summary = train(
        data,
        tmp_path / "adapter",
        cfg,
        base_model=str(tiny_model),
        checkpoint_dir=tmp_path / "checkpoints",
        on_log=rows.append,
    )
    evals = [r for r in rows if "eval_loss" in r]
    assert [r["step"] for r in evals] == [0, 1, 2, 3, 4]
    assert evals[0]["eval_loss"] == pytest.approx(0.6931, abs=1e-3)  # ln 2: no preference yet
    assert summary["eval_loss_last"] < summary["eval_loss_first"]


def test_a_dead_runs_openai_job_is_cancelled_and_its_local_adapters_removed(
    redis_server: RedisProcess, tmp_path: Path, check_schema: Any
) -> None:
    """A run that died leaves a job unfinished; the next run's recovery cancels its OpenAI
    job (else it runs on, billing for a result no one waits for) and removes the adapter
    directory of a dead local job, unless told to keep it."""
    import socket

    from gateway.core.config import load_settings
    from retrain.cycle import recover
    from retrain.gateway_client import Gateway
    from retrain.openai_ft import OpenAIProvider

    from .helpers.training import write_dataset
    from .openai_ft_server import FineTuningServer

    server = FineTuningServer().start()
    db = own_db(redis_server, RECOVERY_DB)
    try:

        def settings(keep: bool) -> Any:
            local = {"adapter_dir": str(tmp_path / "adapters"), "keep_failed_adapters": keep}
            path = openai_config(tmp_path, db, server.base_url, local=local)
            return load_settings(path, schema=RetrainSettings)

        cfg = settings(keep=False)
        remote = OpenAIProvider(cfg.retrain.openai)
        remote_id = remote.launch(write_dataset(tmp_path / "data"), suffix="x", seed=0)
        store = JobStore(redis.Redis.from_url(db), keys.PLAIN_KEYSPACE)
        dead = f"{socket.gethostname()}:{2**22 + 12345}"  # above pid_max: no such process
        exp = f"recover-{uuid.uuid4().hex[:6]}"
        remote_job = store.create(
            experiment=exp,
            provider="openai",
            status="running",
            runner=dead,
            provider_job=remote_id,
        )
        local_jobs = [
            store.create(experiment=exp, provider="local", status="running", runner=dead)
            for _ in range(2)
        ]
        dirs = [
            tmp_path / "adapters" / f"{exp}-{j['id'].removeprefix('ftjob-')}" for j in local_jobs
        ]
        for d in dirs:
            d.mkdir(parents=True)
            (d / "adapter_config.json").write_text("{}")
        # The first recovery keeps adapters (as configured); it finds every dead job.
        first = recover(store, Gateway(cfg), exp, settings(keep=True))
        assert sorted(first) == sorted([remote_job["id"], *(j["id"] for j in local_jobs)])
        assert all(d.exists() for d in dirs)
        for job in local_jobs:  # as if another run had died with them
            store.update(job["id"], status="running")
        recover(store, Gateway(cfg), exp, cfg)
        assert not any(d.exists() for d in dirs)
    finally:
        server.stop()
    cancels = [r for r in server.requests if r["path"].endswith("/cancel")]
    assert [c["path"] for c in cancels] == [f"/fine_tuning/jobs/{remote_id}/cancel"]
    job = store.get(remote_job["id"])
    assert job is not None and job["status"] == "failed"
    assert f"its OpenAI job {remote_id} was cancelled" in job["error"]
    for schema, body in server.responses:
        check_schema(schema, body)


def test_a_dead_runs_openai_job_that_succeeded_is_adopted_and_one_still_running_cancelled(
    redis_server: RedisProcess, tmp_path: Path, check_schema: Any
) -> None:
    """The next run after a crash keeps what was paid for: of two dead runs' OpenAI jobs,
    the one that succeeded meanwhile is handed to this run with its ``ft:`` model (not
    cancelled, not failed), the one still running is cancelled; a third that succeeded
    waits for the run after (one turn per run)."""
    import os
    import socket

    from gateway.core.config import load_settings
    from retrain.cycle import recover
    from retrain.gateway_client import Gateway
    from retrain.openai_ft import OpenAIProvider

    from .helpers.training import write_dataset
    from .openai_ft_server import FineTuningServer

    server = FineTuningServer().start()
    db = own_db(redis_server, RECOVERY_DB)
    try:
        cfg = load_settings(openai_config(tmp_path, db, server.base_url), schema=RetrainSettings)
        remote = OpenAIProvider(cfg.retrain.openai)
        data = write_dataset(tmp_path / "data")
        done_first, running, done_later = (
            remote.launch(data, suffix=s, seed=0) for s in ("a", "b", "c")
        )
        for remote_id in (done_first, done_later):  # the hosted training ends meanwhile
            while remote.status(remote_id).status != "succeeded":
                pass
        store = JobStore(redis.Redis.from_url(db), keys.PLAIN_KEYSPACE)
        dead = f"{socket.gethostname()}:{2**22 + 12345}"  # above pid_max: no such process
        exp = f"adopt-{uuid.uuid4().hex[:6]}"

        def job(remote_id: str) -> dict[str, Any]:
            return store.create(
                experiment=exp,
                provider="openai",
                status="running",
                runner=dead,
                provider_job=remote_id,
                dataset_id="v1",
                dataset_path=str(data),
            )

        later, cancelled, first = job(done_later), job(running), job(done_first)
        adopted: list[dict[str, Any]] = []
        failed = recover(store, Gateway(cfg), exp, cfg, adopt=adopted)
        cancels = [r["path"] for r in server.requests if r["path"].endswith("/cancel")]
        # the newest dead job first: it is the one adopted
        assert [j["id"] for j in adopted] == [first["id"]] and failed == [cancelled["id"]]
        mine = store.get(first["id"])
        assert mine is not None and mine["status"] == "running" and mine["error"] is None
        assert mine["result_model"] == server.jobs[done_first]["fine_tuned_model"]
        assert mine["result_model"].startswith("ft:")
        assert mine["runner"] == f"{socket.gethostname()}:{os.getpid()}"
        left = store.get(later["id"])
        assert left is not None and left["status"] == "running" and left["runner"] == dead
        stopped = store.get(cancelled["id"])
        assert stopped is not None and stopped["status"] == "failed"
        assert f"its OpenAI job {running} was cancelled" in stopped["error"]
        assert cancels == [f"/fine_tuning/jobs/{running}/cancel"]
        # without a run to hand it to (recover alone), a succeeded job is recorded as such
        assert recover(store, Gateway(cfg), exp, cfg) == [later["id"]]
        ended = store.get(later["id"])
        assert ended is not None and f"{done_later} had already ended (succeeded)" in ended["error"]
    finally:
        server.stop()
    assert [r["path"] for r in server.requests if r["path"].endswith("/cancel")] == cancels
    for schema, body in server.responses:
        check_schema(schema, body)


def own_db(redis_server: RedisProcess, db: int) -> str:
    """A Redis database of this test's own (the stand-in's job ids repeat between tests)."""
    url = redis_server.url.rsplit("/", 1)[0] + f"/{db}"
    redis.Redis.from_url(url).flushdb()
    return url


def openai_config(tmp_path: Path, redis_url: str, openai_url: str, **retrain: Any) -> Path:
    """A config whose retrain.openai is the stand-in server (the gateway is never asked)."""
    import yaml

    doc = {
        "redis_url": redis_url,
        "auth": {"api_keys": [{"key": "sk-test-0123456789abcdef", "name": "t"}]},
        "upstreams": {"local": {"kind": "vllm", "base_url": "http://127.0.0.1:9/v1"}},
        "models": {"base": {"upstream": "local", "model": "base"}},
        "retrain": {
            "gateway_url": "http://127.0.0.1:9",
            "openai": {"base_url": openai_url, "api_key": "sk-test"},
            **retrain,
        },
    }
    path = tmp_path / f"flywheel-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_retrain_jobs_lists_openais_jobs_with_the_job_that_tracks_each(
    redis_server: RedisProcess, tmp_path: Path, check_schema: Any
) -> None:
    import subprocess
    import sys

    from gateway.core.config import load_settings
    from retrain.openai_ft import OpenAIProvider

    from .helpers.training import write_dataset
    from .openai_ft_server import FineTuningServer

    server = FineTuningServer().start()
    try:
        db = own_db(redis_server, REMOTE_JOBS_DB)
        config = openai_config(tmp_path, db, server.base_url)
        remote = OpenAIProvider(load_settings(config, schema=RetrainSettings).retrain.openai)
        data = write_dataset(tmp_path / "data")
        ours, theirs = (remote.launch(data, suffix=s, seed=0) for s in ("ours", "theirs"))
        store = JobStore(redis.Redis.from_url(db), keys.PLAIN_KEYSPACE)
        job = store.create(experiment="e", provider="openai", provider_job=ours)
        listed = subprocess.run(
            [sys.executable, "-m", "retrain", "jobs", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "COLUMNS": "250"},
        )
    finally:
        server.stop()
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    (mine,) = [line for line in lines if ours in line]
    (other,) = [line for line in lines if theirs in line]
    assert job["id"] in mine and "not tracked" in other
    assert any(r["path"] == "/fine_tuning/jobs" and r["method"] == "GET" for r in server.requests)
    for schema, body in server.responses:
        check_schema(schema, body)
