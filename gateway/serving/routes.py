"""The public API's routes (client keys): chat, feedback, models, health and metrics.

``POST /v1/chat/completions`` is also served without FastAPI by :func:`gateway.app.serving_app`
(what ``gateway serve`` runs); the route here serves it in an app made by ``create_app``
alone (in-process tests) and describes it in the OpenAPI document.

::

    POST /v1/chat/completions      a chat completion (an experiment's arm or a model)
    POST /v1/embeddings            embeddings from an embedding model (never an experiment)
    POST /v1/feedback              rate a response, or say which passages helped
    GET  /v1/feedback/{id}         the ratings of a response (its key's own)
    GET  /v1/models                what the key may call
    GET  /healthz                  the process serves
    GET  /readyz                   Redis and an upstream answer (503 while draining)
    GET  /metrics                  Prometheus
"""

from __future__ import annotations

import asyncio
import os
import re
from typing import Any

import orjson
from fastapi import Request
from starlette.responses import Response

from gateway import openapi as oa
from gateway.core import store
from gateway.openapi import Operation
from gateway.serving.bodies import read_body
from gateway.serving.embeddings import handle_embeddings
from gateway.serving.metrics import ScrapeState, read_archive_lag, read_group_lag, read_retrain
from gateway.state import state

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def request_id(request: Request) -> str:
    """The client's ``x-request-id`` when it is a sane one, else a new one (kept in the
    request's state for the app's error handlers)."""
    rid = checked_request_id(request.headers.get("x-request-id"))
    request.state.request_id = rid
    return rid


def checked_request_id(rid: str | None) -> str:
    """``rid`` (an ``x-request-id``) when it is a sane one, else a new one."""
    if not rid or not _REQUEST_ID.match(rid):
        rid = os.urandom(16).hex()
    return rid


async def chat_completions(request: Request) -> Response:
    return await state(request).chat.handle(request, request_id(request))


async def embeddings(request: Request) -> Response:
    return await handle_embeddings(state(request).chat, request, request_id(request))


async def post_feedback(request: Request) -> Response:
    request_id(request)
    st = state(request)
    principal = st.keyring.authenticate(request.headers.get("authorization"))
    body = await read_body(request, st.settings.limits.max_body_bytes)
    result = await st.feedback.rate(body, principal)
    return Response(orjson.dumps(result), status_code=201, media_type="application/json")


async def get_feedback(request: Request, response_id: str) -> Response:
    request_id(request)
    st = state(request)
    principal = st.keyring.authenticate(request.headers.get("authorization"))
    data = await st.feedback.ratings(response_id, principal)
    return Response(
        orjson.dumps({"object": "list", "response_id": response_id, "data": data}),
        media_type="application/json",
    )


async def list_models(request: Request) -> Response:
    """What the key may call: its tenant's experiments and models and the shared ones."""
    st = state(request)
    who = st.keyring.authenticate(request.headers.get("authorization"))
    router = st.control.router
    data: list[dict[str, Any]] = [
        {
            "id": name,
            "object": "model",
            "created": st.started,
            "owned_by": "flywheel",
            "flywheel": {
                "kind": "experiment",
                "arms": [a.model_dump() for a in exp.arms],
                "fallback": exp.fallback,
            },
        }
        for name, exp in router.experiments.items()
        if who.may_call(name, exp.tenant, True)
    ]
    data += [
        {
            "id": m["id"],
            "object": "model",
            "created": st.started,
            "owned_by": "flywheel",
            "flywheel": {
                "kind": "model",
                "upstream": m["upstream"],
                "model": m["model"],
                "adapter": m["adapter_path"] is not None,
                "parent": m["parent"],
            },
        }
        for m in st.control.models()
        if who.may_call(m["id"], m.get("tenant"), False)
    ]
    return Response(orjson.dumps({"object": "list", "data": data}), media_type="application/json")


async def healthz() -> dict[str, str]:
    return {"status": "ok"}


async def readyz(request: Request) -> Response:
    st = state(request)
    if st.draining:
        body = {"status": "draining", "checks": {"shutdown": "SIGTERM received"}}
        return Response(orjson.dumps(body), status_code=503, media_type="application/json")
    ups = st.upstream.pools
    lag, results = await asyncio.gather(
        read_archive_lag(st.redis, st.ks, timeout_s=1.0),
        asyncio.gather(store.ping(st.redis), *(st.upstream.probe(pool) for pool in ups.values())),
    )
    checks = {"redis": results[0] or "ok"}
    checks.update({f"upstream:{n}": r or "ok" for n, r in zip(ups, results[1:], strict=True)})
    if lag:  # said, never a reason to take the replica out of rotation
        checks["archive"] = archive_check(lag, st.settings.interaction_log.hot_s)
    ready = results[0] is None and any(r is None for r in results[1:])
    body = {"status": "ready" if ready else "not ready", "checks": checks}
    return Response(
        orjson.dumps(body), status_code=200 if ready else 503, media_type="application/json"
    )


async def prometheus_metrics(request: Request) -> Response:
    st = state(request)
    retrain, lag, group_lag = await asyncio.gather(
        read_retrain(st.redis, st.ks),
        read_archive_lag(st.redis, st.ks),
        read_group_lag(st.redis, st.ks),
    )
    scrape = ScrapeState(
        retrain=retrain,
        archive_lag=lag,
        hot_s=st.settings.interaction_log.hot_s,
        group_lag=group_lag,
        feedback_hot_s=st.settings.feedback.hot_s,
    )
    for name, exp in st.control.router.experiments.items():
        total = sum(a.weight for a in exp.arms) or 1.0
        scrape.controls[name] = exp.control_arm
        for a in exp.arms:
            scrape.weights[(name, a.model)] = a.weight / total
            st.metrics.initialise_arm(name, a.model)
    for name, pool in st.upstream.pools.items():
        scrape.replicas.update({(name, s): n for s, n in pool.states().items()})
    return Response(
        st.metrics.render(scrape), media_type="text/plain; version=0.0.4; charset=utf-8"
    )


def archive_check(lag: dict[str, float], hot_s: float) -> str:
    """``/readyz``'s word on the archive: ok, or how far behind it is once the oldest
    unarchived entry passed half the hot window (an interaction leaves Redis at
    ``hot_s``, archived or not; the alert FlywheelArchiveLagging fires at the same point)."""
    behind = {kind: s for kind, s in lag.items() if s > hot_s / 2}
    if not behind:
        return "ok"
    worst = max(behind, key=lambda k: behind[k])
    return (
        f"behind: the oldest unarchived {worst} entry is {behind[worst]:.0f} s old, over "
        f"half of interaction_log.hot_s ({hot_s:g} s); is an archiver running?"
    )


READY = {
    "type": "object",
    "required": ["status", "checks"],
    "properties": {
        "status": {"enum": ["ready", "not ready", "draining"]},
        "checks": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}
UPSTREAM_4XX = "The upstream's own 4xx, passed through with its message"

ROUTES = (
    Operation(
        "POST",
        "/v1/chat/completions",
        chat_completions,
        "Chat completion (OpenAI-compatible), routed by experiment",
        {
            "200": {
                "description": "The completion; with `stream: true`, server-sent events "
                "(`data: {chunk}` … `data: [DONE]`)",
                "headers": oa.CHAT_HEADERS,
                "content": {
                    "application/json": {"schema": oa.ref("ChatCompletion")},
                    "text/event-stream": {"schema": oa.ref("ChatCompletionEvent")},
                },
            },
            **oa.errors(400, *oa.PUBLIC, 413, 415, 502, 503, 504),
            "4XX": oa.error_answer(UPSTREAM_4XX),
        },
        body=oa.body(oa.ref("ChatCompletionRequest")),
    ),
    Operation(
        "POST",
        "/v1/embeddings",
        embeddings,
        "Embeddings (OpenAI-compatible) from an embedding model",
        {
            "200": oa.answer(oa.ref("Embeddings")),
            **oa.errors(400, *oa.PUBLIC, 413, 415, 502, 503, 504),
            "4XX": oa.error_answer(f"{UPSTREAM_4XX} (`dimensions` the model does not support)"),
        },
        body=oa.body(oa.ref("EmbeddingsRequest")),
    ),
    Operation(
        "POST",
        "/v1/feedback",
        post_feedback,
        "Rate a response, or say which retrieved passages helped",
        {
            "201": oa.answer(oa.ref("FeedbackCreated"), "Stored (or replaced)"),
            **oa.errors(*oa.BODY, *oa.PUBLIC, 404, 503),
        },
        body=oa.body(oa.ref("FeedbackRequest")),
    ),
    Operation(
        "GET",
        "/v1/feedback/{response_id}",
        get_feedback,
        "The current ratings of a response",
        {
            "200": oa.answer(oa.listing(oa.ref("Rating"), response_id={"type": "string"})),
            **oa.errors(*oa.PUBLIC, 404, 503),
        },
    ),
    Operation(
        "GET",
        "/v1/models",
        list_models,
        "Experiments and models, in OpenAI's list shape",
        {"200": oa.answer(oa.listing(oa.ref("Model"))), **oa.errors(*oa.PUBLIC)},
    ),
    Operation(
        "GET",
        "/healthz",
        healthz,
        "The process is up",
        {"200": oa.answer({"type": "object", "properties": {"status": {"const": "ok"}}})},
        public=True,
    ),
    Operation(
        "GET",
        "/readyz",
        readyz,
        "Redis and at least one upstream answer",
        {
            "200": oa.answer(READY, "Ready"),
            "503": oa.answer(READY, "Not ready: each check's reason"),
        },
        public=True,
    ),
    Operation(
        "GET",
        "/metrics",
        prometheus_metrics,
        "Prometheus metrics",
        {
            "200": {
                "description": "Prometheus text format",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            }
        },
        public=True,
    ),
)
"""The public API, in the order routes are matched."""
