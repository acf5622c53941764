"""The ``openai`` provider: OpenAI's fine-tuning API, through the official client.

OpenAI is closing self-serve fine-tuning: organisations without fine-tuning history
could no longer create jobs from 2026-05-07, and from **2027-01-06 no one can create new
jobs** (inference on existing ``ft:`` models goes on until their base model retires).
This provider stays correct and tested for those who still can; ``local`` is the default.

``launch`` uploads the train (and validation) file with ``purpose="fine-tune"`` and
creates the job with ``method`` (``supervised`` or ``dpo``, with ``beta`` and the held-out
pairs as its validation file) and its hyperparameters;
``wait`` polls with backoff, relays new events, and ends on ``succeeded`` (the result is
the ``ft:`` model id), ``failed`` (with OpenAI's error) or ``cancelled``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .config import OpenAITraining

FINAL = ("succeeded", "failed", "cancelled")


class OpenAIProvider:
    def __init__(self, cfg: OpenAITraining, client: Any = None) -> None:
        if client is None:
            from openai import OpenAI

            client = OpenAI(
                base_url=cfg.base_url, api_key=cfg.api_key.get_secret_value() or None, max_retries=3
            )
        self.cfg = cfg
        self.client = client

    def launch(self, dataset_path: Path, *, suffix: str, seed: int) -> str:
        if self.cfg.method == "dpo":
            train = dataset_path / "preference.jsonl"
            validation = dataset_path / "preference_validation.jsonl"
        else:
            train, validation = dataset_path / "train.jsonl", dataset_path / "validation.jsonl"
        with open(train, "rb") as f:
            train_file = self.client.files.create(file=f, purpose="fine-tune")
        validation_id = None
        if validation is not None and validation.exists() and validation.stat().st_size:
            with open(validation, "rb") as f:
                validation_id = self.client.files.create(file=f, purpose="fine-tune").id
        hyper: dict[str, Any] = {
            "n_epochs": self.cfg.n_epochs,
            "batch_size": self.cfg.batch_size,
            "learning_rate_multiplier": self.cfg.learning_rate_multiplier,
        }
        kind = self.cfg.method
        if kind == "dpo":
            hyper["beta"] = self.cfg.beta
        optional = {"validation_file": validation_id} if validation_id else {}
        job = self.client.fine_tuning.jobs.create(
            model=self.cfg.base_model,
            training_file=train_file.id,
            suffix=suffix[:64],
            seed=seed,
            method={"type": kind, kind: {"hyperparameters": hyper}},
            **optional,
        )
        return str(job.id)

    def status(self, job_id: str) -> Any:
        return self.client.fine_tuning.jobs.retrieve(job_id)

    def events(self, job_id: str, seen: set[str]) -> list[dict[str, Any]]:
        """Events not seen yet, oldest first."""
        page = self.client.fine_tuning.jobs.list_events(job_id, limit=100)
        fresh = [e for e in page.data if e.id not in seen]
        return [
            {"id": e.id, "created_at": e.created_at, "level": e.level, "message": e.message}
            for e in reversed(fresh)
        ]

    def list_jobs(self, limit: int = 20) -> list[dict[str, Any]]:
        """The organisation's latest fine-tuning jobs, newest first (any launcher's)."""
        page = self.client.fine_tuning.jobs.list(limit=limit)
        return [
            {
                "id": j.id,
                "status": j.status,
                "model": j.model,
                "fine_tuned_model": j.fine_tuned_model,
                "created_at": j.created_at,
            }
            for j in page.data
        ]

    def cancel(self, job_id: str) -> None:
        self.client.fine_tuning.jobs.cancel(job_id)

    def wait(
        self,
        job_id: str,
        *,
        on_event: Callable[[dict[str, Any]], None],
        should_stop: Callable[[], bool],
        max_poll_s: float = 60.0,
    ) -> dict[str, Any]:
        """Poll until the job ends; returns {status, model, error}."""
        seen: set[str] = set()
        delay = self.cfg.poll_s
        while True:
            if should_stop():
                self.cancel(job_id)
            job = self.status(job_id)
            for event in self.events(job_id, seen):
                seen.add(event["id"])
                on_event(event)
            if job.status in FINAL:
                error = getattr(job, "error", None)
                message = getattr(error, "message", None) if error else None
                return {"status": job.status, "model": job.fine_tuned_model, "error": message}
            time.sleep(delay)
            delay = min(delay * 1.5, max_poll_s)
