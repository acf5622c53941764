"""Every failure reaches the app in OpenAI's error shape, as the matching openai exception."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from .conftest import CLIENT
from .faulty_upstream import FaultyUpstream
from .helpers.errors import assert_openai_error
from .polling import eventually
from .services import GatewayProcess

HELLO = [{"role": "user", "content": "hi"}]


def test_bad_key_is_401(gateway: GatewayProcess) -> None:
    bad = openai.OpenAI(base_url=gateway.base_url, api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        bad.chat.completions.create(model="default", messages=HELLO)
    assert info.value.status_code == 401
    resp = httpx.post(gateway.base_url + "/chat/completions", json={})
    assert_openai_error(resp, 401)


def test_invalid_json_is_400(gateway: GatewayProcess) -> None:
    resp = httpx.post(
        gateway.base_url + "/chat/completions",
        content=b'{"model": "default", "messages": [',
        headers={**CLIENT, "Content-Type": "application/json"},
    )
    err = assert_openai_error(resp, 400)
    assert "not valid JSON" in err["message"]


def test_missing_messages_is_400_naming_messages(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.post("/chat/completions", body={"model": "default"}, cast_to=httpx.Response)
    assert info.value.param == "messages"  # type: ignore[attr-defined]


def test_unknown_model_is_400_naming_it(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="no-such-model", messages=HELLO)
    assert "no-such-model" in info.value.message
    assert info.value.code == "model_not_found"


def test_body_over_the_limit_is_413(client: openai.OpenAI) -> None:
    huge = [{"role": "user", "content": "x" * (9 * 1024 * 1024)}]
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="default", messages=huge)
    assert info.value.status_code == 413


def test_unreachable_upstream_is_502(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="gone", messages=HELLO)
    assert info.value.status_code == 502
    assert "unavailable" in info.value.message


def test_reset_connection_is_502(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="reset", messages=HELLO)
    assert info.value.status_code == 502


def test_upstream_500_is_502_with_its_message(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="http500", messages=HELLO)
    assert info.value.status_code == 502
    assert "engine exploded" in info.value.message


def test_upstream_timeout_is_504(client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="slow", messages=HELLO)
    # The upstream would answer after 5 s: a 504 means its 1 s timeout_s cut it off.
    assert info.value.status_code == 504


def test_upstream_4xx_passes_through_with_its_message(client: openai.OpenAI) -> None:
    # The tiny model's context is 512 tokens: vLLM itself refuses this request.
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="base", messages=HELLO, max_tokens=100_000)
    assert "max" in info.value.message.lower() or "context" in info.value.message.lower()


def test_client_disconnect_cancels_the_upstream_stream(
    gateway: GatewayProcess, faulty: FaultyUpstream
) -> None:
    with httpx.stream(
        "POST",
        gateway.base_url + "/chat/completions",
        headers=CLIENT,
        json={"model": "endless", "messages": HELLO, "stream": True},
    ) as resp:
        assert resp.status_code == 200
        for n, _ in enumerate(resp.iter_lines()):
            if n > 5:
                break
    eventually(
        lambda: faulty.stream_closed_at is not None,
        "the upstream stream is cancelled",
        timeout_s=3,
        every_s=0.02,
    )
    sent = faulty.chunks_sent
    time.sleep(0.2)  # the behaviour: a while passes and the upstream generates nothing more
    assert faulty.chunks_sent == sent  # nothing generated after the cancel


def test_upstream_failure_mid_stream_ends_with_an_sse_error(client: openai.OpenAI) -> None:
    got = []
    with (
        client.chat.completions.create(model="cutoff", messages=HELLO, stream=True) as stream,
        pytest.raises(openai.APIError) as info,
    ):
        for chunk in stream:
            got.append(chunk.choices[0].delta.content)
    assert got == ["x", "x", "x"]  # what arrived before the reset was relayed
    assert "unavailable" in info.value.message
