"""Chat completions through the gateway, as an app sees them (official openai client)."""

from __future__ import annotations

import httpx
import openai

from flywheel_stack import VLLMServer

from .conftest import API_KEY
from .services import GatewayProcess

HELLO = [{"role": "user", "content": "Where is my order?"}]


def test_non_streaming_completion_has_gateway_id_and_usage(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="default", messages=HELLO, max_tokens=8, temperature=0
    )
    done = raw.parse()
    assert done.id.startswith("chatcmpl-")
    assert done.choices[0].message.content
    assert done.usage is not None and done.usage.completion_tokens > 0
    assert done.model == "base"
    assert raw.headers["x-flywheel-experiment"] == "default"
    assert raw.headers["x-flywheel-arm"] == "base"
    assert raw.headers["x-request-id"]


def test_response_ids_are_unique(client: openai.OpenAI) -> None:
    ids = {
        client.chat.completions.create(model="base", messages=HELLO, max_tokens=1).id
        for _ in range(5)
    }
    assert len(ids) == 5


def test_streamed_text_equals_the_non_streamed_answer(client: openai.OpenAI) -> None:
    args = {"model": "base", "messages": HELLO, "max_tokens": 16, "temperature": 0}
    whole = client.chat.completions.create(**args).choices[0].message.content
    chunks = list(client.chat.completions.create(stream=True, **args))
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole
    assert all(c.usage is None for c in chunks)  # not asked for: not sent


def test_a_stream_keeps_the_system_fingerprint_vllm_sends(
    client: openai.OpenAI, vllm: VLLMServer
) -> None:
    """vLLM stamps its fingerprint on the finishing chunk, or on the usage chunk when usage
    is asked for — which the gateway always asks for, then removes."""
    args = {"model": "base", "messages": HELLO, "max_tokens": 8, "stream": True}
    with openai.OpenAI(base_url=vllm.base_url, api_key="-") as direct:
        fingerprints = {c.system_fingerprint for c in direct.chat.completions.create(**args)}
    fingerprint = (fingerprints - {None}).pop()
    chunks = list(client.chat.completions.create(**args))
    assert chunks[-1].choices[0].finish_reason and chunks[-1].system_fingerprint == fingerprint
    assert all(c.usage is None for c in chunks)


def test_streaming_usage_when_asked(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="base",
            messages=HELLO,
            max_tokens=8,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


async def test_async_client_streams_and_completes(gateway: GatewayProcess) -> None:
    async with openai.AsyncOpenAI(base_url=gateway.base_url, api_key=API_KEY) as aclient:
        done = await aclient.chat.completions.create(model="default", messages=HELLO, max_tokens=4)
        assert done.id.startswith("chatcmpl-")
        stream = await aclient.chat.completions.create(
            model="default", messages=HELLO, max_tokens=4, stream=True
        )
        deltas = [c async for c in stream]
    assert deltas and deltas[0].id.startswith("chatcmpl-")


def test_adapter_model_is_served_by_its_name(client: openai.OpenAI) -> None:
    args = {"messages": HELLO, "max_tokens": 16, "temperature": 0}
    base = client.chat.completions.create(model="base", **args)
    tuned = client.chat.completions.create(model="support-v1", **args)
    assert tuned.model == "support-v1"
    # The untrained random adapter changes the greedy answer: vLLM really applied it.
    assert tuned.choices[0].message.content != base.choices[0].message.content


def test_experiment_arm_is_sticky_per_user_and_both_arms_serve(client: openai.OpenAI) -> None:
    arms: dict[str, set[str]] = {}
    for i in range(24):
        user = f"user-{i % 12}"
        raw = client.chat.completions.with_raw_response.create(
            model="ab", messages=HELLO, max_tokens=1, user=user
        )
        arms.setdefault(user, set()).add(raw.headers["x-flywheel-arm"])
    assert all(len(seen) == 1 for seen in arms.values())  # same user, same arm
    assert set().union(*arms.values()) == {"base", "support-v1"}


def test_user_header_routes_when_no_user_field(gateway: GatewayProcess) -> None:
    seen = {
        httpx.post(
            gateway.base_url + "/chat/completions",
            headers={"Authorization": f"Bearer {API_KEY}", "x-flywheel-user": "u-7"},
            json={"model": "ab", "messages": HELLO, "max_tokens": 1},
        ).headers["x-flywheel-arm"]
        for _ in range(4)
    }
    assert len(seen) == 1


def test_fallback_answers_when_the_arm_upstream_is_down(
    client: openai.OpenAI, gateway: GatewayProcess
) -> None:
    before = gateway.metric(
        "flywheel_fallbacks_total", experiment="broken-arm", arm="gone", fallback="base"
    )
    raw = client.chat.completions.with_raw_response.create(
        model="broken-arm", messages=HELLO, max_tokens=4
    )
    # The tiny model's sampled tokens may decode to nothing: that an answer came is the point.
    assert raw.parse().choices[0].finish_reason in ("length", "stop")
    assert raw.headers["x-flywheel-arm"] == "base"
    assert raw.headers["x-flywheel-fallback-from"] == "gone"
    after = gateway.metric(
        "flywheel_fallbacks_total", experiment="broken-arm", arm="gone", fallback="base"
    )
    assert after == before + 1
    assert gateway.metric("flywheel_upstream_errors_total", upstream="dead") >= 1


def test_streaming_fallback_before_the_first_byte(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="broken-arm", messages=HELLO, max_tokens=4, stream=True
        )
    )
    assert chunks and chunks[0].model == "base"


def test_models_lists_experiments_and_models(client: openai.OpenAI, vllm: VLLMServer) -> None:
    ids = [m.id for m in client.models.list()]
    assert {"default", "ab", "broken-arm", "base", "support-v1"} <= set(ids)
