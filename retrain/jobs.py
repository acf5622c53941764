"""The job registry: every fine-tuning job, its progress and its outcome, in Redis.

A job is one JSON document at ``fw:job:{id}`` (ids in ``fw:jobs`` by creation time;
``JobRecord`` in ``gateway/core/records.py``)::

    v, id, experiment, provider, dataset_id, dataset_path, dataset_parent, status,
    created, updated, runner (host:pid of the ``retrain run`` that owns it), params,
    base_model, checkpoints, checkpoint_step, training (local), provider_job (hosted),
    loss (per step: step, loss, eval_loss), events (the provider's, last 200),
    result_model, adapter_path, model_name (its name in the gateway), evaluation, error

Statuses: ``queued`` → ``running`` → ``staging`` → ``evaluating`` → ``registered`` or
``rejected``; or ``failed`` / ``cancelled`` at any point. ``cancelling`` asks a running
job to stop.

Each experiment's last ``retrain run`` is summed up in ``fw:retrain:runs``
(:func:`record_run`): the gateway's ``/metrics`` reads it (``flywheel_retrain_*``).
"""

from __future__ import annotations

import secrets
import time
from typing import Any, cast

import orjson
import redis

from gateway.core import keys
from gateway.core.records import FINAL_JOB_STATUSES, SCHEMA_VERSION, JobRecord

FINAL = FINAL_JOB_STATUSES
MAX_EVENTS = 200


class JobStore:
    def __init__(self, client: redis.Redis, ks: keys.Keyspace) -> None:
        self.client = client
        self.ks = ks

    def create(self, **fields: Any) -> JobRecord:
        now = time.time()
        job: JobRecord = {
            "v": SCHEMA_VERSION,
            "id": "ftjob-" + secrets.token_hex(6),
            "status": "queued",
            "created": now,
            "updated": now,
            "loss": [],
            "events": [],
            "result_model": None,
            "adapter_path": None,
            "model_name": None,
            "evaluation": None,
            "error": None,
            **cast(JobRecord, fields),
        }
        pipe = self.client.pipeline()
        pipe.set(self.ks.job(job["id"]), orjson.dumps(job))
        pipe.zadd(self.ks.jobs, {job["id"]: now})
        pipe.execute()
        return job

    def get(self, job_id: str) -> JobRecord | None:
        return cast("JobRecord | None", keys.decode(self.client.get(self.ks.job(job_id))))

    def update(self, job_id: str, **fields: Any) -> JobRecord:
        """Set fields (``loss`` and ``events`` given as lists are appended)."""
        job = self.get(job_id)
        if job is None:
            raise KeyError(job_id)
        if "loss" in fields:
            job["loss"] = job.get("loss", []) + fields.pop("loss")
        if "events" in fields:
            job["events"] = (job.get("events", []) + fields.pop("events"))[-MAX_EVENTS:]
        job.update(cast(JobRecord, fields))
        job["updated"] = time.time()
        self.client.set(self.ks.job(job_id), orjson.dumps(job))
        return job

    def list(self, limit: int = 50) -> list[JobRecord]:
        ids: list[bytes] = self.client.zrevrange(self.ks.jobs, 0, limit - 1)  # type: ignore[assignment]
        return [j for j in (self.get(keys.text(i)) for i in ids) if j is not None]


def record_run(client: redis.Redis, ks: keys.Keyspace, experiment: str, **fields: Any) -> None:
    """Merge ``fields`` into the summary of the experiment's last run (``fw:retrain:runs``).

    Written only by the run that holds the experiment's run lock, so never concurrently.
    """
    raw: bytes | None = client.hget(ks.retrain_runs, experiment)  # type: ignore[assignment]
    doc = keys.decode(raw) or {}
    doc.update(fields, v=SCHEMA_VERSION)
    client.hset(ks.retrain_runs, experiment, orjson.dumps(doc))


def record_outcome(
    client: redis.Redis,
    ks: keys.Keyspace,
    experiment: str,
    dataset_id: str,
    outcome: str,
    **fields: Any,
) -> None:
    """Mark a dataset version as trained to an outcome (``registered`` or ``rejected``)."""
    doc = {"outcome": outcome, "at": time.time(), **fields}
    client.hset(ks.trained(experiment), dataset_id, orjson.dumps(doc))


def dataset_outcome(
    client: redis.Redis, ks: keys.Keyspace, experiment: str, dataset_id: str
) -> dict[str, Any] | None:
    """What training a dataset version ended in; None: it has not been trained to an end."""
    raw: bytes | None = client.hget(ks.trained(experiment), dataset_id)  # type: ignore[assignment]
    return keys.decode(raw)
