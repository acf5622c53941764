"""``retrain run``: one turn of the flywheel for an experiment.

preflight (every check that needs no training: exit 2, nothing consumed) → build the
dataset (new ratings become the next version; too few: exit 4) → pick the version to
train: the latest, unless it was already trained to an outcome → train (``local``
LoRA, or ``openai``) → stage the candidate in the gateway (registered, reachable only
by its name, in no experiment) → evaluate it against the control on the held-out test
split → add it as a canary arm at ``canary_share`` (outcome ``registered``), or
unregister it and say why (outcome ``rejected``).

**A failed turn is retried, not forgotten.** Ratings become dataset versions, and a
version is done only when it was trained to an outcome (``fw:retrain:trained:{exp}``).
Whatever else ends a run — a crash, ``kill -9``, a training error, the gateway down at
registration — leaves the latest version untrained, and the next run trains it (a
local training resumes from its last checkpoint). A rejected version is not trained
again unchanged; its examples stay in the next version, which new ratings make.

Safe from cron: a Redis lock per experiment (a second run exits with code 5); a job
left unfinished by a run that died is marked failed and its staged model unregistered
by the next run, so a crash never leaves a half-registered model. **A hosted job is
recovered, not bought twice:** when the dead run's OpenAI fine-tuning job has
succeeded meanwhile, the next run adopts it — registers its ``ft:`` model, evaluates it
on its own dataset version's held-out split and adds it as a canary, as the dead run
would have — and trains nothing new; one still running is cancelled (no run waits for
it), one that failed or was cancelled is recorded as such. Every step is recorded in
the job (``retrain/jobs.py``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import redis

from gateway.core import keys, paths
from gateway.core.documents import Manifest
from gateway.core.locks import Lock, alive
from gateway.core.records import JobRecord, JobStatus, RunOutcome

from . import evaluate, preflight, tokens
from .config import RetrainSettings
from .dataset import Builder
from .errors import UsageError
from .exit_codes import ExitCode
from .faults import crash_point
from .gateway_client import Gateway
from .jobs import FINAL, JobStore, dataset_outcome, record_outcome, record_run

OK, FAILED, USAGE, REJECTED = ExitCode.OK, ExitCode.ERROR, ExitCode.USAGE, ExitCode.REJECTED
BELOW_MINIMUM, BUSY, OVER_COST_CAP = (
    ExitCode.BELOW_MINIMUM,
    ExitCode.BUSY,
    ExitCode.OVER_COST_CAP,
)


@dataclass(frozen=True)
class Distillation:
    """A distillation run: the examples are ``teacher``'s answers (``retrain build
    --distill``), the trained model is gated against the teacher with
    ``retrain.distill.margin`` (a not-worse test) and canaried beside it."""

    teacher: str


@dataclass
class RunResult:
    exit_code: int
    message: str
    job: JobRecord | None = None


def adapter_dir_of(settings: RetrainSettings, job: JobRecord) -> Path:
    """Where a local job writes its adapter: named after the job, never reused."""
    name = f"{job['experiment']}-{job['id'].removeprefix('ftjob-')}"
    return paths.under(settings.retrain.local.adapter_dir, name, param="experiment").resolve()


def drop_adapter(settings: RetrainSettings, job: JobRecord) -> None:
    """Remove the adapter of a job that ended rejected, failed or cancelled, unless
    ``retrain.local.keep_failed_adapters``; only ever a directory of ``adapter_dir``."""
    local = settings.retrain.local
    if job.get("provider") != "local" or local.keep_failed_adapters:
        return
    path = adapter_dir_of(settings, job)
    if path.parent == local.adapter_dir.resolve():
        shutil.rmtree(path, ignore_errors=True)


def stop_remote(settings: RetrainSettings, remote_id: str) -> str:
    """Cancel the OpenAI job of a run that died (it would go on running and billing for a
    result no run waits for); what was done, for the job's error."""
    from .openai_ft import FINAL as REMOTE_FINAL
    from .openai_ft import OpenAIProvider

    try:
        remote = OpenAIProvider(settings.retrain.openai)
        status = str(remote.status(remote_id).status)
        if status in REMOTE_FINAL:
            return f"its OpenAI job {remote_id} had already ended ({status})"
        remote.cancel(remote_id)
    except Exception as exc:  # noqa: BLE001 - reported in the job
        return f"its OpenAI job {remote_id} could not be cancelled ({exc}): cancel it at OpenAI"
    return f"its OpenAI job {remote_id} was cancelled"


def succeeded_remote(settings: RetrainSettings, remote_id: str) -> str | None:
    """The ``ft:`` model of an OpenAI job that succeeded; None: it did not (yet), or
    OpenAI could not be asked (then :func:`stop_remote` says so)."""
    from .openai_ft import OpenAIProvider

    try:
        job = OpenAIProvider(settings.retrain.openai).status(remote_id)
    except Exception:  # noqa: BLE001 - stop_remote asks again and reports it
        return None
    model = getattr(job, "fine_tuned_model", None)
    return str(model) if job.status == "succeeded" and model else None


ADOPTABLE = ("queued", "running", "staging", "evaluating")  # not one a person cancelled


def recover(
    store: JobStore,
    gateway: Gateway,
    experiment: str,
    settings: RetrainSettings | None = None,
    *,
    adopt: list[JobRecord] | None = None,
) -> list[str]:
    """Fail the unfinished jobs of runs that died; unregister their staged models (and,
    with ``settings``, remove their adapters). Returns the ids of the jobs failed.

    With ``adopt`` (a list, filled here), the first dead job whose OpenAI job succeeded
    meanwhile is not failed but handed over: it now belongs to this process (``runner``)
    with its ``result_model`` set, for the caller to register, evaluate and canary. Any
    other such job is left as it is, for a later run to adopt.
    """
    cleaned = []
    host = socket.gethostname()
    for job in store.list(200):
        if job.get("experiment") != experiment or job["status"] in FINAL:
            continue
        runner_host, _, pid = str(job.get("runner", "")).rpartition(":")
        if runner_host == host and pid.isdigit() and alive(int(pid)):
            continue  # still running (the lock would have stopped us anyway)
        remote_id = job.get("provider_job") if job.get("provider") == "openai" else None
        model = (
            succeeded_remote(settings, str(remote_id))
            if adopt is not None
            and settings is not None
            and remote_id
            and job["status"] in ADOPTABLE
            else None
        )
        if model is not None and adopt:
            continue  # one adoption per run: the next run takes this one
        staged = job.get("model_name")
        if staged and job["status"] in ("staging", "evaluating"):
            gateway.unregister(staged)  # staged, never a canary: take it back
        if model is not None and adopt is not None:
            adopt.append(
                store.update(
                    job["id"],
                    status="running",
                    runner=f"{host}:{os.getpid()}",
                    result_model=model,
                    model_name=None,
                    adopted_from=job.get("runner"),
                )
            )
            continue
        why = f"interrupted while {job['status']}: the run that owned it died"
        if settings is not None and remote_id:
            why += "; " + stop_remote(settings, str(remote_id))
        store.update(job["id"], status="failed", error=why)
        if settings is not None:
            drop_adapter(settings, job)
        cleaned.append(job["id"])
    return cleaned


def run(
    client: redis.Redis,
    ks: keys.Keyspace,
    settings: RetrainSettings,
    experiment: str,
    *,
    provider: str | None = None,
    log: Callable[[str], None] = print,
    distill: Distillation | None = None,
    workload: str | None = None,
) -> RunResult:
    provider = provider or settings.retrain.provider
    lock = Lock(client, ks.run_lock(experiment))
    holder = lock.acquire()
    if holder is not None:
        return RunResult(BUSY, f"another run of '{experiment}' holds the lock ({holder})")
    try:
        problems, base_model = preflight.check(settings, experiment, provider)
        if problems:
            return RunResult(
                USAGE,
                "preflight: nothing was consumed; fix this first:\n"
                + "\n".join(f"  - {p}" for p in problems),
            )
        record_run(client, ks, experiment, started=time.time())
        try:
            result = _run(
                client, ks, settings, experiment, provider, base_model, log, distill, workload
            )
        except Exception:
            record_run(
                client, ks, experiment, finished=time.time(), outcome="failed", exit_code=FAILED
            )
            raise
        now = time.time()
        record_run(
            client,
            ks,
            experiment,
            finished=now,
            outcome=outcome(result),
            exit_code=result.exit_code,
        )
        if result.exit_code in (OK, BELOW_MINIMUM, REJECTED):  # ran as it should
            record_run(client, ks, experiment, last_success=now)
        return result
    finally:
        lock.release()


def outcome(result: RunResult) -> RunOutcome:
    """The run's end as ``flywheel_retrain_last_run_outcome`` names it."""
    if result.exit_code == OK:
        status = (result.job or {}).get("status")
        if status == JobStatus.REGISTERED:
            return RunOutcome.CANARY
        return RunOutcome.CANCELLED if status == JobStatus.CANCELLED else RunOutcome.NOTHING_NEW
    ends: dict[int, RunOutcome] = {
        BELOW_MINIMUM: RunOutcome.BELOW_MINIMUM,
        REJECTED: RunOutcome.REJECTED,
        OVER_COST_CAP: RunOutcome.OVER_COST_CAP,
        ExitCode.COLLECT_MORE: RunOutcome.COLLECT_MORE,
    }
    return ends.get(result.exit_code, RunOutcome.FAILED)


@dataclass
class Trainable:
    """The dataset version a run trains: its directory and manifest."""

    path: Path
    manifest: Manifest

    @property
    def id(self) -> str:
        return self.manifest["id"]


def _to_train(
    client: redis.Redis,
    ks: keys.Keyspace,
    settings: RetrainSettings,
    experiment: str,
    log: Callable[[str], None],
    distill: Distillation | None = None,
    workload: str | None = None,
) -> RunResult | Trainable:
    """The dataset version this run trains, or why there is none."""
    teacher = distill.teacher if distill else None
    built = Builder(client, ks, settings, experiment, teacher=teacher, workload=workload).run()
    if built.status in ("below-minimum", "busy", "over-cost-cap") or built.exit_code != OK:
        log(f"skip: {built.message}")
        return RunResult(built.exit_code, f"skipped: {built.message}")
    assert built.path is not None  # the build wrote a version, or found the latest unchanged
    # The manifest as written (not rebuilt: with nothing new, the build's own would name
    # the version as its own parent); the examples are not read again.
    version = Trainable(built.path, orjson.loads((built.path / "manifest.json").read_bytes()))
    done = dataset_outcome(client, ks, experiment, version.id)
    if done is not None:
        return RunResult(
            OK,
            f"nothing new: {version.id} was already trained "
            f"({done['outcome']}, {done.get('job')}); new ratings make the next "
            "version",
        )
    if built.status == "nothing-new":
        log(f"{version.id} was never trained to an outcome: training it again")
    if evaluate.missing_examples(version.path, settings.retrain.eval):
        have = evaluate.test_count(version.path)
        return RunResult(
            ExitCode.COLLECT_MORE,
            f"{version.id}: "
            f"{evaluate.collect_more_reason(have, settings.retrain.eval)}; nothing "
            "was trained, and the next run retries with the new ratings",
        )
    return version


def _run(
    client: redis.Redis,
    ks: keys.Keyspace,
    settings: RetrainSettings,
    experiment: str,
    provider: str,
    base_model: str | None,
    log: Callable[[str], None],
    distill: Distillation | None = None,
    workload: str | None = None,
) -> RunResult:
    cfg = settings.retrain
    if distill is not None:
        try:
            Gateway(settings).teacher_experiment(experiment, distill.teacher, "student")
        except UsageError as exc:
            return RunResult(USAGE, str(exc))
    store, gateway = JobStore(client, ks), Gateway(settings)
    adopted: list[JobRecord] = []
    for job_id in recover(store, gateway, experiment, settings, adopt=adopted):
        log(f"cleaned up {job_id}: its run had died")

    if adopted:  # a dead run's hosted job succeeded: finish that turn, buy nothing new
        job = adopted[0]
        provider, dataset_path = "openai", Path(job["dataset_path"])
        dataset_id, parent = job["dataset_id"], job.get("dataset_parent")
        manifest = dataset_path / "manifest.json"
        counts = orjson.loads(manifest.read_bytes())["counts"] if manifest.exists() else None
        log(
            f"{job['id']}: adopted: its run had died, and its OpenAI job "
            f"{job['provider_job']} had succeeded ({job['result_model']}); not trained again"
        )
    else:
        version = _to_train(client, ks, settings, experiment, log, distill, workload)
        if isinstance(version, RunResult):
            return version
        dataset_id, parent = version.id, version.manifest["parent"]
        dataset_path, counts = version.path, version.manifest["counts"]
        job = store.create(
            experiment=experiment,
            provider=provider,
            dataset_id=dataset_id,
            dataset_path=str(version.path),
            dataset_parent=parent,
            runner=f"{socket.gethostname()}:{os.getpid()}",
        )
        log(f"{job['id']}: training a {provider} candidate on {dataset_id}")
    record_run(client, ks, experiment, job=job["id"], dataset=dataset_id, examples=counts)
    name = f"{experiment}-{job['id'].removeprefix('ftjob-')}"
    try:
        if adopted:
            _relay_remote_events(store, job, settings)
            body: dict[str, Any] | None = {
                "name": name,
                "upstream": cfg.openai.upstream,
                "model": job["result_model"],
            }
        else:
            body = _train(store, job, name, settings, provider, dataset_path, base_model, log)
        if body is None:
            return RunResult(OK, f"{job['id']} was cancelled", store.get(job["id"]))
        body["lineage"] = {
            "job": job["id"],
            "provider": provider,
            "dataset": dataset_id,
            "dataset_parent": parent,
            "experiment": experiment,
        }
        if distill is not None:
            body["lineage"]["teacher"] = distill.teacher
        if workload:
            body["lineage"]["workload"] = workload
        store.update(job["id"], status="staging", model_name=name)  # before: so it is undone
        gateway.register(body)
        store.update(job["id"], status="evaluating")
        crash_point("after-stage")

        state = gateway.experiment(experiment)
        spec = state["spec"]
        control = distill.teacher if distill else spec.get("control") or spec["arms"][0]["model"]
        gate = cfg.teacher_gate() if distill is not None else cfg.eval
        trained = (
            tokens.for_base_model(settings, base_model)
            if provider == "local"
            else tokens.openai(cfg.openai.base_model, cfg.tiktoken_encoding)
        )
        counter = tokens.for_models(settings, gateway.model, [control, name], {name: trained})
        log(f"{job['id']}: answer budgets counted by {counter.name}")
        result = evaluate.gate_dataset(
            dataset_path, gateway.ask, control, name, gate, tokens=counter
        )
        log(f"{job['id']}: evaluation: {result['reason']}")
        if not result["passed"]:
            gateway.unregister(name)
            drop_adapter(settings, job)
            store.update(
                job["id"],
                status="rejected",
                evaluation=result,
                model_name=None,
                error=f"not registered: {result['reason']}",
            )
            code = evaluate.OUTCOME_CODES[result["outcome"]]
            if code == REJECTED:  # judged: this version is done (collect-more is not)
                record_outcome(client, ks, experiment, dataset_id, "rejected", job=job["id"])
                _forget_checkpoints(store.get(job["id"]))
            return RunResult(
                code, f"{name} not registered: {result['reason']}", store.get(job["id"])
            )
        others = sum(a["weight"] for a in spec["arms"])
        weight = round(others * cfg.canary_share / (1 - cfg.canary_share), 6)
        gateway.add_arm(experiment, name, weight)
        job = store.update(job["id"], status="registered", evaluation=result)
        record_outcome(client, ks, experiment, dataset_id, "registered", job=job["id"], model=name)
        _forget_checkpoints(job)
        return RunResult(
            OK,
            f"{name} is a canary of '{experiment}' at {cfg.canary_share:.0%} ({result['reason']})",
            job,
        )
    except Exception as exc:  # noqa: BLE001 - recorded in the job, then reported
        current = store.get(job["id"])
        staged = current.get("model_name") if current else None
        if staged:
            try:
                gateway.unregister(staged)
            except RuntimeError as cleanup:
                log(f"could not unregister {staged}: {cleanup}")
        store.update(job["id"], status="failed", error=f"{type(exc).__name__}: {exc}")
        drop_adapter(settings, job)
        return RunResult(
            FAILED,
            f"{job['id']} failed: {exc}; {dataset_id} stays untrained and the next run retries it",
            store.get(job["id"]),
        )


def _relay_remote_events(store: JobStore, job: JobRecord, settings: RetrainSettings) -> None:
    """An adopted job's OpenAI events that its dead run had not relayed yet."""
    from .openai_ft import OpenAIProvider

    seen = {str(e.get("id")) for e in job.get("events") or []}
    try:
        fresh = OpenAIProvider(settings.retrain.openai).events(str(job["provider_job"]), seen)
    except Exception:  # noqa: BLE001 - the events are a record, not a step of the turn
        return
    if fresh:
        store.update(job["id"], events=fresh)


def _forget_checkpoints(job: JobRecord | None) -> None:
    """The dataset reached an outcome: its training will not be resumed again."""
    if job and job.get("checkpoints"):
        shutil.rmtree(job["checkpoints"], ignore_errors=True)


def checkpoint_dir(settings: RetrainSettings, dataset_id: str, base_model: str) -> Path:
    """Where a local training of this dataset, model and settings keeps its checkpoints:
    the same for every retry, so a retry resumes; different when anything changed."""
    local = settings.retrain.local
    params = local.model_dump(
        mode="json", exclude={"adapter_dir", "upstream", "keep_failed_adapters"}
    )
    digest = hashlib.sha256(orjson.dumps([base_model, params], option=orjson.OPT_SORT_KEYS))
    return local.adapter_dir / ".checkpoints" / f"{dataset_id}-{digest.hexdigest()[:10]}"


def _train(
    store: JobStore,
    job: JobRecord,
    name: str,
    settings: RetrainSettings,
    provider: str,
    dataset: Any,
    base_model: str | None,
    log: Callable[[str], None],
) -> dict[str, Any] | None:
    """Train; the body that registers the result in the gateway (None: cancelled)."""
    cfg = settings.retrain
    store.update(job["id"], status="running")

    def cancelled() -> bool:
        current = store.get(job["id"]) or {}
        return current.get("status") == "cancelling"

    if provider == "local":
        from .local_train import train

        model = base_model or preflight.base_model(settings)
        out = adapter_dir_of(settings, job)
        checkpoints = checkpoint_dir(settings, dataset.name, model)
        store.update(
            job["id"],
            base_model=model,
            checkpoints=str(checkpoints),
            params=cfg.local.model_dump(mode="json"),
        )

        def on_log(row: dict[str, Any]) -> None:
            store.update(job["id"], loss=[row])
            crash_point("training")

        def on_checkpoint(step: int) -> None:
            store.update(job["id"], checkpoint_step=step)
            crash_point("checkpoint")

        summary = train(
            dataset,
            out,
            cfg.local,
            base_model=model,
            checkpoint_dir=checkpoints,
            on_log=on_log,
            on_checkpoint=on_checkpoint,
            should_stop=cancelled,
        )
        store.update(job["id"], training=summary, adapter_path=str(out))
        if summary["resumed_from_step"] is not None:
            log(
                f"{job['id']}: resumed from the checkpoint at step "
                f"{summary['resumed_from_step']} of an earlier try"
            )
        losses = (
            f"validation loss {summary['eval_loss_first']:.3f} → {summary['eval_loss_last']:.3f}"
            if summary["eval_loss_first"] is not None
            else "no validation split"
        )
        log(
            f"{job['id']}: trained {summary['steps']} steps on {summary['device']} "
            f"(train loss {summary['train_loss']:.3f}; {losses})"
        )
        if summary["cancelled"]:
            store.update(job["id"], status="cancelled")
            drop_adapter(settings, job)
            return None
        body: dict[str, Any] = {
            "name": name,
            "upstream": cfg.local.upstream,
            "model": name,
            "adapter_path": str(out),
        }
        if cfg.local.price is not None:
            body["price"] = cfg.local.price.model_dump(exclude_none=True)
        return body

    from .openai_ft import OpenAIProvider

    remote = OpenAIProvider(cfg.openai)
    remote_id = remote.launch(dataset, suffix=name, seed=cfg.local.seed)
    store.update(job["id"], provider_job=remote_id, params=cfg.openai.model_dump(mode="json"))
    log(f"{job['id']}: OpenAI job {remote_id}")
    crash_point("remote-training")

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
