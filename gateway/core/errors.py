"""One error hierarchy for the gateway, rendered once in OpenAI's error shape.

::

    GatewayError                      (status, OpenAI ``type``)
    ├── InvalidRequest                400 invalid_request_error
    │   └── UnknownModel              400 invalid_request_error, code model_not_found
    ├── AuthenticationFailed          401 authentication_error
    ├── PermissionDenied              403 permission_error
    ├── NotFound                      404 not_found_error
    ├── Conflict                      409 invalid_request_error (admin: state forbids it)
    ├── PayloadTooLarge               413 invalid_request_error
    ├── UnsupportedMediaType          415 invalid_request_error (a body that is not JSON)
    ├── RateLimited                   429 requests | tokens, code rate_limit_exceeded
    ├── QuotaExceeded                 429 insufficient_quota (a budget is spent)
    ├── HeadersTooLarge               431 invalid_request_error
    ├── UpstreamError                 the upstream's own 4xx/5xx, passed through
    ├── UpstreamUnavailable           502 upstream_error (refused, reset, malformed)
    │   └── NoReplicaAvailable        502 upstream_error (circuit open, adapter not loaded)
    ├── UpstreamTimeout               504 timeout_error
    └── StoreUnavailable              503 service_unavailable

Routes raise these; :func:`error_response` is the only place that builds error JSON.
Third-party exceptions (aiohttp, redis) are translated where they enter, in
``upstream.py`` and ``store.py``.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response


class GatewayError(Exception):
    status: int = 500
    type: str = "server_error"
    code: str | None = None
    headers: dict[str, str] | None = None  # extra response headers (request id, arm)

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        if type is not None:
            self.type = type

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"


class UnknownModel(InvalidRequest):
    code = "model_not_found"


class AuthenticationFailed(GatewayError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(GatewayError):
    status = 403
    type = "permission_error"


class NotFound(GatewayError):
    status = 404
    type = "not_found_error"


class Conflict(GatewayError):
    status = 409
    type = "invalid_request_error"
    code = "conflict"


class PayloadTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class HeadersTooLarge(GatewayError):
    status = 431
    type = "invalid_request_error"
    code = "request_header_fields_too_large"


class UnsupportedMediaType(GatewayError):
    status = 415
    type = "invalid_request_error"
    code = "unsupported_media_type"


class UpstreamError(GatewayError):
    """An upstream answered with an error status; we relay its status and message."""

    type = "upstream_error"


class UpstreamUnavailable(GatewayError):
    status = 502
    type = "upstream_error"
    code = "upstream_unavailable"


class NoReplicaAvailable(UpstreamUnavailable):
    code = "no_replica_available"


class UpstreamTimeout(GatewayError):
    status = 504
    type = "timeout_error"
    code = "upstream_timeout"


class RateLimited(GatewayError):
    status = 429
    type = "requests"  # OpenAI's: "requests" or "tokens", the limit that was reached
    code = "rate_limit_exceeded"


class QuotaExceeded(GatewayError):
    """A key's or tenant's budget is spent for the period (OpenAI's answer to the same)."""

    status = 429
    type = "insufficient_quota"
    code = "insufficient_quota"


class StoreUnavailable(GatewayError):
    status = 503
    type = "service_unavailable"
    code = "store_unavailable"


def error_response(exc: GatewayError, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(exc.body()),
        status_code=exc.status,
        media_type="application/json",
        headers=headers,
    )
