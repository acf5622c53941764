"""Reading request bodies: JSON only, a size limit enforced while reading, one JSON object."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from starlette.requests import Request
from starlette.types import Scope

from gateway.core.errors import InvalidRequest, PayloadTooLarge, UnsupportedMediaType


def check_content_type(value: str | None) -> None:
    """A body is JSON: ``application/json`` (or ``…+json``), or no content type at all.

    Anything else — a form, ``text/plain``, a JSON body declared in another charset —
    is refused with 415 rather than parsed as if it were JSON.
    """
    if not value:
        return
    media, _, params = value.partition(";")
    media = media.strip().lower()
    if media != "application/json" and not (
        media.startswith("application/") and media.endswith("+json")
    ):
        raise UnsupportedMediaType(
            f"Content-Type '{value:.80}' is not supported: send 'application/json'.",
            param="content-type",
        )
    charset = params.lower().partition("charset=")[2].split(";")[0].strip().strip('"')
    if charset and charset not in ("utf-8", "utf8"):
        raise UnsupportedMediaType(
            f"Charset '{charset:.40}' is not supported: send 'application/json' in UTF-8.",
            param="content-type",
        )


def header_map(scope: Scope) -> dict[str, str]:
    """A request's headers by name, the first of each name (as Starlette's
    ``Headers.get`` answers): one pass over them instead of a scan per lookup, for the
    chat route, which looks up eight of them. The server gives names in lower case."""
    out = {}
    for name, value in reversed(scope["headers"]):
        out[name.decode("latin-1")] = value.decode("latin-1")
    return out


async def read_body(
    request: Request, limit: int, headers: Mapping[str, str] | None = None
) -> bytes:
    """The JSON body (see :func:`check_content_type`); ``headers``: the request's, when
    already at hand (:func:`header_map`)."""
    if headers is None:
        headers = request.headers
    check_content_type(headers.get("content-type"))
    return await read_bounded(request, limit, headers)


async def read_bounded(
    request: Request, limit: int, headers: Mapping[str, str] | None = None
) -> bytes:
    """The body, whatever its type, refused once it exceeds ``limit`` bytes."""
    declared = (request.headers if headers is None else headers).get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"Request body of {declared} bytes exceeds the limit of {limit}.")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"Request body exceeds the limit of {limit} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)


def json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, or InvalidRequest saying why not.

    orjson refuses invalid UTF-8, NaN/Infinity, numbers beyond a double or a 64-bit
    integer and nesting deeper than 1024 — each a 400 here, never a crash.
    """
    if not body:
        raise InvalidRequest("The request body is empty: send a JSON object.")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return doc
