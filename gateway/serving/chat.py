"""``POST /v1/chat/completions``: check what routing needs, call the arm, relay, log.

The request body is parsed once (orjson) and forwarded as the client sent it, with
two changes: ``model`` becomes the upstream's model id, and a streaming request that
did not ask for usage gets ``stream_options.include_usage`` so the interaction log
always has token counts — the extra usage chunk is taken out again before the client
sees it. The response carries the gateway's own id from the first chunk on.

A failure before the first byte reaches the client (refused, reset, timeout, 5xx,
an empty or malformed first chunk, an open circuit) moves the request to the
experiment's fallback model; after it, the client gets an SSE error event and the
stream ends — there is no retry after the first streamed byte.

An admin key may force an arm with ``x-flywheel-arm`` (evaluation, tests). An
experiment with a ``shadow`` model copies a share of its answered requests to it in
the background: the shadow answer is logged (``shadow_of``: the served response's id)
and never returned, and with ``control.judge`` set a judge model scores it against the
served answer, asked with the two answers in both orders (position bias cancels).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import re
import secrets
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.control.control import Control
from gateway.control.routing import Route, Target
from gateway.core.auth import KeyRing, Principal
from gateway.core.errors import GatewayError, PermissionDenied, UpstreamUnavailable
from gateway.core.ids import IdIssuer
from gateway.core.records import SCHEMA_VERSION, Choice, InteractionRecord
from gateway.serving.bodies import read_body
from gateway.serving.interaction_log import InteractionLog
from gateway.serving.limits import RateLimiter
from gateway.serving.metrics import Metrics
from gateway.serving.spend import Hold, Spend, bounded, cost, estimate
from gateway.serving.upstream import UpstreamClient, retryable
from gateway.serving.validation import WORKLOAD_HEADER, parse_chat_request, workload_of

log = logging.getLogger(__name__)

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
# A stream's own headers, encoded once (what Starlette's init_headers would make of them).
_SSE_RAW = [(k.lower().encode(), v.encode()) for k, v in SSE_HEADERS.items()] + [
    (b"content-type", b"text/event-stream; charset=utf-8")
]


# Fields vLLM sends as null where OpenAI's schema allows only a value or no key at all.
_NON_NULLABLE_MESSAGE = ("annotations", "function_call", "tool_calls")
_NON_NULLABLE_USAGE = ("prompt_tokens_details", "completion_tokens_details")


def conform(doc: dict[str, Any], key: str) -> None:
    """Bring an upstream completion (``key="message"``) or chunk (``"delta"``) in line with
    OpenAI's response schema, changing only what the schema forbids (see test_openai_schema).
    """
    for choice in doc.get("choices") or ():
        conform_choice(choice, key)
    conform_usage(doc.get("usage"))


def conform_choice(choice: dict[str, Any], key: str) -> None:
    """:func:`conform` for one choice."""
    message = choice.get(key)
    if isinstance(message, dict):
        for name in _NON_NULLABLE_MESSAGE:
            if name in message and message[name] is None:
                del message[name]
    logprobs = choice.get("logprobs")
    if isinstance(logprobs, dict):
        logprobs.setdefault("refusal", None)


def conform_usage(usage: Any) -> None:
    """:func:`conform` for a usage object."""
    if isinstance(usage, dict):
        for name in _NON_NULLABLE_USAGE:
            if name in usage and usage[name] is None:
                del usage[name]


def status_class(status: int) -> str:
    return f"{status // 100}xx"


class _ArmMetrics:
    """The metric series of one (experiment, arm), looked up once instead of per request
    (``labels()`` takes a lock and builds a key every call)."""

    def __init__(self, metrics: Metrics, experiment: str, arm: str) -> None:
        self._metrics, self._labels = metrics, (experiment, arm)
        self._requests: dict[str, Any] = {}
        self.duration = metrics.request_duration.labels(experiment, arm)
        self.ttft = metrics.ttft.labels(experiment, arm)
        self.prompt_tokens = metrics.tokens.labels(experiment, arm, "prompt")
        self.completion_tokens = metrics.tokens.labels(experiment, arm, "completion")
        self.cost = metrics.cost.labels(experiment, arm)

    def request(self, status: str) -> Any:
        child = self._requests.get(status)
        if child is None:
            child = self._requests[status] = self._metrics.requests.labels(*self._labels, status)
        return child


def _merge_tool_calls(slots: dict[int, dict[str, Any]], calls: list[dict[str, Any]]) -> None:
    """Streamed tool-call deltas → whole calls (arguments arrive in pieces)."""
    for call in calls:
        slot = slots.setdefault(
            call.get("index", 0), {"id": None, "type": "function", "function": {}}
        )
        slot["id"] = call.get("id") or slot["id"]
        fn, part = slot["function"], call.get("function") or {}
        if part.get("name"):
            fn["name"] = part["name"]
        fn["arguments"] = fn.get("arguments", "") + (part.get("arguments") or "")


@dataclass
class MoreChoice:
    """A choice past the first (``n > 1``): kept in the record, not in the metrics."""

    answer: list[str] = field(default_factory=list)
    tool_calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    finish_reason: str | None = None

    def choice(self, index: int) -> Choice:
        return {
            "index": index,
            "answer": "".join(self.answer),
            "tool_calls": [self.tool_calls[i] for i in sorted(self.tool_calls)] or None,
            "finish_reason": self.finish_reason,
        }

    def take(self, part: dict[str, Any], finish_reason: str | None, delta: bool) -> None:
        if isinstance(content := part.get("content"), str) and content:
            self.answer.append(content)
        calls = part.get("tool_calls") or []
        if delta:
            _merge_tool_calls(self.tool_calls, calls)
        else:
            self.tool_calls.update(enumerate(calls))
        self.finish_reason = finish_reason or self.finish_reason


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
    version: int = 0
    forced: bool = False
    unit: str | None = None  # the hashed user key the arm was assigned to (the decider's unit)
    user: str | None = None  # the x-flywheel-user header (the body's ``user`` comes first)
    workload: str | None = None  # metadata.workload, else the x-flywheel-workload header
    want_usage: bool = True
    limit_headers: dict[str, str] = field(default_factory=dict)  # x-ratelimit-*
    hold: Hold | None = None  # what the request holds of its budgets, settled at its end
    answer: list[str] = field(default_factory=list)
    tool_calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    finish_reason: str | None = None
    more: dict[int, MoreChoice] = field(default_factory=dict)  # choices 1… (n > 1)
    usage: dict[str, Any] | None = None
    ttft: float | None = None
    status: str = "ok"
    error: str | None = None
    done: bool = False  # saw the upstream's [DONE]
    relaying: bool = False  # the client's stream has started
    # A finishing chunk held back until the usage chunk we asked for (and remove) brings
    # the system_fingerprint vLLM puts there instead: sent with the next line.
    held: dict[str, Any] | None = None
    in_context: int | None = None  # how many in-context examples went in front (the target's)

    def record(self) -> InteractionRecord:
        params = {k: v for k, v in self.doc.items() if k not in ("messages", "model", "tools")}
        tools = self.doc.get("tools")
        return {
            "v": SCHEMA_VERSION,
            "id": self.id,
            "request_id": self.request_id,
            "created": int(time.time()),
            "experiment": self.experiment,
            "experiment_version": self.version,
            "forced": self.forced,
            "unit": self.unit,
            "arm": self.target.name,
            "assigned_arm": self.assigned.name,
            "fallback": self.target is not self.assigned,
            "upstream": self.target.upstream_name,
            "upstream_model": self.target.upstream_model,
            "user": self.doc.get("user") or self.user,
            "key_name": self.principal.name,
            "tenant": self.principal.tenant,
            "stream": self.stream,
            "messages": self.doc["messages"],
            "tools": tools if isinstance(tools, list) else None,
            "params": params,
            "answer": "".join(self.answer),
            "tool_calls": [self.tool_calls[i] for i in sorted(self.tool_calls)] or None,
            "choices": [c.choice(i) for i, c in sorted(self.more.items())] or None,
            "finish_reason": self.finish_reason,
            "usage": self.usage,
            "latency_ms": round((time.perf_counter() - self.t0) * 1000, 3),
            "ttft_ms": None if self.ttft is None else round((self.ttft - self.t0) * 1000, 3),
            "status": self.status,
            "error": self.error,
            "shadow_of": None,
            "judge_score": None,
            "workload": self.workload,
            "in_context": self.in_context,
        }

    def headers(self) -> dict[str, str]:
        h = {"x-request-id": self.request_id, "x-flywheel-arm": self.target.name}
        h.update(self.limit_headers)
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


class ChatService:
    def __init__(
        self,
        *,
        control: Control,
        upstream: UpstreamClient,
        ids: IdIssuer,
        log: InteractionLog,
        metrics: Metrics,
        keyring: KeyRing,
        limiter: RateLimiter,
        spend: Spend,
        max_body_bytes: int,
        judge: str | None = None,
        max_shadows: int = 64,
    ) -> None:
        self.control = control
        self.upstream = upstream
        self.ids = ids
        self.log = log
        self.metrics = metrics
        self.keyring = keyring
        self.max_body_bytes = max_body_bytes
        self.judge = judge
        self.limiter = limiter
        self.spend = spend
        self.max_shadows = max_shadows
        self._shadows: set[asyncio.Task[None]] = set()
        self._arm_metrics: dict[tuple[str, str], _ArmMetrics] = {}

    async def close(self) -> None:
        """Cancel shadow requests still running (they are best effort)."""
        for task in list(self._shadows):
            task.cancel()
        await asyncio.gather(*self._shadows, return_exceptions=True)

    async def handle(self, request: Request, request_id: str) -> Response:
        t0 = time.perf_counter()
        try:
            principal = self.keyring.authenticate(request.headers.get("authorization"))
            body = await read_body(request, self.max_body_bytes)
            doc = parse_chat_request(body)
            workload = workload_of(doc, request.headers.get(WORKLOAD_HEADER))
            user_key = (
                doc.get("user") or request.headers.get("x-flywheel-user") or secrets.token_hex(8)
            )
            force = request.headers.get("x-flywheel-arm")
            if force is not None and not principal.admin:
                raise PermissionDenied(
                    "x-flywheel-arm (forcing an arm) needs an admin key.", param="x-flywheel-arm"
                )
            route = self.control.router.resolve(
                doc["model"], user_key, force, None if principal.all_tenants else principal
            )
            limit_headers = await self.limiter.admit(principal)
            expected = estimate(doc, len(body), route.primary.price)
            hold = await self.spend.admit(principal, expected, bounded(doc))
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
            version=route.version,
            forced=route.forced,
            unit=hashlib.sha256(user_key.encode()).hexdigest()[:16] if route.experiment else None,
            user=request.headers.get("x-flywheel-user"),
            workload=workload,
            want_usage=not stream
            or (isinstance(options, dict) and options.get("include_usage") is True),
            limit_headers=limit_headers,
            hold=hold,
        )
        self.metrics.in_flight.inc()
        finished_here = True
        try:
            candidates = [route.primary] + ([route.fallback] if route.fallback else [])
            for i, target in enumerate(candidates):
                turn.target, turn.status, turn.error = target, "ok", None
                try:
                    if stream:
                        batches, first = await self._open_stream(turn)
                        finished_here = False
                        return RelayResponse(
                            self._relay(turn, batches, first, route),
                            abandon=partial(self._abandon, turn, batches),
                            done=lambda: turn.done,
                            headers=turn.headers(),
                        )
                    response = await self._complete(turn)
                    self._shadow(route, turn)
                    return response
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
                if turn.hold is not None:  # ended without an answer: release what it held
                    self.spend.settle(turn.hold, 0.0)

    def _payload(self, turn: Turn) -> bytes:
        out = dict(turn.doc)
        out["model"] = turn.target.upstream_model
        turn.in_context = None
        if turn.target.shots is not None:  # an in-context model: its examples go in front
            out["messages"], turn.in_context = turn.target.shots.messages(out["messages"])
        if turn.stream and not turn.want_usage:
            options = out.get("stream_options")
            out["stream_options"] = {
                **(options if isinstance(options, dict) else {}),
                "include_usage": True,
            }
        return orjson.dumps(out)

    async def _complete(self, turn: Turn) -> Response:
        call = await self.upstream.post(turn.target, self._payload(turn))
        raw = await self.upstream.read(call)
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
            for choice in choices[1:]:
                if isinstance(choice, dict) and isinstance(choice.get("index"), int):
                    more = turn.more.setdefault(choice["index"], MoreChoice())
                    more.take(choice.get("message") or {}, choice.get("finish_reason"), False)
        turn.usage = doc.get("usage")
        self._finish(turn, 200)
        return Response(orjson.dumps(doc), media_type="application/json", headers=turn.headers())

    async def _open_stream(self, turn: Turn) -> tuple[AsyncGenerator[list[bytes], None], bytes]:
        """Open the upstream stream and read until its first data line, while fallback is
        possible.

        Returns the rest of the stream (lists of lines, as they arrive) and what already
        came with the first data line, rewritten for the client.
        """
        call = await self.upstream.post(turn.target, self._payload(turn), stream=True)
        batches = self.upstream.batches(call)
        try:
            async for lines in batches:
                for i, line in enumerate(lines):
                    if line.startswith(b"data:"):
                        first = self._rewrite(turn, line)
                        if turn.status == "error":
                            raise UpstreamUnavailable(
                                f"The upstream '{turn.target.upstream_name}' failed: {turn.error}"
                            )
                        return batches, (first or b"") + self._rewrite_all(turn, lines[i + 1 :])
            raise UpstreamUnavailable(
                f"The upstream '{turn.target.upstream_name}' closed the stream before any data."
            )
        except GatewayError as exc:
            self.upstream.end(call, exc)  # a broken first chunk counts against the replica
            await batches.aclose()
            raise
        except BaseException:
            await batches.aclose()
            raise

    def _rewrite_all(self, turn: Turn, lines: list[bytes]) -> bytes:
        """The data lines that arrived together, rewritten as one write (up to an error)."""
        out = b""
        for line in lines:
            if line.startswith(b"data:"):
                rewritten = self._rewrite(turn, line)
                if rewritten:
                    out += rewritten
                elif turn.status == "error":
                    break
        return out

    def _rewrite(self, turn: Turn, line: bytes) -> bytes | None:
        """One upstream ``data:`` line → the bytes to send the client (None: send nothing)."""
        payload = line[5:].strip()
        if payload == b"[DONE]":
            turn.done = True
            return _release(turn) + b"data: [DONE]\n\n"
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
        # conform(chunk, "delta"), with its loop over the choices merged into the one below
        choices = chunk.get("choices")
        if "usage" in chunk:
            conform_usage(chunk["usage"])
            if turn.want_usage:
                if chunk["usage"]:
                    turn.usage = chunk["usage"]
            else:
                usage = chunk.pop("usage")
                if usage:
                    turn.usage = usage
        if not choices and not turn.want_usage:  # the usage chunk the client did not ask for
            if turn.held is not None and chunk.get("system_fingerprint"):
                turn.held["system_fingerprint"] = chunk["system_fingerprint"]
            return _release(turn) or None
        finishing = False
        for choice in choices or ():
            # conform_choice(choice, "delta") and, for choice 0, taking the delta's text
            # and tool calls into the turn, inlined: this runs for every chunk of every stream
            delta = choice.get("delta")
            if isinstance(delta, dict):
                if None in delta.values():
                    for name in _NON_NULLABLE_MESSAGE:
                        if name in delta and delta[name] is None:
                            del delta[name]
            else:
                delta = {}
            logprobs = choice.get("logprobs")
            if isinstance(logprobs, dict):
                logprobs.setdefault("refusal", None)
            finish_reason = choice.get("finish_reason")
            if finish_reason:
                finishing = True
            index = choice.get("index", 0)
            if index == 0:
                content = delta.get("content")
                if content:
                    turn.answer.append(content)
                calls = delta.get("tool_calls")
                if calls:
                    _merge_tool_calls(turn.tool_calls, calls)
                if turn.ttft is None and (content or calls):
                    turn.ttft = time.perf_counter()
                if finish_reason:
                    turn.finish_reason = finish_reason
            elif isinstance(index, int):
                more = turn.more.setdefault(index, MoreChoice())
                more.take(delta, finish_reason, True)
        earlier = _release(turn) if turn.held is not None else b""
        if finishing and not turn.want_usage and not chunk.get("system_fingerprint"):
            turn.held = chunk
            return earlier or None
        return earlier + b"data: " + orjson.dumps(chunk) + b"\n\n"

    async def _relay(
        self,
        turn: Turn,
        batches: AsyncGenerator[list[bytes], None],
        first: bytes,
        route: Route,
    ) -> AsyncGenerator[bytes, None]:
        status = 200
        turn.relaying = True
        try:
            if first:
                yield first
            if turn.status == "ok":
                async for lines in batches:
                    out = self._rewrite_all(turn, lines)
                    if out:
                        yield out
                    if turn.status == "error":
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
            await batches.aclose()
            self._finish(turn, status)
            self.metrics.in_flight.dec()
        self._shadow(route, turn)

    async def _abandon(self, turn: Turn, batches: AsyncGenerator[list[bytes], None]) -> None:
        """The client left before its stream started: release the upstream, log, count."""
        if turn.relaying:
            return  # the relay cleaned up itself
        await batches.aclose()
        turn.status, turn.error = "cancelled", "client disconnected"
        self._finish(turn, 499)
        self.metrics.in_flight.dec()

    def _finish(self, turn: Turn, status: int) -> None:
        exp, arm = turn.experiment or "", turn.target.name
        label = "cancelled" if status == 499 else status_class(status)
        am = self._arm_metrics.get((exp, arm))
        if am is None:
            am = self._arm_metrics[(exp, arm)] = _ArmMetrics(self.metrics, exp, arm)
        am.request(label).inc()
        am.duration.observe(time.perf_counter() - turn.t0)
        if turn.ttft is not None:
            am.ttft.observe(turn.ttft - turn.t0)
        amount = 0.0
        if turn.usage:
            spent = 0
            price = turn.target.price
            for kind, tokens in (
                ("prompt", am.prompt_tokens),
                ("completion", am.completion_tokens),
            ):
                n = turn.usage.get(f"{kind}_tokens")
                if isinstance(n, int):
                    tokens.inc(n)
                    spent += n
            if price is not None:
                amount = cost(turn.usage, price)
                am.cost.inc(amount)
                self.spend.charge(turn.principal, arm, amount, held=turn.hold is not None)
            self.limiter.charge(turn.principal, spent)
        if turn.hold is not None:
            self.spend.settle(turn.hold, amount)
        self.log.submit(turn.record())

    # -- shadow ---------------------------------------------------------------------------

    def _shadow(self, route: Route, turn: Turn) -> None:
        """Maybe copy an answered request to the experiment's shadow model, in the background."""
        shadow = route.shadow
        if shadow is None or turn.forced or turn.status != "ok":
            return
        if random.random() >= route.shadow_share:
            return
        exp = turn.experiment or ""
        if len(self._shadows) >= self.max_shadows:
            self.metrics.shadow_requests.labels(exp, shadow.name, "skipped").inc()
            return
        task = asyncio.create_task(self._run_shadow(shadow, turn))
        self._shadows.add(task)
        task.add_done_callback(self._shadows.discard)

    async def _run_shadow(self, shadow: Target, served: Turn) -> None:
        doc = {k: v for k, v in served.doc.items() if k not in ("stream", "stream_options")}
        turn = Turn(
            id=self.ids.new(),
            request_id=served.request_id,
            t0=time.perf_counter(),
            doc=doc,
            principal=served.principal,
            experiment=served.experiment,
            assigned=shadow,
            target=shadow,
            stream=False,
            version=served.version,
            user=served.user,
            workload=served.workload,
        )
        exp = served.experiment or ""
        try:
            call = await self.upstream.post(shadow, self._payload(turn))
            body = orjson.loads(await self.upstream.read(call))
            choice = body["choices"][0]
            turn.take_message(choice.get("message") or {})
            turn.finish_reason, turn.usage = choice.get("finish_reason"), body.get("usage")
        except (GatewayError, orjson.JSONDecodeError, KeyError, IndexError, TypeError) as exc:
            turn.status, turn.error = "error", getattr(exc, "message", repr(exc))
        self.metrics.shadow_requests.labels(exp, shadow.name, turn.status).inc()
        record = turn.record()
        record["shadow_of"] = served.id
        if turn.status == "ok" and self.judge:
            record["judge_score"] = score = await self._judge(served, turn)
            if score is not None:
                self.metrics.shadow_score.labels(exp, shadow.name).observe(score)
        self.log.submit(record)

    async def _judge(self, served: Turn, shadow: Turn) -> float | None:
        """The judge's verdict on the shadow answer against the served one, in [0, 1].

        Asked twice, with the answers in both orders, and averaged: a judge that favours
        whichever answer comes second (or first) then scores a tie, 0.5, not a win.
        None unless both verdicts came back.
        """
        try:
            route = self.control.router.resolve(self.judge or "", "judge")
        except GatewayError:
            return None
        question = "\n".join(
            f"{m.get('role')}: {m.get('content')}"
            for m in served.doc["messages"]
            if isinstance(m.get("content"), str)
        )
        served_text, shadow_text = "".join(served.answer), "".join(shadow.answer)
        second, first = await asyncio.gather(
            self._verdict(route.primary, question, served_text, shadow_text),  # shadow is B
            self._verdict(route.primary, question, shadow_text, served_text),  # shadow is A
        )
        if second is None or first is None:
            return None
        return (second + (1 - first)) / 2

    async def _verdict(self, judge: Target, question: str, a: str, b: str) -> float | None:
        """How good answer B is against answer A, in [0, 1] (None: no verdict)."""
        prompt = JUDGE_PROMPT.format(conversation=question, a=a, b=b)
        payload = {
            "model": judge.upstream_model,
            "temperature": 0,
            "max_tokens": 4,
            "messages": [{"role": "user", "content": prompt}],
        }
        try:
            call = await self.upstream.post(judge, orjson.dumps(payload))
            body = orjson.loads(await self.upstream.read(call))
            return judge_score(str(body["choices"][0]["message"]["content"]))
        except (GatewayError, orjson.JSONDecodeError, KeyError, IndexError, TypeError) as exc:
            log.warning("judge failed: %s", getattr(exc, "message", repr(exc)))
            return None


JUDGE_PROMPT = """You compare two answers to the same conversation.

{conversation}

Answer A:
{a}

Answer B:
{b}

How good is answer B compared with answer A? Reply with one digit from 1 to 5:
1 much worse, 2 worse, 3 as good, 4 better, 5 much better."""


def judge_score(reply: str) -> float | None:
    """The first digit 1–5 of a judge's reply, as a score in [0, 1] (None: no verdict)."""
    m = re.search(r"[1-5]", reply)
    return None if m is None else (int(m.group()) - 1) / 4


class RelayResponse(Response):
    """An SSE response written straight to the server, one write per upstream read, that
    always ends its relay, however the client's request ends.

    Starlette's ``StreamingResponse`` runs every response in an anyio task group to hear
    a disconnect (a fifth of a streamed request's CPU in ``bench/``); here one plain task
    waits for it and cancels the relay, whose cleanup (close the upstream, log the
    interaction) then runs — also when the relay never started. The write that carries
    ``[DONE]`` (``done()`` is true after it) also ends the response; the relay then
    finishes reading the upstream without the client waiting for it.
    """

    media_type = "text/event-stream"

    def __init__(
        self,
        relay: AsyncGenerator[bytes, None],
        *,
        abandon: Callable[[], Awaitable[None]],
        done: Callable[[], bool],
        headers: dict[str, str],
    ) -> None:
        self.status_code = 200
        self.background = None
        # headers, then the SSE ones and the content type (init_headers' work, done directly)
        self.raw_headers = [
            (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()
        ] + _SSE_RAW
        self._relay = relay
        self._abandon = abandon
        self._done = done

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        assert task is not None
        gone = complete = False

        async def watch() -> None:
            nonlocal gone
            while (await receive())["type"] != "http.disconnect":
                pass
            if not complete:  # (once complete, the server reports a disconnect anyway)
                gone = True
                task.cancel()

        # A stream that came whole with its first read (``[DONE]`` included) has nothing
        # left to wait for: no watcher then.
        watcher = None if self._done() else asyncio.create_task(watch())
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            async for data in self._relay:
                if not complete:
                    complete = self._done()
                    await send(
                        {"type": "http.response.body", "body": data, "more_body": not complete}
                    )
            if not complete:
                complete = True
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not gone:
                raise
            task.uncancel()  # the client left: this response is over, not the server
        finally:
            if watcher is not None:
                watcher.cancel()
            await self._relay.aclose()  # runs the relay's own cleanup if it started
            await self._abandon()  # cleans up if it never did


def _release(turn: Turn) -> bytes:
    """The held-back finishing chunk as an SSE event (b"" when none is held)."""
    held, turn.held = turn.held, None
    return b"data: " + orjson.dumps(held) + b"\n\n" if held is not None else b""


def _sse_error(exc: GatewayError) -> bytes:
    return b"data: " + orjson.dumps(exc.body()) + b"\n\n"
