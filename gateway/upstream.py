"""Calling upstreams (vLLM or OpenAI) over one pooled, keep-alive aiohttp session.

aiohttp exceptions are translated here and nowhere else:

* connection refused / reset / malformed response → :class:`UpstreamUnavailable` (502)
* connect or total timeout → :class:`UpstreamTimeout` (504)
* an error status from the upstream → :class:`UpstreamError` with its message; a 4xx
  keeps its status, a 5xx becomes 502.

``retryable`` tells the caller whether the experiment's fallback may try instead:
every failure except an upstream 4xx, which is the request's own fault.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

from .errors import GatewayError, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from .metrics import Metrics
from .routing import Target


def retryable(exc: GatewayError) -> bool:
    return isinstance(exc, UpstreamUnavailable | UpstreamTimeout) or (
        isinstance(exc, UpstreamError) and exc.status >= 500
    )


def _translate(exc: BaseException, target: Target) -> GatewayError:
    where = f"upstream '{target.upstream_name}'"
    if isinstance(exc, asyncio.TimeoutError):
        return UpstreamTimeout(
            f"The {where} did not answer within {target.upstream.timeout_s:g} s."
        )
    return UpstreamUnavailable(f"The {where} is unavailable: {type(exc).__name__}: {exc}".strip())


def _error_from_body(status: int, raw: bytes, target: Target) -> UpstreamError:
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
            f"The upstream '{target.upstream_name}' failed with HTTP {status}: {message}",
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


class UpstreamClient:
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=10, keepalive_timeout=30)
        self._session = aiohttp.ClientSession(
            connector=connector, json_serialize=lambda o: orjson.dumps(o).decode()
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "UpstreamClient.start() was not awaited"
        return self._session

    def failed(self, target: Target, exc: GatewayError) -> None:
        reason = (
            "timeout"
            if isinstance(exc, UpstreamTimeout)
            else (
                f"http_{exc.status // 100}xx" if isinstance(exc, UpstreamError) else "unavailable"
            )
        )
        self._metrics.upstream_errors.labels(target.upstream_name, reason).inc()

    async def post(self, target: Target, payload: bytes) -> aiohttp.ClientResponse:
        """POST a chat completion; return the open response (status 2xx) or raise."""
        up = target.upstream
        headers = {"Content-Type": "application/json"}
        if up.api_key.get_secret_value():
            headers["Authorization"] = f"Bearer {up.api_key.get_secret_value()}"
        timeout = aiohttp.ClientTimeout(total=up.timeout_s, connect=up.connect_timeout_s)
        try:
            resp = await self.session.post(
                up.base_url.rstrip("/") + "/chat/completions",
                data=payload,
                headers=headers,
                timeout=timeout,
            )
            if resp.status >= 400:
                try:
                    raw = await resp.read()
                finally:
                    resp.release()
                raise _error_from_body(resp.status, raw, target)
            return resp
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _translate(exc, target) from exc

    async def read(self, target: Target, resp: aiohttp.ClientResponse) -> bytes:
        try:
            return await resp.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _translate(exc, target) from exc
        finally:
            resp.release()

    async def lines(self, target: Target, resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
        """The response body split into lines (without ``\\n``/``\\r\\n``), as they arrive."""
        buf = b""
        try:
            while True:
                chunk = await resp.content.readany()
                if not chunk:
                    break
                buf += chunk
                while (nl := buf.find(b"\n")) >= 0:
                    line, buf = buf[:nl], buf[nl + 1 :]
                    yield line.rstrip(b"\r")
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _translate(exc, target) from exc
        if buf.strip():
            yield buf.rstrip(b"\r")

    async def probe(self, base_url: str, api_key: str, timeout_s: float = 2.0) -> str | None:
        """None when ``GET {base_url}/models`` answers 200, else why not (for ``/readyz``)."""
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        try:
            async with self.session.get(
                base_url.rstrip("/") + "/models",
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout_s),
            ) as resp:
                return None if resp.status == 200 else f"HTTP {resp.status}"
        except (TimeoutError, aiohttp.ClientError) as exc:
            return f"{type(exc).__name__}: {exc}".strip(": ")
