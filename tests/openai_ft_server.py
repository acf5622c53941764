"""A stand-in for OpenAI's fine-tuning API, which cannot run here (and closes to new jobs
on 2027-01-06). Its answers are OpenAI's documented responses — the examples of
``openai-openapi`` for files, fine-tuning jobs and their events — with ids and statuses
filled in, and the tests check each one against that API description's schemas. It
records every request, so tests can check what the provider sent.

A job walks ``validating_files`` → ``queued`` → ``running`` → the scenario's ending
(``succeeded`` with an ``ft:`` model, or ``failed`` with an error), one step per
retrieve; ``POST .../cancel`` ends it ``cancelled``. ``/v1/chat/completions`` answers
the fine-tuned model with ``answer`` (for evaluations through the gateway).
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from .background import BackgroundServer

STEPS = ("validating_files", "queued", "running")


class FineTuningServer(BackgroundServer):
    def __init__(self, *, outcome: str = "succeeded", answer: str = "") -> None:
        super().__init__()
        self.outcome = outcome
        self.answer = answer
        self.requests: list[dict[str, Any]] = []  # method, path, json or form fields
        self.responses: list[tuple[str, dict[str, Any]]] = []  # (schema name, body)
        self.jobs: dict[str, dict[str, Any]] = {}
        self._polls: dict[str, int] = {}
        self._suffix: dict[str, str] = {}

    def _reply(self, schema: str, body: dict[str, Any]) -> web.Response:
        self.responses.append((schema, body))
        return web.json_response(body)

    async def _files(self, request: web.Request) -> web.Response:
        form = await request.post()
        upload: Any = form["file"]
        content = upload.file.read()
        self.requests.append(
            {
                "method": "POST",
                "path": "/files",
                "purpose": form["purpose"],
                "filename": upload.filename,
                "bytes": content,
            }
        )
        n = sum(1 for r in self.requests if r["path"] == "/files")
        return self._reply(
            "OpenAIFile",
            {
                "id": f"file-abc12{n}",
                "object": "file",
                "bytes": len(content),
                "created_at": int(time.time()),
                "filename": upload.filename,
                "purpose": "fine-tune",
                "status": "processed",
            },
        )

    def _job(self, job_id: str) -> dict[str, Any]:
        return self.jobs[job_id]

    async def _create(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append({"method": "POST", "path": "/fine_tuning/jobs", "json": body})
        job_id = f"ftjob-abc{len(self.jobs) + 1}"
        self.jobs[job_id] = {
            "object": "fine_tuning.job",
            "id": job_id,
            "model": body["model"],
            "created_at": int(time.time()),
            "finished_at": None,
            "fine_tuned_model": None,
            "organization_id": "org-123",
            "result_files": [],
            "status": "validating_files",
            "validation_file": body.get("validation_file"),
            "training_file": body["training_file"],
            "hyperparameters": body["method"][body["method"]["type"]]["hyperparameters"],
            "trained_tokens": None,
            "error": None,
            "seed": body.get("seed", 0),
            "estimated_finish": None,
            "integrations": [],
            "metadata": None,
            "method": body.get("method"),
        }
        self._polls[job_id] = 0
        self._suffix[job_id] = body.get("suffix") or "flywheel"
        return self._reply("FineTuningJob", self.jobs[job_id])

    async def _retrieve(self, request: web.Request) -> web.Response:
        job = self._job(request.match_info["job_id"])
        self.requests.append({"method": "GET", "path": f"/fine_tuning/jobs/{job['id']}"})
        if job["status"] not in ("succeeded", "failed", "cancelled"):
            self._polls[job["id"]] += 1
            step = self._polls[job["id"]]
            if step < len(STEPS):
                job["status"] = STEPS[step]
            elif self.outcome == "succeeded":
                suffix = self._suffix[job["id"]][:40]
                job.update(
                    status="succeeded",
                    finished_at=int(time.time()),
                    trained_tokens=2048,
                    fine_tuned_model=f"ft:{job['model']}:org-123:{suffix}:abc123",
                )
            else:
                job.update(
                    status="failed",
                    finished_at=int(time.time()),
                    error={
                        "code": "invalid_training_file",
                        "param": "training_file",
                        "message": "The job failed due to an invalid training file.",
                    },
                )
        return self._reply("FineTuningJob", job)

    async def _events(self, request: web.Request) -> web.Response:
        job = self._job(request.match_info["job_id"])
        messages = [
            "Created fine-tuning job",
            "Validating training file",
            "Fine-tuning job started",
        ]
        shown = messages[: min(self._polls[job["id"]] + 1, len(messages))]
        if job["status"] in ("succeeded", "failed", "cancelled"):
            shown.append(f"Fine-tuning job {job['status']}")
        data = [
            {
                "object": "fine_tuning.job.event",
                "id": f"ftevent-{job['id']}-{i}",
                "created_at": job["created_at"] + i,
                "level": "info",
                "message": m,
                "data": {},
                "type": "message",
            }
            for i, m in enumerate(shown)
        ]
        data.reverse()  # newest first, as the API lists them
        return self._reply(
            "ListFineTuningJobEventsResponse", {"object": "list", "data": data, "has_more": False}
        )

    async def _cancel(self, request: web.Request) -> web.Response:
        job = self._job(request.match_info["job_id"])
        self.requests.append({"method": "POST", "path": f"/fine_tuning/jobs/{job['id']}/cancel"})
        job["status"] = "cancelled"
        return self._reply("FineTuningJob", job)

    async def _chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response(
            {
                "id": "chatcmpl-ft",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": self.answer, "refusal": None},
                    }
                ],
                "usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10},
            }
        )

    async def _list(self, request: web.Request) -> web.Response:
        self.requests.append({"method": "GET", "path": "/fine_tuning/jobs"})
        limit = int(request.query.get("limit", "20"))
        newest = sorted(self.jobs.values(), key=lambda j: j["created_at"], reverse=True)
        body = {"object": "list", "data": newest[:limit], "has_more": len(newest) > limit}
        return self._reply("ListPaginatedFineTuningJobsResponse", body)

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": []})

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/files", self._files)
        app.router.add_post("/v1/fine_tuning/jobs", self._create)
        app.router.add_get("/v1/fine_tuning/jobs", self._list)
        app.router.add_get("/v1/fine_tuning/jobs/{job_id}", self._retrieve)
        app.router.add_get("/v1/fine_tuning/jobs/{job_id}/events", self._events)
        app.router.add_post("/v1/fine_tuning/jobs/{job_id}/cancel", self._cancel)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
