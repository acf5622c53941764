"""``POST /v1/chat/completions``: check what routing needs, call the arm, relay, log.

The request body is parsed once (orjson) and forwarded as the client sent it, with
two changes: ``model`` becomes the upstream's model id, and a streaming request that
did not ask for usage gets ``stream_options.include_usage`` so the interaction log
always has token counts — the extra usage chunk is taken out again before the client
sees it. The response carries the gateway's own id from the first chunk on.

A failure before the first byte reaches the client (refused, reset, timeout, 5xx,
an empty or malformed first chunk) moves the request to the experiment's fallback
model; after it, the client gets an SSE error event and the stream ends.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import aiohttp
import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from .auth import KeyRing, Principal
from .bodies import json_object, read_body
from .errors import GatewayError, InvalidRequest, UpstreamUnavailable
from .ids import IdIssuer
from .interaction_log import InteractionLog
from .metrics import Metrics
from .routing import Router, Target
from .upstream import UpstreamClient, retryable

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


# Fields vLLM sends as null where OpenAI's schema allows only a value or no key at all.
_NON_NULLABLE_MESSAGE = ("annotations", "function_call", "tool_calls")
_NON_NULLABLE_USAGE = ("prompt_tokens_details", "completion_tokens_details")


def conform(doc: dict[str, Any], key: str) -> None:
    """Bring an upstream completion (``key="message"``) or chunk (``"delta"``) in line with
    OpenAI's response schema, changing only what the schema forbids (see test_openai_schema).
    """
    for choice in doc.get("choices") or ():
        message = choice.get(key)
        if isinstance(message, dict):
            for name in _NON_NULLABLE_MESSAGE:
                if name in message and message[name] is None:
                    del message[name]
        logprobs = choice.get("logprobs")
        if isinstance(logprobs, dict):
            logprobs.setdefault("refusal", None)
    usage = doc.get("usage")
    if isinstance(usage, dict):
        for name in _NON_NULLABLE_USAGE:
            if name in usage and usage[name] is None:
                del usage[name]


def status_class(status: int) -> str:
    return f"{status // 100}xx"


def parse_chat_request(body: bytes) -> dict[str, Any]:
    """The fields routing needs, checked; everything else is the upstream's business."""
    doc = json_object(body)
    model = doc.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' is required and must be a non-empty string.", param="model")
    messages = doc.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest(
            "'messages' is required and must be a non-empty array.", param="messages"
        )
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise InvalidRequest(f"messages[{i}] must be an object.", param=f"messages[{i}]")
        if m.get("role") not in ROLES:
            raise InvalidRequest(
                f"messages[{i}].role must be one of {', '.join(sorted(ROLES))}.",
                param=f"messages[{i}].role",
            )
    if not isinstance(doc.get("stream", False), bool):
        raise InvalidRequest("'stream' must be a boolean.", param="stream")
    if not isinstance(doc.get("user", ""), str):
        raise InvalidRequest("'user' must be a string.", param="user")
    return doc


@dataclass
class Turn:
    """One request being served: what the interaction record and metrics are made of."""

    id: str
    request_id: str
    t0: float
    doc: dict[str, Any]
    principal: Principal
    experiment: str | None
    assigned: Target
    target: Target
    stream: bool
    want_usage: bool = True
    answer: list[str] = field(default_factory=list)
    tool_calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    ttft: float | None = None
    status: str = "ok"
    error: str | None = None
    done: bool = False  # saw the upstream's [DONE]
    relaying: bool = False  # the client's stream has started

    def record(self) -> dict[str, Any]:
        params = {k: v for k, v in self.doc.items() if k not in ("messages", "model")}
        return {
            "id": self.id,
            "request_id": self.request_id,
            "created": int(time.time()),
            "experiment": self.experiment,
            "arm": self.target.name,
            "assigned_arm": self.assigned.name,
            "fallback": self.target is not self.assigned,
            "upstream": self.target.upstream_name,
            "upstream_model": self.target.upstream_model,
            "user": self.doc.get("user"),
            "key_name": self.principal.name,
            "tenant": self.principal.tenant,
            "stream": self.stream,
            "messages": self.doc["messages"],
            "params": params,
            "answer": "".join(self.answer),
            "tool_calls": [self.tool_calls[i] for i in sorted(self.tool_calls)] or None,
            "finish_reason": self.finish_reason,
            "usage": self.usage,
            "latency_ms": round((time.perf_counter() - self.t0) * 1000, 3),
            "ttft_ms": None if self.ttft is None else round((self.ttft - self.t0) * 1000, 3),
            "status": self.status,
            "error": self.error,
        }

    def headers(self) -> dict[str, str]:
        h = {"x-request-id": self.request_id, "x-flywheel-arm": self.target.name}
        if self.experiment:
            h["x-flywheel-experiment"] = self.experiment
        if self.target is not self.assigned:
            h["x-flywheel-fallback-from"] = self.assigned.name
        return h

    def take_message(self, message: dict[str, Any]) -> None:
        if isinstance(content := message.get("content"), str):
            self.answer.append(content)
        for i, call in enumerate(message.get("tool_calls") or []):
            self.tool_calls[i] = call

    def take_delta(self, delta: dict[str, Any]) -> None:
        content = delta.get("content")
        if content:
            self.answer.append(content)
        for call in delta.get("tool_calls") or []:
            slot = self.tool_calls.setdefault(
                call.get("index", 0), {"id": None, "type": "function", "function": {}}
            )
            slot["id"] = call.get("id") or slot["id"]
            fn, part = slot["function"], call.get("function") or {}
            if part.get("name"):
                fn["name"] = part["name"]
            fn["arguments"] = fn.get("arguments", "") + (part.get("arguments") or "")
        if self.ttft is None and (content or delta.get("tool_calls")):
            self.ttft = time.perf_counter()


class ChatService:
    def __init__(
        self,
        *,
        router: Router,
        upstream: UpstreamClient,
        ids: IdIssuer,
        log: InteractionLog,
        metrics: Metrics,
        keyring: KeyRing,
        max_body_bytes: int,
    ) -> None:
        self.router = router
        self.upstream = upstream
        self.ids = ids
        self.log = log
        self.metrics = metrics
        self.keyring = keyring
        self.max_body_bytes = max_body_bytes

    async def handle(self, request: Request, request_id: str) -> Response:
        t0 = time.perf_counter()
        try:
            principal = self.keyring.authenticate(request.headers.get("authorization"))
            doc = parse_chat_request(await read_body(request, self.max_body_bytes))
            user_key = (
                doc.get("user") or request.headers.get("x-flywheel-user") or secrets.token_hex(8)
            )
            route = self.router.resolve(doc["model"], user_key)
        except GatewayError as exc:
            self.metrics.requests.labels("", "", status_class(exc.status)).inc()
            raise
        stream = doc.get("stream") is True
        options = doc.get("stream_options")
        turn = Turn(
            id=self.ids.new(),
            request_id=request_id,
            t0=t0,
            doc=doc,
            principal=principal,
            experiment=route.experiment,
            assigned=route.primary,
            target=route.primary,
            stream=stream,
            want_usage=not stream
            or (isinstance(options, dict) and options.get("include_usage") is True),
        )
        self.metrics.in_flight.inc()
        finished_here = True
        try:
            candidates = [route.primary] + ([route.fallback] if route.fallback else [])
            for i, target in enumerate(candidates):
                turn.target, turn.status, turn.error = target, "ok", None
                try:
                    if stream:
                        lines, first = await self._open_stream(turn)
                        finished_here = False
                        return RelayResponse(
                            self._relay(turn, lines, first),
                            abandon=partial(self._abandon, turn, lines),
                            headers={**turn.headers(), **SSE_HEADERS},
                        )
                    return await self._complete(turn)
                except GatewayError as exc:
                    self.upstream.failed(target, exc)
                    if retryable(exc) and i + 1 < len(candidates):
                        self.metrics.fallbacks.labels(
                            route.experiment or "", target.name, candidates[i + 1].name
                        ).inc()
                        continue
                    turn.status, turn.error = "error", exc.message
                    self._finish(turn, exc.status)
                    exc.headers = turn.headers()
                    raise
            raise AssertionError("unreachable")  # pragma: no cover
        finally:
            if finished_here:
                self.metrics.in_flight.dec()

    def _payload(self, turn: Turn) -> bytes:
        out = dict(turn.doc)
        out["model"] = turn.target.upstream_model
        if turn.stream and not turn.want_usage:
            options = out.get("stream_options")
            out["stream_options"] = {
                **(options if isinstance(options, dict) else {}),
                "include_usage": True,
            }
        return orjson.dumps(out)

    async def _complete(self, turn: Turn) -> Response:
        resp = await self.upstream.post(turn.target, self._payload(turn))
        raw = await self.upstream.read(turn.target, resp)
        try:
            doc = orjson.loads(raw)
            choices = doc["choices"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            raise UpstreamUnavailable(
                f"The upstream '{turn.target.upstream_name}' sent a malformed response."
            ) from None
        doc["id"], doc["model"] = turn.id, turn.target.name
        conform(doc, "message")
        if choices and isinstance(choices[0], dict):
            turn.take_message(choices[0].get("message") or {})
            turn.finish_reason = choices[0].get("finish_reason")
        turn.usage = doc.get("usage")
        self._finish(turn, 200)
        return Response(orjson.dumps(doc), media_type="application/json", headers=turn.headers())

    async def _open_stream(self, turn: Turn) -> tuple[AsyncGenerator[bytes, None], bytes | None]:
        """Open the upstream stream and read its first data line, while fallback is possible.

        Returns the rest of the lines and the first line already rewritten for the client.
        """
        resp = await self.upstream.post(turn.target, self._payload(turn))
        lines = self._lines(turn.target, resp)
        try:
            async for line in lines:
                if line.startswith(b"data:"):
                    first = self._rewrite(turn, line)
                    if turn.status == "error":
                        raise UpstreamUnavailable(
                            f"The upstream '{turn.target.upstream_name}' failed: {turn.error}"
                        )
                    return lines, first
            raise UpstreamUnavailable(
                f"The upstream '{turn.target.upstream_name}' closed the stream before any data."
            )
        except BaseException:
            await lines.aclose()
            raise

    async def _lines(
        self, target: Target, resp: aiohttp.ClientResponse
    ) -> AsyncGenerator[bytes, None]:
        try:
            async for line in self.upstream.lines(target, resp):
                yield line
        except BaseException:
            resp.close()  # drop the connection: that stops the upstream generating
            raise
        resp.release()  # read to the end: the connection goes back to the pool

    def _rewrite(self, turn: Turn, line: bytes) -> bytes | None:
        """One upstream ``data:`` line → the bytes to send the client (None: send nothing)."""
        payload = line[5:].strip()
        if payload == b"[DONE]":
            turn.done = True
            return b"data: [DONE]\n\n"
        try:
            chunk = orjson.loads(payload)
        except orjson.JSONDecodeError:
            chunk = None
        if not isinstance(chunk, dict):
            turn.status, turn.error = "error", "malformed chunk from upstream"
            return None
        if "error" in chunk:
            err = chunk["error"] if isinstance(chunk["error"], dict) else {"message": chunk}
            turn.status, turn.error = "error", str(err.get("message"))
            return None
        chunk["id"], chunk["model"] = turn.id, turn.target.name
        conform(chunk, "delta")
        if turn.want_usage:
            if chunk.get("usage"):
                turn.usage = chunk["usage"]
        else:
            usage = chunk.pop("usage", None)
            if usage:
                turn.usage = usage
            if not chunk.get("choices"):
                return None
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) == 0:
                turn.take_delta(choice.get("delta") or {})
                if choice.get("finish_reason"):
                    turn.finish_reason = choice["finish_reason"]
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    async def _relay(
        self, turn: Turn, lines: AsyncGenerator[bytes, None], first: bytes | None
    ) -> AsyncGenerator[bytes, None]:
        status = 200
        turn.relaying = True
        try:
            if first:
                yield first
            async for line in lines:
                if not line.startswith(b"data:"):
                    continue
                out = self._rewrite(turn, line)
                if out:
                    yield out
                elif turn.status == "error":
                    break
            if turn.status == "ok" and not turn.done:
                turn.status, turn.error = "error", "the upstream closed the stream early"
            if turn.status == "error":
                status = 502
                yield _sse_error(UpstreamUnavailable(f"Upstream stream failed: {turn.error}"))
        except GatewayError as exc:  # reset or timeout mid-stream
            self.upstream.failed(turn.target, exc)
            turn.status, turn.error, status = "error", exc.message, exc.status
            yield _sse_error(exc)
        except BaseException:  # the client went away: cancel the upstream, log what we had
            turn.status, turn.error, status = "cancelled", "client disconnected", 499
            raise
        finally:
            await lines.aclose()
            self._finish(turn, status)
            self.metrics.in_flight.dec()

    async def _abandon(self, turn: Turn, lines: AsyncGenerator[bytes, None]) -> None:
        """The client left before its stream started: release the upstream, log, count."""
        if turn.relaying:
            return  # the relay cleaned up itself
        await lines.aclose()
        turn.status, turn.error = "cancelled", "client disconnected"
        self._finish(turn, 499)
        self.metrics.in_flight.dec()

    def _finish(self, turn: Turn, status: int) -> None:
        exp, arm = turn.experiment or "", turn.target.name
        label = "cancelled" if status == 499 else status_class(status)
        m = self.metrics
        m.requests.labels(exp, arm, label).inc()
        m.request_duration.labels(exp, arm).observe(time.perf_counter() - turn.t0)
        if turn.ttft is not None:
            m.ttft.labels(exp, arm).observe(turn.ttft - turn.t0)
        if turn.usage:
            for kind in ("prompt", "completion"):
                n = turn.usage.get(f"{kind}_tokens")
                if isinstance(n, int):
                    m.tokens.labels(exp, arm, kind).inc(n)
        self.log.submit(turn.record())


class RelayResponse(StreamingResponse):
    """An SSE response that always ends its relay, however the client's request ends.

    Starlette cancels a stream whose client disconnects; this makes sure the relay's
    cleanup (close the upstream, log the interaction) runs then too, even when the
    relay never started.
    """

    def __init__(
        self,
        relay: AsyncGenerator[bytes, None],
        *,
        abandon: Callable[[], Awaitable[None]],
        headers: dict[str, str],
    ) -> None:
        super().__init__(relay, media_type="text/event-stream", headers=headers)
        self._relay = relay
        self._abandon = abandon

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._relay.aclose()  # runs the relay's own cleanup if it started
            await self._abandon()  # cleans up if it never did


def _sse_error(exc: GatewayError) -> bytes:
    return b"data: " + orjson.dumps(exc.body()) + b"\n\n"
