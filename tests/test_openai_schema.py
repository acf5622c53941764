"""Our response bodies have the shapes OpenAI's own API description gives for them.

Raw bodies from the real gateway (in front of real vLLM) are validated with ``jsonschema``
against the schemas of OpenAI's OpenAPI description (openai/openai-openapi), carried in
``tests/data/openai-openapi`` with its license (``FLYWHEEL_OPENAI_OPENAPI`` names another
copy).

The schemas are used as published, with one OpenAPI translation: ``nullable: true``
(OpenAPI 3.0) becomes "or null". The document says ``openapi: 3.1.0`` yet still carries
3.0's ``nullable`` (on a stream chunk's ``finish_reason``, ``logprobs`` and ``usage``, for
instance); read as plain 3.1 JSON schema those would reject OpenAI's own example chunks.
Extension keys (``x-...``) and ``discriminator`` are annotations and are ignored.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from .conftest import CLIENT
from .openapi_schema import Check
from .services import GatewayProcess

HELLO = [{"role": "user", "content": "Where is my order?"}]


def sse_chunks(gateway: GatewayProcess, **body: Any) -> list[Any]:
    """The JSON of every ``data:`` event of a streamed completion, up to ``[DONE]``."""
    request = {"model": "base", "messages": HELLO, "max_tokens": 8, "stream": True, **body}
    with httpx.stream(
        "POST", gateway.base_url + "/chat/completions", json=request, headers=CLIENT, timeout=60
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
    resp = httpx.get(gateway.base_url + "/models", headers=CLIENT)
    assert resp.status_code == 200
    check_schema("ListModelsResponse", resp.json())


@pytest.mark.parametrize(
    ("status", "headers", "content"),
    [
        (401, {"Authorization": "Bearer sk-wrong"}, {"model": "base", "messages": HELLO}),
        (400, CLIENT, {"model": "no-such-model", "messages": HELLO}),
        (400, CLIENT, b'{"model": "default", "messages": ['),
        (502, CLIENT, {"model": "gone", "messages": HELLO}),
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
