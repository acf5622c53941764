"""The app factory. ``create_app(settings)`` is the only way an app is made.

Resources (Redis, the interaction-log writer, the upstream HTTP pool) are opened in
the lifespan and reach handlers through :func:`state`; no module holds any.

:func:`serving_app` is what uvicorn serves: the app, with ``POST /v1/chat/completions``
— every request's path — dispatched straight to the chat service instead of through
FastAPI's routing and exception middleware (which cost about a fifth of a request's CPU
in ``bench/``). Everything else goes to FastAPI.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import re
import signal
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Any

import orjson
import redis.asyncio as aioredis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from . import keys, store
from .admin import add_admin_routes
from .archive import default_url
from .auth import KeyRing
from .bodies import read_body
from .chat import ChatService
from .config import Limits, Settings
from .console import add_console
from .control import Control
from .errors import GatewayError, HeadersTooLarge, InvalidRequest, NotFound, error_response
from .feedback import FeedbackService, maintain
from .ids import IdIssuer, load_or_create_secret
from .interaction_log import InteractionLog
from .limits import RateLimiter
from .metrics import Metrics, ScrapeState, read_retrain
from .openapi import install as install_openapi
from .spend import Spend
from .upstream import UpstreamClient

log = logging.getLogger(__name__)

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


@dataclass
class GatewayState:
    settings: Settings
    metrics: Metrics
    redis: aioredis.Redis
    upstream: UpstreamClient
    control: Control
    chat: ChatService
    feedback: FeedbackService
    started: int
    draining: bool = False


def state(request: Request) -> GatewayState:
    st: GatewayState = request.app.state.gateway
    return st


def request_id(request: Request) -> str:
    rid = request.headers.get("x-request-id")
    if not rid or not _REQUEST_ID.match(rid):
        rid = uuid.uuid4().hex
    request.state.request_id = rid
    return rid


def gateway_error_response(exc: GatewayError, rid: str) -> Response:
    """The error in OpenAI's shape, with its headers, the request id and, for 401, the
    authentication scheme: for both the FastAPI handler and :func:`serving_app`."""
    if exc.status >= 500:  # ours or an upstream's failure: operators need the reason
        log.warning("request %s failed with %d %s: %s", rid, exc.status, exc.code, exc.message)
    headers = dict(exc.headers or {})
    headers.setdefault("x-request-id", rid)
    if exc.status == 401:
        headers["www-authenticate"] = "Bearer"
    return error_response(exc, headers)


def internal_error_response(rid: str, exc: Exception) -> Response:
    """A bug of ours: logged with its traceback, answered as a 500 in OpenAI's shape."""
    log.error("request %s failed", rid, exc_info=exc)
    return error_response(
        GatewayError("The gateway failed to handle the request."), {"x-request-id": rid}
    )


def _drain_on_sigterm(st: GatewayState, drain_s: float) -> None:
    """SIGTERM: readiness goes false at once; the server keeps serving for ``drain_s``,
    then uvicorn's own handler stops it (it stops accepting, lets in-flight requests
    finish within ``shutdown.grace_s``, and the lifespan's exit flushes the log).

    uvicorn installs its handler before the lifespan starts; this one wraps it. Outside
    uvicorn's main thread (tests' in-process apps) there is no handler to wrap.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    stop = signal.getsignal(signal.SIGTERM)
    if not callable(stop):
        return
    loop = asyncio.get_running_loop()

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        if st.draining:  # a second SIGTERM: stop now
            stop(signum, frame)
            return
        st.draining = True
        log.info("SIGTERM: draining for %g s, then stopping", drain_s)
        loop.call_soon_threadsafe(loop.call_later, drain_s, stop, signum, None)

    signal.signal(signal.SIGTERM, on_sigterm)


async def _bounded(what: str, step: Awaitable[None], seconds: float) -> None:
    t0 = time.monotonic()
    try:
        async with asyncio.timeout(seconds):
            await step
    except TimeoutError:
        log.error("shutdown: %s did not finish in %g s; going on", what, seconds)
        return
    if time.monotonic() - t0 > 0.5:
        log.info("shutdown: %s took %.2f s", what, time.monotonic() - t0)


async def _archive_loop(settings: Settings, url: str) -> None:
    """Background task: archive what Redis holds, when this process holds the archive lock
    (one archiver among all replicas and workers). Each pass runs in a thread."""
    import redis as sync_redis

    from .archive import Archive, Archiver

    cfg = settings.archive
    client = sync_redis.Redis.from_url(url, socket_timeout=60, socket_connect_timeout=5)
    archiver: Archiver | None = None
    try:
        while True:
            try:
                if archiver is None:
                    archive = await asyncio.to_thread(
                        Archive, default_url(settings.data_dir, cfg.url)
                    )
                    archiver = Archiver(client, archive, batch=cfg.batch, lock_ttl_s=cfg.lock_ttl_s)
                await asyncio.to_thread(archiver.run_once, True, cfg.max_wait_s)
            except Exception as exc:  # noqa: BLE001 - the next pass retries
                log.warning("archive pass failed: %s", exc)
            await asyncio.sleep(cfg.every_s)
    finally:
        if archiver is not None:
            with contextlib.suppress(Exception):
                archiver.release()
        client.close()


async def _count_tasks(metrics: Metrics, every_s: float = 1.0) -> None:
    while True:
        metrics.event_loop_tasks.set(len(asyncio.all_tasks()))
        await asyncio.sleep(every_s)


def allowed_methods(request: Request) -> str:
    """Every method some route serves at this request's path (for ``Allow`` with a 405)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        if isinstance(route, Route) and route.matches(request.scope)[0] is not Match.NONE:
            methods |= route.methods or set()
    return ", ".join(sorted(methods))


def create_app(settings: Settings) -> FastAPI:
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        secret = (
            settings.id_secret.get_secret_value().encode()
            if settings.id_secret
            else load_or_create_secret(settings.data_dir)
        )
        redis, embedded = await store.open_store(settings)
        upstream = UpstreamClient(metrics, settings.upstreams)
        await upstream.start()
        control = Control(redis=redis, settings=settings, upstream=upstream, metrics=metrics)
        await control.start()
        live = control.live
        keyring = KeyRing(
            settings.auth.api_keys, settings.auth.admin_keys, runtime=lambda: live.principals
        )
        if keyring.open:
            log.warning("no API key configured: the gateway accepts every request (dev only)")
        ilog = InteractionLog(
            redis,
            metrics,
            queue_size=settings.interaction_log.queue_size,
            batch_size=settings.interaction_log.batch_size,
            retention_s=settings.interaction_log.retention_days * 86400,
            hot_s=settings.interaction_log.hot_s,
            redact=settings.interaction_log.redact,
        )
        ilog.start()
        chat = ChatService(
            control=control,
            upstream=upstream,
            ids=IdIssuer(secret),
            log=ilog,
            metrics=metrics,
            keyring=keyring,
            limiter=RateLimiter(redis, metrics, fail_open=settings.auth.fail_open),
            spend=Spend(
                redis,
                metrics,
                tenant_budgets=lambda: live.tenant_budgets,
                fail_open=settings.auth.fail_open,
                sync_s=settings.auth.spend_sync_s,
            ),
            max_body_bytes=settings.limits.max_body_bytes,
            judge=settings.control.judge,
        )
        chat.spend.start()
        feedback = FeedbackService(
            redis=redis,
            ids=chat.ids,
            log=ilog,
            metrics=metrics,
            config=settings.feedback,
            max_age_s=settings.interaction_log.retention_days * 86400,
            hot_s=settings.interaction_log.hot_s,
            archive_url=default_url(settings.data_dir, settings.archive.url),
            fresh_s=max((u.timeout_s for u in settings.upstreams.values()), default=0)
            + settings.feedback.join_wait_s,
        )
        archiving = settings.archive.enabled
        maintenance = [
            asyncio.create_task(
                maintain(
                    redis,
                    settings.feedback,
                    lambda: list(control.router.experiments),
                    extra_groups=[keys.ARCHIVE_GROUP] if archiving else [],
                )
            ),
            asyncio.create_task(_count_tasks(metrics)),
        ]
        if archiving:
            url = embedded.url if embedded is not None else settings.redis_url or ""
            maintenance.append(asyncio.create_task(_archive_loop(settings, url)))
        app.state.gateway = GatewayState(
            settings, metrics, redis, upstream, control, chat, feedback, started=int(time.time())
        )
        # What exists now lives as long as the process: keep the collector from re-scanning
        # it, and collect the young generation less often (bench/FINDINGS.md: a full
        # collection of ~80k long-lived objects stalled the loop for ~56 ms, 33 times a run).
        gc.collect()
        gc.freeze()
        gc.set_threshold(20_000, 50, 100)
        _drain_on_sigterm(app.state.gateway, settings.shutdown.drain_s)
        try:
            yield
        finally:
            # Each step is bounded, so the process exits within its grace period even if
            # one hangs; the log says which did and how long each took.
            t_stop = time.monotonic()
            for task in maintenance:
                task.cancel()
            await _bounded("control tasks", control.stop(), 3)
            await _bounded("shadow requests", chat.close(), 3)
            await _bounded("rate-limit charges", chat.limiter.close(), 2)
            await _bounded("spend charges", chat.spend.close(), 2)
            await _bounded("interaction log flush", ilog.stop(), 6)  # flushes for up to 5 s
            await _bounded("upstream connections", upstream.close(), 2)
            await _bounded("Redis connections", redis.aclose(), 2)
            if embedded is not None:
                await asyncio.to_thread(embedded.stop)
            metrics.close()
            log.info("shutdown: done in %.2f s", time.monotonic() - t_stop)

    app = FastAPI(title="Flywheel gateway", version="0.1.0", lifespan=lifespan)
    app.state.metrics = metrics
    app.state.limits = settings.limits

    @app.exception_handler(GatewayError)
    async def on_gateway_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, GatewayError)
        return gateway_error_response(exc, getattr(request.state, "request_id", ""))

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        param = ".".join(str(p) for p in first["loc"] if p != "body") or None
        return error_response(InvalidRequest(f"{param}: {first['msg']}", param=param))

    @app.exception_handler(Exception)
    async def on_unexpected_error(request: Request, exc: Exception) -> Response:
        return internal_error_response(getattr(request.state, "request_id", ""), exc)

    @app.exception_handler(HTTPException)
    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        headers = dict(exc.headers or {})
        if exc.status_code == 404:
            err: GatewayError = NotFound(f"No route for {request.method} {request.url.path}.")
        else:
            err = GatewayError(
                str(exc.detail), status=exc.status_code, type="invalid_request_error"
            )
        if exc.status_code == 405:  # Starlette names only the first route's methods
            headers = {k: v for k, v in headers.items() if k.lower() != "allow"}
            headers["allow"] = allowed_methods(request)
            err.message = f"{request.method} is not allowed here: use {headers['allow']}."
            err.code = "method_not_allowed"
        return error_response(err, headers)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await state(request).chat.handle(request, request_id(request))

    @app.post("/v1/feedback", status_code=201)
    async def post_feedback(request: Request) -> Response:
        request_id(request)
        st = state(request)
        principal = st.chat.keyring.authenticate(request.headers.get("authorization"))
        body = await read_body(request, st.settings.limits.max_body_bytes)
        result = await st.feedback.rate(body, principal)
        return Response(orjson.dumps(result), status_code=201, media_type="application/json")

    @app.get("/v1/feedback/{response_id}")
    async def get_feedback(request: Request, response_id: str) -> Response:
        request_id(request)
        st = state(request)
        principal = st.chat.keyring.authenticate(request.headers.get("authorization"))
        data = await st.feedback.ratings(response_id, principal)
        return Response(
            orjson.dumps({"object": "list", "response_id": response_id, "data": data}),
            media_type="application/json",
        )

    @app.get("/v1/models")
    async def list_models(request: Request) -> Response:
        """What the key may call: its tenant's experiments and models and the shared ones."""
        st = state(request)
        who = st.chat.keyring.authenticate(request.headers.get("authorization"))
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
        return Response(
            orjson.dumps({"object": "list", "data": data}), media_type="application/json"
        )

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(request: Request) -> Response:
        st = state(request)
        if st.draining:
            body = {"status": "draining", "checks": {"shutdown": "SIGTERM received"}}
            return Response(orjson.dumps(body), status_code=503, media_type="application/json")
        ups = st.upstream.pools
        results = await asyncio.gather(
            store.ping(st.redis), *(st.upstream.probe(pool) for pool in ups.values())
        )
        checks = {"redis": results[0] or "ok"}
        checks.update({f"upstream:{n}": r or "ok" for n, r in zip(ups, results[1:], strict=True)})
        ready = results[0] is None and any(r is None for r in results[1:])
        body = {"status": "ready" if ready else "not ready", "checks": checks}
        return Response(
            orjson.dumps(body), status_code=200 if ready else 503, media_type="application/json"
        )

    @app.get("/metrics")
    async def prometheus_metrics(request: Request) -> Response:
        st = state(request)
        scrape = ScrapeState(retrain=await read_retrain(st.redis))
        for name, exp in st.control.router.experiments.items():
            total = sum(a.weight for a in exp.arms) or 1.0
            scrape.controls[name] = exp.control_arm
            for a in exp.arms:
                scrape.weights[(name, a.model)] = a.weight / total
                metrics.initialise_arm(name, a.model)
        for name, pool in st.upstream.pools.items():
            scrape.replicas.update({(name, s): n for s, n in pool.states().items()})
        return Response(
            metrics.render(scrape), media_type="text/plain; version=0.0.4; charset=utf-8"
        )

    add_admin_routes(app)
    add_console(app, settings)
    install_openapi(app, settings)

    return app


def serving_app(app: FastAPI) -> ASGIApp:
    """``app`` with the chat route dispatched directly (see the module's docstring)."""

    limits: Limits = app.state.limits

    async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (
            len(headers := scope["headers"]) > limits.max_headers
            or sum(len(k) + len(v) for k, v in headers) > limits.max_header_bytes
        ):
            # uvicorn's httptools parser sets no limit of its own.
            refused = HeadersTooLarge(
                f"The request's headers exceed the limit of {limits.max_headers} fields or "
                f"{limits.max_header_bytes} bytes (limits.max_headers, limits.max_header_bytes)."
            )
            await error_response(refused)(scope, receive, send)
            return
        if (
            scope["type"] != "http"
            or scope["path"] != "/v1/chat/completions"
            or scope["method"] != "POST"
        ):
            await app(scope, receive, send)
            return
        scope["app"] = app
        request = Request(scope, receive)
        rid = request_id(request)
        try:
            response = await state(request).chat.handle(request, rid)
        except GatewayError as exc:
            response = gateway_error_response(exc, rid)
        except Exception as exc:
            response = internal_error_response(rid, exc)
        await response(scope, receive, send)

    return asgi


def app_from_env() -> ASGIApp:
    """Factory for ``uvicorn --factory`` (used with several workers): config from the env."""
    from .config import load_settings

    return serving_app(create_app(load_settings()))
