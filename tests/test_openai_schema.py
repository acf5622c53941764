"""Our response bodies have the shapes OpenAI's own API description gives for them.

Raw bodies from the real gateway (in front of real vLLM) are validated with ``jsonschema``
against the schemas of OpenAI's OpenAPI description (openai/openai-openapi), which lies
beside the repo at ``../shared/openai-openapi/openapi.yaml`` (``FLYWHEEL_OPENAI_OPENAPI``
overrides the path). Missing, the tests are skipped, with the reason — except under CI
(``CI`` set), where that fails the run.

The schemas are used as published, with one OpenAPI translation: ``nullable: true``
(OpenAPI 3.0) becomes "or null". The document says ``openapi: 3.1.0`` yet still carries
3.0's ``nullable`` (on a stream chunk's ``finish_reason``, ``logprobs`` and ``usage``, for
instance); read as plain 3.1 JSON schema those would reject OpenAI's own example chunks.
Extension keys (``x-...``) and ``discriminator`` are annotations and are ignored.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from jsonschema import Draft4Validator, Draft202012Validator
from jsonschema.exceptions import best_match
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4, DRAFT202012

from .conftest import API_KEY
from .services import GatewayProcess

SPEC = Path(__file__).resolve().parents[1].parent / "shared" / "openai-openapi" / "openapi.yaml"
SPEC_URI = "urn:openai-openapi"
HELLO = [{"role": "user", "content": "Where is my order?"}]
AUTH = {"Authorization": f"Bearer {API_KEY}"}
DATA_KEYWORDS = {"default", "enum", "const", "example", "examples"}  # values, not schemas
NAMED_SCHEMAS = {"properties", "patternProperties", "$defs", "definitions"}  # name -> schema

Check = Callable[[str, Any], None]


def or_null(schema: Any) -> Any:
    """A schema with OpenAPI 3.0's ``nullable: true`` as JSON schema: the same, or null."""
    if isinstance(schema, list):  # allOf, anyOf, oneOf, prefixItems
        return [or_null(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in NAMED_SCHEMAS and isinstance(value, dict):
            out[key] = {name: or_null(s) for name, s in value.items()}
        elif key in DATA_KEYWORDS or key.startswith("x-"):
            out[key] = value
        elif key != "nullable" or not isinstance(value, bool):
            out[key] = or_null(value)
    return {"anyOf": [out, {"type": "null"}]} if schema.get("nullable") is True else out


@pytest.fixture(scope="module")
def openapi() -> dict[str, Any]:
    """The OpenAPI document, its ``components/schemas`` made plain JSON schema."""
    path = Path(os.environ.get("FLYWHEEL_OPENAI_OPENAPI") or SPEC)
    if not path.is_file():
        reason = f"OpenAI's OpenAPI description is not at {path} (set FLYWHEEL_OPENAI_OPENAPI)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}: CI must check the OpenAI schemas", pytrace=False)
        pytest.skip(reason)
    with path.open("rb") as f:
        doc: dict[str, Any] = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    if not str(doc.get("openapi")).startswith(("3.0.", "3.1.")):
        pytest.fail(f"{path}: unsupported OpenAPI version {doc.get('openapi')!r}", pytrace=False)
    schemas = doc["components"]["schemas"]
    doc["components"]["schemas"] = {name: or_null(s) for name, s in schemas.items()}
    return doc


@pytest.fixture(scope="module")
def check_schema(openapi: dict[str, Any]) -> Check:
    """``check_schema(name, body)`` asserts ``body`` is a ``#/components/schemas/<name>``."""
    if openapi["openapi"].startswith("3.1."):
        validator_class, dialect = Draft202012Validator, DRAFT202012
    else:  # 3.0's schema object is draft-4/5 JSON schema
        validator_class, dialect = Draft4Validator, DRAFT4
    resource = Resource.from_contents(openapi, default_specification=dialect)
    registry: Registry[Any] = Registry().with_resource(SPEC_URI, resource)

    def check(name: str, body: Any) -> None:
        assert name in openapi["components"]["schemas"], f"no schema {name!r}"
        ref = {"$ref": f"{SPEC_URI}#/components/schemas/{name}"}
        # best_match looks into anyOf/oneOf for the branch that came nearest, and why it failed
        validator = validator_class(ref, registry=registry)
        errors = [best_match([e]) for e in validator.iter_errors(body)]
        assert not errors, f"{name} violated:\n" + "\n".join(
            f"  at /{'/'.join(map(str, e.absolute_path))}: {e.message}"
            f" (schema: {'/'.join(map(str, e.absolute_schema_path))})"
            for e in sorted(errors, key=lambda e: list(map(str, e.absolute_path)))
        )

    return check


def sse_chunks(gateway: GatewayProcess, **body: Any) -> list[Any]:
    """The JSON of every ``data:`` event of a streamed completion, up to ``[DONE]``."""
    request = {"model": "base", "messages": HELLO, "max_tokens": 8, "stream": True, **body}
    with httpx.stream(
        "POST", gateway.base_url + "/chat/completions", json=request, headers=AUTH, timeout=60
    ) as resp:
        assert resp.status_code == 200, resp.read()
        data = [line[5:].strip() for line in resp.iter_lines() if line.startswith("data:")]
    assert data and data[-1] == "[DONE]"
    return [json.loads(d) for d in data[:-1]]


@pytest.mark.parametrize(
    "name", ["CreateChatCompletionResponse", "CreateChatCompletionStreamResponse"]
)
def test_openais_own_examples_pass_and_a_wrong_shape_fails(
    openapi: dict[str, Any], check_schema: Check, name: str
) -> None:
    example = openapi["components"]["schemas"][name]["x-oaiMeta"]["example"]
    bodies = [json.loads(b) for b in example.split("\n\n") if b.strip().startswith("{")]
    assert bodies
    for body in bodies:
        check_schema(name, body)
    bodies[-1]["choices"][0]["finish_reason"] = "done"
    with pytest.raises(AssertionError, match="finish_reason"):
        check_schema(name, bodies[-1])


@pytest.mark.parametrize(
    "extra", [{}, {"logprobs": True, "top_logprobs": 2}], ids=["plain", "logprobs"]
)
def test_completion_body_is_a_create_chat_completion_response(
    client: openai.OpenAI, check_schema: Check, extra: dict[str, Any]
) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="default", messages=HELLO, max_tokens=8, **extra
    )
    check_schema("CreateChatCompletionResponse", raw.http_response.json())


@pytest.mark.parametrize(
    "extra",
    [{}, {"stream_options": {"include_usage": True}}, {"logprobs": True, "top_logprobs": 2}],
    ids=["plain", "include_usage", "logprobs"],
)
def test_every_streamed_chunk_is_a_create_chat_completion_stream_response(
    gateway: GatewayProcess, check_schema: Check, extra: dict[str, Any]
) -> None:
    chunks = sse_chunks(gateway, **extra)
    for chunk in chunks:
        check_schema("CreateChatCompletionStreamResponse", chunk)
    if "stream_options" in extra:
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]


def test_model_list_is_a_list_models_response(gateway: GatewayProcess, check_schema: Check) -> None:
    resp = httpx.get(gateway.base_url + "/models", headers=AUTH)
    assert resp.status_code == 200
    check_schema("ListModelsResponse", resp.json())


@pytest.mark.parametrize(
    ("status", "headers", "content"),
    [
        (401, {"Authorization": "Bearer sk-wrong"}, {"model": "base", "messages": HELLO}),
        (400, AUTH, {"model": "no-such-model", "messages": HELLO}),
        (400, AUTH, b'{"model": "default", "messages": ['),
        (502, AUTH, {"model": "gone", "messages": HELLO}),
    ],
    ids=["bad-key", "unknown-model", "invalid-json", "unreachable-upstream"],
)
def test_error_body_is_an_error_response(
    gateway: GatewayProcess,
    check_schema: Check,
    status: int,
    headers: dict[str, str],
    content: dict[str, Any] | bytes,
) -> None:
    body = content if isinstance(content, bytes) else json.dumps(content).encode()
    resp = httpx.post(
        gateway.base_url + "/chat/completions",
        content=body,
        headers={**headers, "Content-Type": "application/json"},
        timeout=60,
    )
    assert resp.status_code == status, resp.text
    check_schema("ErrorResponse", resp.json())
