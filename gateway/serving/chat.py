"""``POST /v1/chat/completions``: admit the request, call the arm (with fallback), answer
or relay the stream, and log and charge what was served.

The parts live beside this module: the request as it is served and its interaction
record (``turn.py``), the stream's rewriting and its response (``relay.py``), shadow
copies and their judge (``shadow.py``).

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

import hashlib
import secrets
import time
from collections.abc import AsyncGenerator
from functools import partial

import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway.control.control import Control
from gateway.control.routing import Route
from gateway.core.auth import KeyRing
from gateway.core.errors import GatewayError, PermissionDenied, UpstreamUnavailable
from gateway.core.ids import IdIssuer
from gateway.serving.bodies import header_map, read_body
from gateway.serving.interaction_log import InteractionLog
from gateway.serving.limits import RateLimiter
from gateway.serving.metrics import ArmMetrics, Metrics, status_class
from gateway.serving.relay import RelayResponse, rewrite, rewrite_all, sse_error
from gateway.serving.shadow import Shadows
from gateway.serving.spend import Spend, bounded, cost, estimate
from gateway.serving.turn import MoreChoice, Turn, conform, payload
from gateway.serving.upstream import UpstreamClient, retryable
from gateway.serving.validation import WORKLOAD_HEADER, parse_chat_request, workload_of

__all__ = ["ChatService", "status_class"]  # status_class: also the embeddings route's


class JSONBytes(Response):
    """A JSON body already serialized, with the answer's headers: what Starlette's
    ``Response(body, media_type="application/json", headers=...)`` sends (the headers,
    then ``content-length`` and ``content-type``), its headers encoded directly."""

    media_type = "application/json"

    def __init__(self, body: bytes, headers: dict[str, str]) -> None:
        self.status_code = 200
        self.background = None
        self.body = body
        self.raw_headers = [
            (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()
        ]
        self.raw_headers += (
            (b"content-length", str(len(body)).encode("latin-1")),
            _JSON_TYPE,
        )


_JSON_TYPE = (b"content-type", b"application/json")


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
        self.limiter = limiter
        self.spend = spend
        self.shadows = Shadows(
            control=control, upstream=upstream, ids=ids, log=log, metrics=metrics,
            judge=judge, limit=max_shadows,
        )  # fmt: skip
        self._arm_metrics: dict[tuple[str, str], ArmMetrics] = {}

    async def close(self) -> None:
        """Cancel shadow requests still running (they are best effort)."""
        await self.shadows.close()

    async def handle(
        self, request: Request, request_id: str, headers: dict[str, str] | None = None
    ) -> Response:
        """Serve one chat request; ``headers``: its headers by name (:func:`header_map`),
        when the caller has them already."""
        t0 = time.perf_counter()
        if headers is None:
            headers = header_map(request.scope)
        user = headers.get("x-flywheel-user")
        try:
            principal = self.keyring.authenticate(headers.get("authorization"))
            body = await read_body(request, self.max_body_bytes, headers)
            doc = parse_chat_request(body)
            workload = workload_of(doc, headers.get(WORKLOAD_HEADER))
            user_key = doc.get("user") or user or secrets.token_hex(8)
            force = headers.get("x-flywheel-arm")
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
            user=user,
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
                    self.shadows.copy(route, turn)
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

    async def _complete(self, turn: Turn) -> Response:
        call = await self.upstream.post(turn.target, payload(turn))
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
        return JSONBytes(orjson.dumps(doc), turn.headers())

    async def _open_stream(self, turn: Turn) -> tuple[AsyncGenerator[list[bytes], None], bytes]:
        """Open the upstream stream and read until its first data line, while fallback is
        possible.

        Returns the rest of the stream (lists of lines, as they arrive) and what already
        came with the first data line, rewritten for the client.
        """
        call = await self.upstream.post(turn.target, payload(turn), stream=True)
        batches = self.upstream.batches(call)
        try:
            async for lines in batches:
                for i, line in enumerate(lines):
                    if line.startswith(b"data:"):
                        first = rewrite(turn, line)
                        if turn.status == "error":
                            raise UpstreamUnavailable(
                                f"The upstream '{turn.target.upstream_name}' failed: {turn.error}"
                            )
                        return batches, (first or b"") + rewrite_all(turn, lines[i + 1 :])
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
                    out = rewrite_all(turn, lines)
                    if out:
                        yield out
                    if turn.status == "error":
                        break
            if turn.status == "ok" and not turn.done:
                turn.status, turn.error = "error", "the upstream closed the stream early"
            if turn.status == "error":
                status = 502
                yield sse_error(UpstreamUnavailable(f"Upstream stream failed: {turn.error}"))
        except GatewayError as exc:  # reset or timeout mid-stream
            self.upstream.failed(turn.target, exc)
            turn.status, turn.error, status = "error", exc.message, exc.status
            yield sse_error(exc)
        except BaseException:  # the client went away: cancel the upstream, log what we had
            turn.status, turn.error, status = "cancelled", "client disconnected", 499
            raise
        finally:
            await batches.aclose()
            self._finish(turn, status)
            self.metrics.in_flight.dec()
        self.shadows.copy(route, turn)

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
            am = self._arm_metrics[(exp, arm)] = ArmMetrics(self.metrics, exp, arm)
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
