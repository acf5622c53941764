"""Calling upstreams (vLLM or OpenAI): chat and embedding calls over the keep-alive
HTTP/1.1 client of ``http1.py``, the occasional ones (model lists, health probes, adapters)
over one aiohttp session.

Their exceptions are translated here and nowhere else:

* connection refused / reset / malformed response → :class:`UpstreamUnavailable` (502)
* a timeout → :class:`UpstreamTimeout` (504), naming which one: ``connect_timeout_s``
  (opening the connection), ``first_byte_timeout_s`` (a stream's headers and first data
  line), ``idle_timeout_s`` (silence between a stream's chunks) or ``timeout_s`` (the
  whole call)
* an error status from the upstream → :class:`UpstreamError` with its message; a 4xx
  keeps its status, a 5xx becomes 502.

``retryable`` tells the caller whether the experiment's fallback may try instead:
every failure except an upstream 4xx, which is the request's own fault.

Each call goes to one replica of its upstream (``replicas.py``) and is a :class:`Call`
from :meth:`UpstreamClient.post` until :meth:`UpstreamClient.end`: that is what
counts the replica's outstanding requests and feeds its circuit breaker.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from gateway.control.routing import Target
from gateway.core.config import Upstream
from gateway.core.errors import (
    GatewayError,
    NoReplicaAvailable,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.serving import http1
from gateway.serving.metrics import Metrics
from gateway.serving.replicas import NoReplica, Pool, Replica


class _Silence:
    """A stream's read deadline (first byte, then idle) kept by one timer for the whole
    stream instead of one per read: a wait only moves ``deadline``; the timer, when it
    fires early, re-arms itself at the deadline of the wait then running (none running: it
    waits for the next), and past it cancels the waiting task (``expired`` tells that
    cancellation from others)."""

    __slots__ = ("_armed_at", "_handle", "_loop", "_task", "deadline", "expired", "waiting")

    def __init__(self, loop: asyncio.AbstractEventLoop, deadline: float) -> None:
        self._loop, self.deadline, self._armed_at = loop, deadline, 0.0
        self._task: asyncio.Task[Any] | None = None
        self._handle: asyncio.TimerHandle | None = None
        self.expired = self.waiting = False

    def now(self) -> float:
        return self._loop.time()

    def wait_until(self, deadline: float) -> None:
        """A wait begins, in the current task, that must end by ``deadline``."""
        self.deadline, self.waiting, self._task = deadline, True, asyncio.current_task()
        if self._handle is None or deadline < self._armed_at:
            self._arm()

    def _arm(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._armed_at = self.deadline
        self._handle = self._loop.call_at(self.deadline, self._fire)

    def _fire(self) -> None:
        self._handle = None
        if not self.waiting or self._task is None:
            return  # the next wait arms it again
        if self._loop.time() >= self.deadline:
            self.expired = True
            self._task.cancel()
        else:
            self._arm()

    def done_waiting(self, cancelled: bool = False) -> bool:
        """The wait is over; True when it ended because its deadline passed."""
        self.waiting = False
        if cancelled and self.expired and self._task is not None:
            self.expired = False
            return self._task.uncancel() == 0
        return False

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


def retryable(exc: GatewayError) -> bool:
    return isinstance(exc, UpstreamUnavailable | UpstreamTimeout) or (
        isinstance(exc, UpstreamError) and exc.status >= 500
    )


def _translate(exc: BaseException, target: Target) -> GatewayError:
    where, up = f"upstream '{target.upstream_name}'", target.upstream
    if isinstance(exc, http1.ConnectTimeout | aiohttp.ConnectionTimeoutError):
        return UpstreamTimeout(
            f"The {where} did not accept a connection within {up.connect_timeout_s:g} s "
            "(connect_timeout_s)."
        )
    if isinstance(exc, asyncio.TimeoutError):
        return UpstreamTimeout(f"The {where} did not answer within {up.timeout_s:g} s (timeout_s).")
    return UpstreamUnavailable(f"The {where} is unavailable: {type(exc).__name__}: {exc}".strip())


def _error_from_body(status: int, raw: bytes, upstream_name: str) -> UpstreamError:
    message, etype, param, code = "", None, None, None
    try:
        doc: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        doc = None
    if isinstance(doc, dict):
        inner = doc.get("error")
        err: dict[str, Any] = inner if isinstance(inner, dict) else doc  # vLLM: both shapes
        message = str(err.get("message") or err.get("detail") or "")
        etype, param, code = err.get("type"), err.get("param"), err.get("code")
    if not message:
        message = raw[:500].decode("utf-8", "replace").strip() or f"HTTP {status}"
    if status >= 500:
        return UpstreamError(
            f"The upstream '{upstream_name}' failed with HTTP {status}: {message}",
            status=502,
            type="upstream_error",
            code="upstream_error",
        )
    return UpstreamError(
        message,
        status=status,
        type=str(etype) if etype else "invalid_request_error",
        param=str(param) if param is not None else None,
        code=str(code) if code is not None else None,
    )


@dataclass(eq=False)
class Call:
    """One upstream request in flight on one replica."""

    target: Target
    replica: Replica
    resp: http1.Response | None = None
    ended: bool = False
    first_byte_by: float | None = None  # a stream's deadline (loop time) for its first data
    started: float = field(default_factory=time.perf_counter)
    silence: _Silence | None = None  # a stream's one timer: first byte, then idle


def _auth(up: Upstream) -> dict[str, str]:
    key = up.api_key.get_secret_value()
    return {"Authorization": f"Bearer {key}"} if key else {}


# Sent with every chat and embedding call (besides the upstream's key): JSON in and out,
# and no content encoding asked for.
CALL_HEADERS = {
    "Content-Type": "application/json",
    "Accept": "application/json, text/event-stream",
    "User-Agent": "flywheel-gateway",
}


class UpstreamClient:
    def __init__(self, metrics: Metrics, upstreams: dict[str, Upstream]) -> None:
        self._metrics = metrics
        self._session: aiohttp.ClientSession | None = None
        self._http = http1.Client()
        self.pools = {name: Pool(name, up) for name, up in upstreams.items()}
        self._durations: dict[str, Any] = {}  # upstream → its upstream_duration series
        # What every chat call to an upstream sends the same: built once, not per request.
        self._headers = {
            name: http1.header_lines({**CALL_HEADERS, **_auth(up)})
            for name, up in upstreams.items()
        }

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=10, keepalive_timeout=30)
        self._session = aiohttp.ClientSession(
            connector=connector, json_serialize=lambda o: orjson.dumps(o).decode()
        )

    async def close(self) -> None:
        await self._http.close()
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "UpstreamClient.start() was not awaited"
        return self._session

    def failed(self, target: Target, exc: GatewayError) -> None:
        """Count a failed call in ``flywheel_upstream_errors_total`` by reason."""
        if isinstance(exc, NoReplicaAvailable):
            reason = "no_replica"
        elif isinstance(exc, UpstreamTimeout):
            reason = "timeout"
        elif isinstance(exc, UpstreamError):
            reason = f"http_{exc.status // 100}xx"
        else:
            reason = "unavailable"
        self._metrics.upstream_errors.labels(target.upstream_name, reason).inc()

    def end(self, call: Call, exc: GatewayError | None) -> None:
        """The call is over (once; later calls do nothing): free the slot, tell the breaker."""
        if call.ended:
            return
        call.ended = True
        call.replica.outstanding -= 1
        name = call.target.upstream_name
        duration = self._durations.get(name)
        if duration is None:  # labels() takes a lock and builds a key: once per upstream
            duration = self._durations[name] = self._metrics.upstream_duration.labels(name)
        duration.observe(time.perf_counter() - call.started)
        if exc is not None and retryable(exc):
            call.replica.breaker.failure(time.monotonic())
        else:
            call.replica.breaker.success()  # an answer, even a 4xx, means it is alive

    async def post(
        self, target: Target, payload: bytes, stream: bool = False, path: str = "/chat/completions"
    ) -> Call:
        """POST a chat completion (or, with ``path``, another request such as
        ``/embeddings``) to a replica; return the call (status 2xx) or raise.

        A stream must send its headers and first data line within ``first_byte_timeout_s``
        (the rest of that budget is :meth:`lines`' to enforce).
        """
        up = target.upstream
        try:
            replica = self.pools[target.upstream_name].pick(target.upstream_model, target.adapter)
        except NoReplica as exc:
            raise NoReplicaAvailable(f"The upstream is not available: {exc}.") from None
        replica.outstanding += 1
        call = Call(target, replica)
        silence = None  # a stream's deadline for its headers (no timer for the others)
        if stream:
            loop = asyncio.get_running_loop()
            call.first_byte_by = loop.time() + up.first_byte_timeout_s
            call.silence = silence = _Silence(loop, call.first_byte_by)
        try:
            try:
                request = self._http.request(
                    replica.url + path,
                    payload,
                    self._headers[target.upstream_name],
                    timeout_s=up.timeout_s,
                    connect_timeout_s=up.connect_timeout_s,
                )
                if silence is None:
                    resp = await request
                else:
                    silence.wait_until(silence.deadline)
                    try:
                        resp = await request
                    except asyncio.CancelledError:
                        if not silence.done_waiting(cancelled=True):
                            raise
                        raise self._silent(call, "first_byte") from None
                    silence.done_waiting()
                if resp.status >= 400:
                    try:
                        raw = await resp.read()
                    finally:
                        resp.release()
                    raise _error_from_body(resp.status, raw, target.upstream_name)
            except (TimeoutError, http1.HTTPError) as exc:
                raise _translate(exc, target) from exc
        except GatewayError as exc:
            if silence is not None:
                silence.close()
            self.end(call, exc)
            raise
        except BaseException:
            if silence is not None:
                silence.close()
            self.end(call, None)
            raise
        call.resp = resp
        return call

    async def read(self, call: Call) -> bytes:
        assert call.resp is not None
        failure: GatewayError | None = None
        try:
            return await call.resp.read()
        except (TimeoutError, http1.HTTPError) as exc:
            failure = _translate(exc, call.target)
            raise failure from exc
        finally:
            call.resp.release()
            self.end(call, failure)

    async def batches(self, call: Call) -> AsyncGenerator[list[bytes], None]:
        """The response body's complete lines (without ``\\n``/``\\r\\n``; blank ones left
        out), a list per read: what arrived together is relayed together, with one write to
        the client instead of one per line, and nothing waits for more bytes than it has.

        The generator owns the connection: read to the end, it goes back to the pool; left
        early (an error, the client gone, ``aclose``), it is closed, which stops the upstream
        generating.
        """
        resp = call.resp
        assert resp is not None
        buf = b""
        failure: GatewayError | None = None
        up, content = call.target.upstream, resp
        silence = call.silence  # None: not a stream, only timeout_s applies
        first_by = call.first_byte_by or 0.0
        idle = False  # a stream's first data line came: the idle timeout applies from now on
        try:
            while True:
                if silence is None:
                    chunk = await content.readany()
                elif chunk := content.read_nowait():
                    pass  # already here: nothing to wait for
                elif content.is_eof():
                    break
                else:
                    silence.wait_until(silence.now() + up.idle_timeout_s if idle else first_by)
                    try:
                        chunk = await content.readany()
                    except asyncio.CancelledError:
                        if not silence.done_waiting(cancelled=True):
                            raise
                        failure = self._silent(call, "idle" if idle else "first_byte")
                        raise failure from None
                    silence.done_waiting()
                if not chunk:
                    break
                if b"\n" not in chunk:
                    buf += chunk
                    continue
                parts = (buf + chunk if buf else chunk).split(b"\n")
                buf = parts.pop()
                lines = [p.rstrip(b"\r") for p in parts if p and p != b"\r"]
                if not lines:
                    continue
                if not idle and any(p.startswith(b"data:") for p in lines):
                    idle = True
                yield lines
            if buf.strip():
                yield [buf.rstrip(b"\r")]
        except (TimeoutError, http1.HTTPError) as exc:
            failure = _translate(exc, call.target)
            resp.close()
            raise failure from exc
        except BaseException:
            resp.close()  # drop the connection: that stops the upstream generating
            raise
        finally:
            if silence is not None:
                silence.close()
            self.end(call, failure)
        resp.release()  # read to the end: the connection goes back to the pool

    @staticmethod
    def _silent(call: Call, which: str) -> UpstreamTimeout:
        up, where = call.target.upstream, f"upstream '{call.target.upstream_name}'"
        if which == "idle":
            return UpstreamTimeout(
                f"The {where} sent nothing for {up.idle_timeout_s:g} s mid-stream (idle_timeout_s)."
            )
        return UpstreamTimeout(
            f"The {where} sent no data within {up.first_byte_timeout_s:g} s (first_byte_timeout_s)."
        )

    async def probe(self, pool: Pool, timeout_s: float = 2.0) -> str | None:
        """None when some replica answers ``GET /models`` with 200, else why not (``/readyz``)."""
        results = await asyncio.gather(
            *(self._probe(r.url, pool.upstream, timeout_s) for r in pool.replicas)
        )
        if any(r is None for r in results):
            return None
        return "; ".join(f"{rep.url}: {r}" for rep, r in zip(pool.replicas, results, strict=True))

    async def _probe(self, url: str, up: Upstream, timeout_s: float) -> str | None:
        try:
            async with self.session.get(
                url + "/models", headers=_auth(up), timeout=aiohttp.ClientTimeout(total=timeout_s)
            ) as resp:
                return None if resp.status == 200 else f"HTTP {resp.status}"
        except (TimeoutError, aiohttp.ClientError) as exc:
            return f"{type(exc).__name__}: {exc}".strip(": ")

    # -- what vLLM replicas serve, and LoRA adapters -------------------------------------

    async def list_models(self, pool: Pool, replica: Replica, timeout_s: float = 5.0) -> None:
        """Refresh ``replica.models`` (and adapters' parents); None when it cannot be listed."""
        try:
            async with self.session.get(
                replica.url + "/models",
                headers=_auth(pool.upstream),
                timeout=aiohttp.ClientTimeout(total=timeout_s),
            ) as resp:
                doc = await resp.json(loads=orjson.loads) if resp.status == 200 else None
        except (TimeoutError, aiohttp.ClientError, orjson.JSONDecodeError):
            doc = None
        data = doc.get("data") if isinstance(doc, dict) else None
        if not isinstance(data, list):
            replica.models = None
            return
        entries = [m for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)]
        replica.models = frozenset(m["id"] for m in entries)
        replica.parents = {m["id"]: str(m["parent"]) for m in entries if m.get("parent")}

    async def load_adapter(
        self, pool: Pool, replica: Replica, name: str, path: str
    ) -> tuple[bool, str]:
        """``POST /load_lora_adapter`` on one replica: (ok, message). Already loaded is ok."""
        return await self._admin_post(
            pool, replica, "/load_lora_adapter", {"lora_name": name, "lora_path": path}
        )

    async def unload_adapter(self, pool: Pool, replica: Replica, name: str) -> tuple[bool, str]:
        return await self._admin_post(pool, replica, "/unload_lora_adapter", {"lora_name": name})

    async def _admin_post(
        self, pool: Pool, replica: Replica, path: str, body: dict[str, str]
    ) -> tuple[bool, str]:
        try:
            async with self.session.post(
                replica.url + path,
                data=orjson.dumps(body),
                headers={"Content-Type": "application/json", **_auth(pool.upstream)},
                timeout=aiohttp.ClientTimeout(total=60),
            ) as resp:
                raw = await resp.read()
                status = resp.status
        except (TimeoutError, aiohttp.ClientError) as exc:
            return False, f"{replica.url} is unavailable: {type(exc).__name__}: {exc}"
        if status == 200:
            return True, raw.decode("utf-8", "replace").strip()
        message = _error_from_body(status, raw, pool.name).message
        if "already" in message.lower() and path == "/load_lora_adapter":
            return True, message  # another gateway replica loaded it first
        if status == 404 and "not found" == message.lower().strip("."):
            message += " (start vLLM with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True)"
        return False, f"{replica.url} answered HTTP {status}: {message}"
