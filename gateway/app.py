"""The app factory. ``create_app(settings)`` is the only way an app is made.

Resources (Redis, the interaction-log writer, the upstream HTTP pool) are opened in
the lifespan, on one exit stack: shutdown closes them in the reverse order, each step
bounded in time, and a failure at start-up closes what was already open before the
error ends the process. Handlers reach them through :func:`gateway.state.state`; no
module holds any. The routes are in :mod:`gateway.serving.routes` (public) and
:mod:`gateway.admin.admin`.

:func:`serving_app` is what ``gateway serve`` runs: the app, with
``POST /v1/chat/completions`` — every request's path — dispatched straight to the chat
service instead of through FastAPI's routing and exception middleware (which cost about
a fifth of a request's CPU in ``bench/``), and what belongs to the serving process
rather than to an app: once start-up is complete, the collector's settings and the
SIGTERM drain. Everything else goes to FastAPI. Header limits are a middleware of the
app and of the serving layer alike, so an app made by ``create_app`` alone (in-process
tests) refuses what ``gateway serve`` refuses.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from types import FrameType

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.admin import admin
from gateway.archiver import in_own_process, rss_mib
from gateway.console import add_console
from gateway.control.control import Control
from gateway.core import keys, store
from gateway.core.auth import KeyRing
from gateway.core.config import Limits, Settings
from gateway.core.errors import (
    GatewayError,
    HeadersTooLarge,
    InvalidRequest,
    NotFound,
    error_response,
)
from gateway.core.ids import IdIssuer, load_or_create_secret
from gateway.openapi import install as install_openapi
from gateway.openapi import mount
from gateway.ops.archive import default_url
from gateway.serving import routes as public
from gateway.serving.bodies import header_map
from gateway.serving.chat import ChatService
from gateway.serving.feedback import FeedbackService, maintain
from gateway.serving.interaction_log import InteractionLog
from gateway.serving.limits import RateLimiter
from gateway.serving.metrics import Metrics
from gateway.serving.routes import checked_request_id, request_id
from gateway.serving.spend import Spend
from gateway.serving.upstream import UpstreamClient
from gateway.state import GatewayState, app_state, state

log = logging.getLogger(__name__)

__all__ = ["GatewayState", "app_from_env", "create_app", "request_id", "serving_app", "state"]


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


class HeaderLimits:
    """Refuse a request whose headers exceed ``limits.max_headers`` fields or
    ``limits.max_header_bytes`` bytes with a 431 (uvicorn's httptools parser sets no limit
    of its own)."""

    def __init__(self, app: ASGIApp, limits: Limits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers, limits = scope["headers"], self.limits
            if (
                len(headers) > limits.max_headers
                or sum(len(k) + len(v) for k, v in headers) > limits.max_header_bytes
            ):
                refused = HeadersTooLarge(
                    f"The request's headers exceed the limit of {limits.max_headers} fields or "
                    f"{limits.max_header_bytes} bytes (limits.max_headers, "
                    "limits.max_header_bytes)."
                )
                await error_response(refused)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _drain_on_sigterm(st: GatewayState) -> None:
    """SIGTERM: readiness goes false at once; the server keeps serving for ``drain_s``,
    then uvicorn's own handler stops it (it stops accepting, lets in-flight requests
    finish within ``shutdown.grace_s``, and the lifespan's exit flushes the log).

    uvicorn installs its handler before the lifespan starts; this one wraps it (installed
    by :func:`serving_app` once start-up is complete). Outside uvicorn's main thread there
    is no handler to wrap.
    """
    drain_s = st.settings.shutdown.drain_s
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


async def _bounded(what: str, step: Callable[[], Awaitable[None]], seconds: float) -> None:
    t0 = time.monotonic()
    try:
        async with asyncio.timeout(seconds):
            await step()
    except TimeoutError:
        log.error("shutdown: %s did not finish in %g s; going on", what, seconds)
        return
    if time.monotonic() - t0 > 0.5:
        log.info("shutdown: %s took %.2f s", what, time.monotonic() - t0)


async def _archive_loop(settings: Settings, ks: keys.Keyspace, url: str) -> None:
    """Background task: archive what Redis holds, when this process holds the archive lock
    (one archiver among all replicas and workers). Each pass runs in a thread."""
    from gateway.ops.archive import Archiver, open_archive

    cfg = settings.archive
    client = store.connect_sync(url, cluster=ks.cluster, socket_timeout=60)
    archiver: Archiver | None = None
    wrote = False
    try:
        while True:
            try:
                if archiver is None:
                    archive = await asyncio.to_thread(open_archive, settings.data_dir, cfg)
                    archiver = Archiver(
                        client, ks, archive, batch=cfg.batch, lock_ttl_s=cfg.lock_ttl_s
                    )
                before = rss_mib()
                result = await asyncio.to_thread(archiver.run_once, True, cfg.max_wait_s)
                if result.files and not wrote:  # what archiving costs this process
                    wrote = True
                    log.info(
                        "archive: first files written (%d); RSS %.0f → %.0f MiB",
                        result.files,
                        before or 0,
                        rss_mib() or 0,
                    )
                # free between passes: any replica may take the next one, and a forget
                # (gateway/ops/forget.py) need not wait for this one to hand the lock over
                await asyncio.to_thread(archiver.release)
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
        stopping = [0.0]  # when shutdown began (the exit stack's last step reports it)

        def stopped() -> None:
            metrics.close()
            if stopping[0]:
                log.info("shutdown: done in %.2f s", time.monotonic() - stopping[0])

        def bounded(what: str, step: Callable[[], Awaitable[None]], seconds: float) -> None:
            stack.push_async_callback(_bounded, what, step, seconds)

        async with AsyncExitStack() as stack:
            # Each step is undone in the reverse order: at shutdown, each bounded, so the
            # process exits within its grace period even if one hangs (the log says which
            # did and how long each took); at a failed start-up, what was opened so far.
            stack.callback(stopped)
            ids = IdIssuer(
                settings.id_secret.get_secret_value().encode()
                if settings.id_secret
                else load_or_create_secret(settings.data_dir)
            )
            ks = store.keyspace(settings)  # the key names: every component gets this value
            redis, embedded = await store.open_store(settings)
            if embedded is not None:
                stack.push_async_callback(asyncio.to_thread, embedded.stop)
            bounded("Redis connections", redis.aclose, 2)
            upstream = UpstreamClient(metrics, settings.upstreams)
            await upstream.start()
            bounded("upstream connections", upstream.close, 2)
            ilog = InteractionLog(
                redis,
                metrics,
                ks=ks,
                queue_size=settings.interaction_log.queue_size,
                batch_size=settings.interaction_log.batch_size,
                retention_s=settings.interaction_log.retention_days * 86400,
                hot_s=settings.interaction_log.hot_s,
                redact=settings.interaction_log.redact,
            )
            ilog.start()
            bounded("interaction log flush", ilog.stop, 6)  # flushes for up to 5 s
            control = Control(
                redis=redis, ks=ks, settings=settings, upstream=upstream, metrics=metrics
            )
            live = control.live
            spend = Spend(
                redis,
                metrics,
                ks=ks,
                tenant_budgets=lambda: live.tenant_budgets,
                fail_open=settings.auth.fail_open,
                sync_s=settings.auth.spend_sync_s,
            )
            spend.start()
            bounded("spend charges", spend.close, 2)
            limiter = RateLimiter(redis, metrics, ks, fail_open=settings.auth.fail_open)
            bounded("rate-limit charges", limiter.close, 2)
            keyring = KeyRing(
                settings.auth.api_keys, settings.auth.admin_keys, runtime=lambda: live.principals
            )
            if keyring.open:
                log.warning("no API key configured: the gateway accepts every request (dev only)")
            chat = ChatService(
                control=control,
                upstream=upstream,
                ids=ids,
                log=ilog,
                metrics=metrics,
                keyring=keyring,
                limiter=limiter,
                spend=spend,
                max_body_bytes=settings.limits.max_body_bytes,
                judge=settings.control.judge,
            )
            bounded("shadow requests", chat.close, 3)
            bounded("language guesser", partial(asyncio.to_thread, control.languages.close), 3)
            await control.start()
            bounded("control tasks", control.stop, 3)
            feedback = FeedbackService(
                redis=redis,
                ks=ks,
                ids=ids,
                log=ilog,
                metrics=metrics,
                config=settings.feedback,
                max_age_s=settings.interaction_log.retention_days * 86400,
                hot_s=settings.interaction_log.hot_s,
                archive_url=default_url(settings.data_dir, settings.archive.url),
                archive_options=settings.archive.storage_options,
                fresh_s=max((u.timeout_s for u in settings.upstreams.values()), default=0)
                + settings.feedback.join_wait_s,
            )
            archiving = settings.archive.enabled
            maintenance = [
                asyncio.create_task(
                    maintain(
                        redis,
                        ks,
                        settings.feedback,
                        lambda: list(control.router.experiments),
                        extra_groups=[keys.ARCHIVE_GROUP] if archiving else [],
                    )
                ),
                asyncio.create_task(_count_tasks(metrics)),
            ]
            url = embedded.url if embedded is not None else settings.redis_url or ""
            if archiving and not in_own_process():  # (else gateway/archiver.py archives)
                maintenance.append(asyncio.create_task(_archive_loop(settings, ks, url)))
            for task in maintenance:
                stack.callback(task.cancel)
            app.state.gateway = GatewayState(
                settings,
                metrics,
                redis,
                ks,
                upstream,
                control,
                keyring,
                chat,
                feedback,
                started=int(time.time()),
                redis_url=url,
            )
            try:
                yield
            finally:
                stopping[0] = time.monotonic()

    app = FastAPI(title="Flywheel gateway", version="0.1.0", lifespan=lifespan)
    app.state.metrics = metrics
    app.state.limits = settings.limits
    app.add_middleware(HeaderLimits, limits=settings.limits)

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

    table = (*public.ROUTES, *admin.ROUTES)
    mount(app, table)
    add_console(app, settings)
    install_openapi(app, settings, table)

    return app


def _after_startup(app: FastAPI) -> None:
    """The serving process's own settings, once the app has opened everything."""
    # What exists now lives as long as the process: keep the collector from re-scanning
    # it, and collect the young generation less often (bench/FINDINGS.md: a full
    # collection of ~80k long-lived objects stalled the loop for ~56 ms, 33 times a run).
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)
    _drain_on_sigterm(app_state(app))


def serving_app(app: FastAPI) -> ASGIApp:
    """``app`` as ``gateway serve`` runs it (see the module's docstring)."""

    async def dispatch(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await app(scope, receive, _on_started(send, app))
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
        headers = header_map(scope)
        rid = checked_request_id(headers.get("x-request-id"))
        try:
            response = await app_state(app).chat.handle(request, rid, headers)
        except GatewayError as exc:
            response = gateway_error_response(exc, rid)
        except Exception as exc:
            response = internal_error_response(rid, exc)
        await response(scope, receive, send)

    return HeaderLimits(dispatch, app.state.limits)


def _on_started(send: Send, app: FastAPI) -> Send:
    async def on_send(message: Message) -> None:
        if message["type"] == "lifespan.startup.complete":
            _after_startup(app)
        await send(message)

    return on_send


def app_from_env() -> ASGIApp:
    """Factory for ``uvicorn --factory`` (used with several workers): config from the env."""
    from gateway.core.config import load_settings

    return serving_app(create_app(load_settings()))
