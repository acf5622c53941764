"""``retrain run``: one turn of the flywheel for an experiment.

build the dataset → (skip if there is nothing new or too little) → train (``local``
LoRA, or ``openai``) → stage the candidate in the gateway (registered, reachable only
by its name, in no experiment) → evaluate it against the control on the held-out test
split → add it as a canary arm at ``canary_share``, or unregister it and say why.

Safe from cron: a Redis lock per experiment (a second run exits with code 5); a job
left unfinished by a run that died is marked failed and its staged model unregistered
by the next run, so a crash never leaves a half-registered model. Every step is
recorded in the job (``retrain/jobs.py``).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from gateway import keys
from gateway.config import Settings

from . import evaluate
from .dataset import BELOW_MINIMUM, BUSY, OK, OVER_COST_CAP, Builder, Lock, alive, crash_point
from .gateway_client import Gateway
from .jobs import FINAL, JobStore, record_run

FAILED, REJECTED = 1, 6


@dataclass
class RunResult:
    exit_code: int
    message: str
    job: dict[str, Any] | None = None


def recover(store: JobStore, gateway: Gateway, experiment: str) -> list[str]:
    """Fail the unfinished jobs of runs that died; unregister their staged models."""
    cleaned = []
    host = socket.gethostname()
    for job in store.list(200):
        if job.get("experiment") != experiment or job["status"] in FINAL:
            continue
        runner_host, _, pid = str(job.get("runner", "")).rpartition(":")
        if runner_host == host and pid.isdigit() and alive(int(pid)):
            continue  # still running (the lock would have stopped us anyway)
        if job.get("model_name") and job["status"] in ("staging", "evaluating"):
            gateway.unregister(job["model_name"])  # staged, never a canary: take it back
        why = f"interrupted while {job['status']}: the run that owned it died"
        store.update(job["id"], status="failed", error=why)
        cleaned.append(job["id"])
    return cleaned


def run(
    client: redis.Redis,
    settings: Settings,
    experiment: str,
    *,
    provider: str | None = None,
    log: Callable[[str], None] = print,
) -> RunResult:
    lock = Lock(client, keys.run_lock(experiment))
    holder = lock.acquire()
    if holder is not None:
        return RunResult(BUSY, f"another run of '{experiment}' holds the lock ({holder})")
    try:
        record_run(client, experiment, started=time.time())
        try:
            result = _run(client, settings, experiment, provider or settings.retrain.provider, log)
        except Exception:
            record_run(client, experiment, finished=time.time(), outcome="failed",
                       exit_code=FAILED)  # fmt: skip
            raise
        now = time.time()
        record_run(client, experiment, finished=now, outcome=outcome(result),
                   exit_code=result.exit_code)  # fmt: skip
        if result.exit_code in (OK, BELOW_MINIMUM, REJECTED):  # ran as it should
            record_run(client, experiment, last_success=now)
        return result
    finally:
        lock.release()


def outcome(result: RunResult) -> str:
    """The run's end as ``flywheel_retrain_last_run_outcome`` names it."""
    if result.exit_code == OK:
        status = (result.job or {}).get("status")
        return {"registered": "canary", "cancelled": "cancelled"}.get(str(status), "nothing_new")
    return {BELOW_MINIMUM: "below_minimum", REJECTED: "rejected",
            OVER_COST_CAP: "over_cost_cap"}.get(result.exit_code, "failed")  # fmt: skip


def _run(
    client: redis.Redis, settings: Settings, experiment: str, provider: str,
    log: Callable[[str], None],
) -> RunResult:  # fmt: skip
    cfg = settings.retrain
    store, gateway = JobStore(client), Gateway(settings)
    for job_id in recover(store, gateway, experiment):
        log(f"cleaned up {job_id}: its run had died")

    built = Builder(client, settings, experiment).run()
    if built.status in ("nothing-new", "below-minimum") or built.exit_code != OK:
        log(f"skip: {built.message}")
        code = OK if built.status == "nothing-new" else built.exit_code
        return RunResult(code if built.status != "below-minimum" else BELOW_MINIMUM,
                         f"skipped: {built.message}")  # fmt: skip
    assert built.path is not None
    dataset_id = built.manifest["id"]
    job = store.create(experiment=experiment, provider=provider, dataset_id=dataset_id,
                       dataset_path=str(built.path), dataset_parent=built.manifest["parent"],
                       runner=f"{socket.gethostname()}:{os.getpid()}")  # fmt: skip
    record_run(client, experiment, job=job["id"], dataset=dataset_id,
               examples=built.manifest["counts"])  # fmt: skip
    name = f"{experiment}-{job['id'].removeprefix('ftjob-')}"
    log(f"{job['id']}: training a {provider} candidate on {dataset_id}")
    try:
        body = _train(store, job, name, settings, provider, built.path, log)
        if body is None:
            return RunResult(OK, f"{job['id']} was cancelled", store.get(job["id"]))
        body["lineage"] = {"job": job["id"], "provider": provider, "dataset": dataset_id,
                           "dataset_parent": built.manifest["parent"],
                           "experiment": experiment}  # fmt: skip
        store.update(job["id"], status="staging", model_name=name)  # before: so it is undone
        gateway.register(body)
        store.update(job["id"], status="evaluating")
        crash_point("after-stage")

        state = gateway.experiment(experiment)
        spec = state["spec"]
        control = spec.get("control") or spec["arms"][0]["model"]
        result = evaluate.gate_dataset(built.path, gateway.ask, control, name, cfg.eval)
        log(f"{job['id']}: evaluation: {result['reason']}")
        if not result["passed"]:
            gateway.unregister(name)
            store.update(job["id"], status="rejected", evaluation=result, model_name=None,
                         error=f"not registered: {result['reason']}")  # fmt: skip
            return RunResult(evaluate.OUTCOME_CODES[result["outcome"]],
                             f"{name} not registered: {result['reason']}",
                             store.get(job["id"]))  # fmt: skip
        others = sum(a["weight"] for a in spec["arms"])
        weight = round(others * cfg.canary_share / (1 - cfg.canary_share), 6)
        gateway.add_arm(experiment, name, weight)
        job = store.update(job["id"], status="registered", evaluation=result)
        return RunResult(OK, f"{name} is a canary of '{experiment}' at "
                         f"{cfg.canary_share:.0%} ({result['reason']})", job)  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - recorded in the job, then reported
        current = store.get(job["id"]) or {}
        if current.get("model_name"):
            try:
                gateway.unregister(current["model_name"])
            except RuntimeError as cleanup:
                log(f"could not unregister {current['model_name']}: {cleanup}")
        store.update(job["id"], status="failed", error=f"{type(exc).__name__}: {exc}")
        return RunResult(FAILED, f"{job['id']} failed: {exc}", store.get(job["id"]))


def _train(
    store: JobStore, job: dict[str, Any], name: str, settings: Settings, provider: str,
    dataset: Any, log: Callable[[str], None],
) -> dict[str, Any] | None:  # fmt: skip
    """Train; the body that registers the result in the gateway (None: cancelled)."""
    cfg = settings.retrain
    store.update(job["id"], status="running")

    def cancelled() -> bool:
        current = store.get(job["id"]) or {}
        return current.get("status") == "cancelling"

    if provider == "local":
        from .local_train import train

        if not cfg.local.base_model:
            raise ValueError("retrain.local.base_model is not set: the model vLLM serves")
        out = (cfg.local.adapter_dir / name).resolve()

        def on_log(row: dict[str, Any]) -> None:
            store.update(job["id"], loss=[row])
            crash_point("training")

        summary = train(dataset, out, cfg.local, base_model=cfg.local.base_model,
                        on_log=on_log, should_stop=cancelled)  # fmt: skip
        store.update(job["id"], training=summary, adapter_path=str(out),
                     params=cfg.local.model_dump(mode="json"))  # fmt: skip
        losses = (
            f"validation loss {summary['eval_loss_first']:.3f} → {summary['eval_loss_last']:.3f}"
            if summary["eval_loss_first"] is not None
            else "no validation split"
        )
        log(f"{job['id']}: trained {summary['steps']} steps on {summary['device']} "
            f"(train loss {summary['train_loss']:.3f}; {losses})")  # fmt: skip
        if summary["cancelled"]:
            store.update(job["id"], status="cancelled")
            return None
        return {"name": name, "upstream": cfg.local.upstream, "model": name,
                "adapter_path": str(out)}  # fmt: skip

    from .openai_ft import OpenAIProvider

    remote = OpenAIProvider(cfg.openai)
    remote_id = remote.launch(dataset, suffix=name, seed=cfg.local.seed)
    store.update(job["id"], provider_job=remote_id, params=cfg.openai.model_dump(mode="json"))
    log(f"{job['id']}: OpenAI job {remote_id}")

    def on_event(event: dict[str, Any]) -> None:
        store.update(job["id"], events=[event])

    outcome = remote.wait(remote_id, should_stop=cancelled, on_event=on_event)
    if outcome["status"] == "cancelled":
        store.update(job["id"], status="cancelled")
        return None
    if outcome["status"] != "succeeded":
        raise RuntimeError(f"OpenAI job {remote_id} {outcome['status']}: {outcome['error']}")
    store.update(job["id"], result_model=outcome["model"])
    return {"name": name, "upstream": cfg.openai.upstream, "model": outcome["model"]}
