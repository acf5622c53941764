"""``POST /v1/embeddings``: OpenAI-compatible embeddings, admitted and recorded like chat.

A request names a model (never an experiment: an index built with one embedding model
cannot be queried with another, so embedding models are compared offline by
``retrain embed``, and a request for an experiment's name is refused). It passes the
same admission as a chat completion (the key, its tenant's models, the rate limit, the
budget at the model's prompt price) and is forwarded to the model's upstream (vLLM
serving an embedding model with ``--runner pooling``, or OpenAI) with ``model`` replaced
by the upstream's id. Text inputs are sent in Unicode NFC, so that a text typed in NFD
(Vietnamese from some keyboards, Thai from some systems) gets the vector of the same
text in NFC.

The response is the upstream's (``encoding_format`` ``float`` or ``base64``,
``dimensions`` where the model supports it), with the gateway's own response ``id``
added, which ``POST /v1/feedback`` takes to say which passages helped. The interaction
log keeps the inputs, the parameters and the token usage (never the vectors); the request
is counted in the same metrics as chat (``experiment`` empty, ``arm`` the model) and its
prompt tokens are charged to the key's budgets.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway.control.routing import Target
from gateway.core.auth import Principal
from gateway.core.errors import GatewayError, InvalidRequest, UpstreamUnavailable
from gateway.core.records import SCHEMA_VERSION, InteractionRecord
from gateway.core.text import nfc
from gateway.serving.bodies import json_object, read_body
from gateway.serving.chat import ChatService, status_class
from gateway.serving.spend import cost, estimate

FIELDS = frozenset({"model", "input", "encoding_format", "dimensions", "user"})
MAX_INPUTS = 2048  # OpenAI's limit on the items of one request
ENCODINGS = ("float", "base64")


def _is_tokens(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in value)
    )


def parse_embeddings_request(body: bytes) -> dict[str, Any]:
    """The request as it will be forwarded, or InvalidRequest naming what is wrong.

    ``input`` is a string, an array of strings, an array of token ids or an array of
    token-id arrays; strings come back in NFC.
    """
    doc = json_object(body)
    unknown = sorted(set(doc) - FIELDS)
    if unknown:
        raise InvalidRequest(
            f"Unknown field '{unknown[0]:.64}' for embeddings: use "
            + ", ".join(sorted(FIELDS))
            + ".",
            param=unknown[0][:64],
        )
    model = doc.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' is required: an embedding model's name.", param="model")
    if "input" not in doc:
        raise InvalidRequest("'input' is required: the text(s) to embed.", param="input")
    value = doc["input"]
    empty = InvalidRequest("'input' must not be empty.", param="input")
    if isinstance(value, str):
        if not value:
            raise empty
        doc["input"] = nfc(value)
    elif isinstance(value, list):
        if not value:
            raise empty
        if len(value) > MAX_INPUTS and not _is_tokens(value):
            raise InvalidRequest(
                f"'input' has {len(value)} items; the limit is {MAX_INPUTS}.", param="input"
            )
        if all(isinstance(v, str) for v in value):
            if not all(value):
                raise InvalidRequest("'input' must not contain empty strings.", param="input")
            doc["input"] = [nfc(v) for v in value]
        elif not (_is_tokens(value) or all(_is_tokens(v) for v in value)):
            raise InvalidRequest(
                "'input' must be a string, an array of strings, an array of token ids "
                "or an array of token-id arrays.",
                param="input",
            )
    else:
        raise InvalidRequest(
            "'input' must be a string, an array of strings, an array of token ids "
            "or an array of token-id arrays.",
            param="input",
        )
    encoding = doc.get("encoding_format")
    if encoding is not None and encoding not in ENCODINGS:
        raise InvalidRequest(
            f'\'encoding_format\' must be "float" or "base64", not {encoding!r:.40}.',
            param="encoding_format",
        )
    dims = doc.get("dimensions")
    if dims is not None and (not isinstance(dims, int) or isinstance(dims, bool) or dims < 1):
        raise InvalidRequest("'dimensions' must be a positive integer.", param="dimensions")
    user = doc.get("user")
    if user is not None and not isinstance(user, str):
        raise InvalidRequest("'user' must be a string.", param="user")
    return doc


def texts_of(doc: dict[str, Any]) -> list[Any]:
    """The request's inputs as a list (a string or one token array is one input)."""
    value = doc["input"]
    if isinstance(value, str) or _is_tokens(value):
        return [value]
    return list(value)


async def handle_embeddings(chat: ChatService, request: Request, request_id: str) -> Response:
    """Serve one embeddings request with the chat service's admission, upstream and log."""
    t0 = time.perf_counter()
    metrics = chat.metrics
    try:
        principal = chat.keyring.authenticate(request.headers.get("authorization"))
        body = await read_body(request, chat.max_body_bytes)
        doc = parse_embeddings_request(body)
        router = chat.control.router
        if doc["model"] in router.experiments and (
            principal.all_tenants
            or principal.may_call(doc["model"], router.experiments[doc["model"]].tenant, True)
        ):
            raise InvalidRequest(
                f"'{doc['model']:.64}' is an experiment: embeddings are served by a model, "
                "never split between models (an index built with one embedding model cannot "
                "be queried with another). Name the model itself; compare embedding models "
                "offline with `retrain embed`.",
                param="model",
                code="experiment_not_supported",
            )
        route = router.resolve(doc["model"], "", None, None if principal.all_tenants else principal)
        limit_headers = await chat.limiter.admit(principal)
        await chat.spend.admit(principal, estimate(doc, len(body), route.primary.price))
    except GatewayError as exc:
        metrics.requests.labels("", "", status_class(exc.status)).inc()
        raise
    target = route.primary
    rid = chat.ids.new()
    headers = {"x-request-id": request_id, "x-flywheel-arm": target.name, **limit_headers}
    payload = dict(doc)
    payload["model"] = target.upstream_model
    usage: dict[str, Any] | None = None
    status, error, http = "ok", None, 200
    metrics.in_flight.inc()
    try:
        call = await chat.upstream.post(target, orjson.dumps(payload), path="/embeddings")
        raw = await chat.upstream.read(call)
        try:
            out = orjson.loads(raw)
            if not isinstance(out.get("data"), list):
                raise TypeError
        except (orjson.JSONDecodeError, TypeError, AttributeError):
            raise UpstreamUnavailable(
                f"The upstream '{target.upstream_name}' sent a malformed response."
            ) from None
        usage = out.get("usage") if isinstance(out.get("usage"), dict) else None
        out["id"], out["model"] = rid, target.name
        return Response(orjson.dumps(out), media_type="application/json", headers=headers)
    except GatewayError as exc:
        chat.upstream.failed(target, exc)
        status, error, http = "error", exc.message, exc.status
        exc.headers = headers
        raise
    finally:
        metrics.in_flight.dec()
        _finish(chat, principal, target, doc, rid, request_id, t0, usage, (status, error, http))


def _finish(
    chat: ChatService,
    principal: Principal,
    target: Target,
    doc: dict[str, Any],
    rid: str,
    request_id: str,
    t0: float,
    usage: dict[str, Any] | None,
    outcome: tuple[str, str | None, int],
) -> None:
    """Count, charge and log one embeddings request (the vectors are not kept)."""
    metrics, arm = chat.metrics, target.name
    status, error, http = outcome
    metrics.requests.labels("", arm, status_class(http)).inc()
    metrics.request_duration.labels("", arm).observe(time.perf_counter() - t0)
    prompt = usage.get("prompt_tokens") if usage else None
    if isinstance(prompt, int):
        metrics.tokens.labels("", arm, "prompt").inc(prompt)
        chat.limiter.charge(principal, prompt)
        if target.price is not None:
            amount = cost({"prompt_tokens": prompt}, target.price)
            metrics.cost.labels("", arm).inc(amount)
            chat.spend.charge(principal, arm, amount)
    inputs = texts_of(doc)
    record: InteractionRecord = {
        "v": SCHEMA_VERSION,
        "id": rid,
        "request_id": request_id,
        "created": int(time.time()),
        "experiment": None,
        "experiment_version": 0,
        "forced": False,
        "unit": None,
        "arm": arm,
        "assigned_arm": arm,
        "fallback": False,
        "upstream": target.upstream_name,
        "upstream_model": target.upstream_model,
        "user": doc.get("user"),
        "key_name": principal.name,
        "tenant": principal.tenant,
        "stream": False,
        # each input as a user message, so every reader of the log can show it
        "messages": [{"role": "user", "content": text} for text in inputs],
        "tools": None,
        "params": {
            "endpoint": "embeddings",
            **{k: v for k, v in doc.items() if k not in ("model", "input", "user")},
        },
        "answer": "",
        "tool_calls": None,
        "choices": None,
        "finish_reason": None,
        "usage": usage,
        "latency_ms": round((time.perf_counter() - t0) * 1000, 3),
        "ttft_ms": None,
        "status": status,
        "error": error,
        "shadow_of": None,
        "judge_score": None,
        "workload": None,
        "in_context": None,
    }
    chat.log.submit(record)
