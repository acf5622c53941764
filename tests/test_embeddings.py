"""Embeddings through the gateway, retrieval feedback, and ``retrain embed`` on the local stack.

A real vLLM serves the tiny embedding model (``--runner pooling``), a real gateway process
fronts it, and the official ``openai`` client calls it as an app would.
"""

from __future__ import annotations

import base64
import json
import os
import struct
import subprocess
import sys
import time
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis
import yaml

from flywheel_stack import VLLMServer, free_port
from gateway.core import keys
from retrain.feedback_log import interaction
from tests.conftest import ID_SECRET
from tests.retrieval_data import examples
from tests.services import GatewayProcess, RedisProcess

# vLLM's start-up on a busy 2-core machine can take minutes (counted in the first test)
pytestmark = pytest.mark.timeout(900)

KEY = "sk-shop-0123456789abcdef"
OTHER_KEY = "sk-other-shop-0123456789abcdef"
ADMIN_KEY = "sk-shop-admin-0123456789abcdef"
PRICE = {"prompt_per_1m": 1000.0, "completion_per_1m": 0.0}
SENTENCES = {
    "en": "Where is my order? It has not arrived yet.",
    "th": "คำสั่งซื้อของฉันยังไม่มาถึงเลย พัสดุอยู่ที่ไหนคะ",
    "vi": "Đơn hàng của tôi vẫn chưa đến. Gói hàng của tôi đang ở đâu?",
}


@pytest.fixture(scope="module")
def candidate_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def embed_gateway(
    vllm_embed: VLLMServer,
    redis_server: RedisProcess,
    candidate_port: int,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GatewayProcess]:
    config: dict[str, Any] = {
        "redis_url": redis_server.url,
        "id_secret": ID_SECRET,
        "auth": {
            "api_keys": [
                {"key": KEY, "name": "shop-app", "tenant": "shop"},
                {"key": OTHER_KEY, "name": "other-app", "tenant": "other"},
            ],
            "admin_keys": [{"key": ADMIN_KEY, "name": "shop-ops", "tenant": "shop"}],
        },
        "upstreams": {
            "embedder": {"kind": "vllm", "base_url": vllm_embed.base_url, "timeout_s": 60},
            # where the fine-tuned candidate is served once trained
            "embedder-ft": {
                "kind": "vllm",
                "base_url": f"http://127.0.0.1:{candidate_port}/v1",
                "timeout_s": 60,
            },
        },
        "models": {
            "embed": {"upstream": "embedder", "model": "embed", "price": PRICE},
            "embed-shop": {"upstream": "embedder", "model": "embed", "tenant": "shop"},
        },
        "experiments": {"embed-ab": {"arms": [{"model": "embed"}]}},
    }
    gw = GatewayProcess(config, tmp_path_factory.mktemp("embed-gateway")).start()
    yield gw
    gw.stop()


@pytest.fixture
def shop(embed_gateway: GatewayProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=embed_gateway.base_url, api_key=KEY, max_retries=0) as c:
        yield c


@pytest.fixture(scope="module")
def store(redis_server: RedisProcess) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


def _local(model_dir: Path) -> Any:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(model_dir), device="cpu")


def _cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / ((sum(x * x for x in a) * sum(y * y for y in b)) ** 0.5)


def _wait_record(store: redis.Redis, rid: str) -> Any:
    for _ in range(100):
        record = interaction(store, rid)
        if record is not None:
            return record
        time.sleep(0.1)
    raise AssertionError(f"{rid} never reached the interaction log")


def test_embeddings_string_array_and_base64_are_the_models_vectors_logged_and_charged(
    shop: openai.OpenAI,
    embed_gateway: GatewayProcess,
    tiny_embedder: Path,
    store: redis.Redis,
) -> None:
    local = _local(tiny_embedder)
    cost_before = embed_gateway.metric("flywheel_cost_total", arm="embed")

    one = shop.embeddings.create(model="embed", input=SENTENCES["en"], encoding_format="float")
    assert one.model == "embed" and len(one.data) == 1
    assert len(one.data[0].embedding) == 128
    expected = local.encode([SENTENCES["en"]])[0].tolist()
    assert _cosine(one.data[0].embedding, expected) > 0.999

    texts = [SENTENCES["en"], SENTENCES["th"], SENTENCES["vi"]]
    many = shop.embeddings.create(model="embed", input=texts, encoding_format="float")
    assert [d.index for d in many.data] == [0, 1, 2]
    for d, vector in zip(many.data, local.encode(texts), strict=True):
        assert _cosine(d.embedding, vector.tolist()) > 0.999

    raw = shop.embeddings.create(model="embed", input=texts, encoding_format="base64")
    for d, floats in zip(raw.data, many.data, strict=True):
        assert isinstance(d.embedding, str)
        decoded = struct.unpack("<128f", base64.b64decode(d.embedding))
        assert max(abs(x - y) for x, y in zip(decoded, floats.embedding, strict=True)) < 1e-6

    # the client's default (base64 on the wire, decoded by the client) gives the same
    default = shop.embeddings.create(model="embed", input=texts)
    assert _cosine(default.data[1].embedding, many.data[1].embedding) > 0.9999

    tokens = shop.embeddings.create(model="embed", input=[[5, 6, 7], [8, 9]])
    assert len(tokens.data) == 2

    # logged: the inputs and the usage, never the vectors
    response = httpx.post(
        embed_gateway.base_url + "/embeddings",
        json={"model": "embed", "input": texts, "user": "reader-1"},
        headers={"Authorization": f"Bearer {KEY}"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    record = _wait_record(store, body["id"])
    assert [m["content"] for m in record["messages"]] == texts
    assert record["params"]["endpoint"] == "embeddings"
    assert record["usage"]["prompt_tokens"] == body["usage"]["prompt_tokens"] > 0
    assert record["tenant"] == "shop" and record["user"] == "reader-1"
    assert record["arm"] == "embed" and record["experiment"] is None
    assert '"embedding"' not in json.dumps(record)  # no vector kept

    # charged: input tokens × the model's prompt price
    prompt_tokens = (
        sum(r.usage.prompt_tokens for r in (one, many, raw, default, tokens))
        + body["usage"]["prompt_tokens"]
    )
    cost = embed_gateway.metric("flywheel_cost_total", arm="embed") - cost_before
    assert cost == pytest.approx(prompt_tokens * PRICE["prompt_per_1m"] / 1e6)
    day = keys.PLAIN_KEYSPACE.spend_day(time.strftime("%Y-%m-%d", time.gmtime()))
    for _ in range(100):
        spent = store.hget(day, "m:embed")
        if spent is not None and float(spent) >= cost - 1e-9:
            break
        time.sleep(0.1)
    assert spent is not None and float(spent) == pytest.approx(cost, rel=1e-6, abs=1e-9)
    assert embed_gateway.metric("flywheel_tokens_total", arm="embed", kind="prompt") >= (
        prompt_tokens
    )


@pytest.mark.parametrize("language", ["en", "th", "vi"])
def test_a_text_in_nfd_gets_the_vector_of_the_same_text_in_nfc(
    shop: openai.OpenAI, language: str
) -> None:
    nfc = unicodedata.normalize("NFC", SENTENCES[language])
    nfd = unicodedata.normalize("NFD", SENTENCES[language])
    if language == "vi":  # (Thai letters have no decomposition: the same in both forms)
        assert nfc != nfd
    out = shop.embeddings.create(model="embed", input=[nfc, nfd], encoding_format="float")
    assert out.data[0].embedding == out.data[1].embedding
    assert out.usage.prompt_tokens % 2 == 0  # both cost the same tokens


def test_an_experiment_name_is_refused_for_embeddings(shop: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        shop.embeddings.create(model="embed-ab", input="hello")
    error = err.value.body
    assert isinstance(error, dict)
    assert error["code"] == "experiment_not_supported" and error["param"] == "model"
    assert "experiment" in error["message"] and "retrain embed" in error["message"]


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"model": "embed"}, "input", "required"),
        ({"model": "embed", "input": ""}, "input", "empty"),
        ({"model": "embed", "input": []}, "input", "empty"),
        ({"model": "embed", "input": ["ok", ""]}, "input", "empty"),
        ({"model": "embed", "input": ["ok", 3]}, "input", "token"),
        ({"model": "embed", "input": [[1, -2]]}, "input", "token"),
        ({"model": "embed", "input": {"text": "x"}}, "input", "string"),
        ({"model": "embed", "input": "x", "encoding_format": "int8"}, "encoding_format", "base64"),
        ({"model": "embed", "input": "x", "dimensions": 0}, "dimensions", "positive"),
        ({"model": "embed", "input": "x", "temperature": 1}, "temperature", "Unknown"),
        ({"input": "x"}, "model", "required"),
        ({"model": "nope", "input": "x"}, "model", "does not exist"),
    ],
)
def test_bad_embeddings_requests_get_a_clear_error(
    embed_gateway: GatewayProcess, body: dict[str, Any], param: str, words: str
) -> None:
    response = httpx.post(
        embed_gateway.base_url + "/embeddings",
        json=body,
        headers={"Authorization": f"Bearer {KEY}"},
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param and words in error["message"]


def test_dimensions_the_model_does_not_support_is_the_upstreams_clear_400(
    shop: openai.OpenAI,
) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        shop.embeddings.create(model="embed", input="hello", dimensions=32)
    assert (
        "dimensions" in str(err.value.body).lower() or "matryoshka" in str(err.value.body).lower()
    )


def test_embeddings_need_a_key(embed_gateway: GatewayProcess) -> None:
    response = httpx.post(
        embed_gateway.base_url + "/embeddings", json={"model": "embed", "input": "x"}
    )
    assert response.status_code == 401
    assert response.json()["error"]["message"]


def _feedback(gw: GatewayProcess, body: dict[str, Any], key: str = KEY) -> httpx.Response:
    return httpx.post(
        gw.base_url + "/feedback", json=body, headers={"Authorization": f"Bearer {key}"}
    )


def test_a_tenants_embedding_model_and_responses_are_its_own(
    embed_gateway: GatewayProcess, store: redis.Redis
) -> None:
    def embed(key: str, model: str) -> httpx.Response:
        return httpx.post(
            embed_gateway.base_url + "/embeddings",
            json={"model": model, "input": ["q", "p"]},
            headers={"Authorization": f"Bearer {key}"},
        )

    for key in (KEY, ADMIN_KEY):  # the tenant's client and admin keys
        assert embed(key, "embed-shop").status_code == 200
    refused = embed(OTHER_KEY, "embed-shop")
    assert refused.status_code == 400  # another tenant's model is unknown to it
    assert refused.json()["error"]["param"] == "model"
    assert "does not exist" in refused.json()["error"]["message"]
    mine = embed(KEY, "embed").json()["id"]
    before = store.xlen(keys.PLAIN_KEYSPACE.retrieval_stream)
    response = _feedback(embed_gateway, {"response_id": mine, "relevant": [1]}, key=OTHER_KEY)
    assert response.status_code == 404  # another tenant's response: not found
    assert store.xlen(keys.PLAIN_KEYSPACE.retrieval_stream) == before


def test_retrieval_feedback_by_index_and_text_is_stored_as_nfc_texts(
    shop: openai.OpenAI, embed_gateway: GatewayProcess, store: redis.Redis
) -> None:
    query = unicodedata.normalize("NFD", "Tôi có thể đổi cỡ không?")
    helped = "Có, bạn được đổi miễn phí một lần."
    other = "Miễn phí giao hàng cho đơn từ 500.000 đồng."
    out = shop.embeddings.create(model="embed", input=[query, helped, other])
    before = store.xlen(keys.PLAIN_KEYSPACE.retrieval_stream)
    response = _feedback(
        embed_gateway,
        {
            "response_id": out.id,
            "relevant": [1],
            "irrelevant": [unicodedata.normalize("NFD", other)],
        },
    )
    assert response.status_code == 201, response.text
    assert response.json()["relevant"] == 1 and response.json()["irrelevant"] == 1
    assert response.json()["score"] is None  # no rating given: none recorded
    assert store.xlen(keys.PLAIN_KEYSPACE.retrieval_stream) == before + 1
    _, fields = store.xrevrange(keys.PLAIN_KEYSPACE.retrieval_stream, count=1)[0]
    event = json.loads(fields[b"data"])
    assert event["query"] == unicodedata.normalize("NFC", query)
    assert event["relevant"] == [helped] and event["irrelevant"] == [other]
    assert event["tenant"] == "shop" and event["model"] == "embed"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({}, "rating"),
        ({"relevant": [7]}, "relevant"),
        ({"relevant": [-1]}, "relevant"),
        ({"relevant": "passage"}, "relevant"),
        ({"irrelevant": [""]}, "irrelevant"),
        ({"relevant": [True]}, "relevant"),
        ({"relevant": ["ok"], "query": " "}, "query"),
    ],
)
def test_bad_retrieval_feedback_gets_a_clear_error_and_stores_nothing(
    shop: openai.OpenAI,
    embed_gateway: GatewayProcess,
    store: redis.Redis,
    extra: dict[str, Any],
    param: str,
) -> None:
    out = shop.embeddings.create(model="embed", input=["query", "passage"])
    before = store.xlen(keys.PLAIN_KEYSPACE.retrieval_stream)
    response = _feedback(embed_gateway, {"response_id": out.id, **extra})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert store.xlen(keys.PLAIN_KEYSPACE.retrieval_stream) == before


@pytest.mark.timeout(2400)
def test_feedback_triples_train_a_candidate_that_beats_the_base_and_vllm_serves_it(
    shop: openai.OpenAI,
    embed_gateway: GatewayProcess,
    store: redis.Redis,
    tiny_embedder: Path,
    candidate_port: int,
    tmp_path: Path,
) -> None:
    """200 (query, passage) feedback triples in English and Thai → ``retrain embed`` →
    a candidate whose MRR@10 beats the base's (the interval's lower bound above 0),
    registered and served by vLLM through the gateway."""
    store.delete(keys.PLAIN_KEYSPACE.retrieval_stream)
    data = examples()
    assert len(data) == 200 and {e.language for e in data} == {"en", "th"}
    for n, e in enumerate(data):
        out = shop.embeddings.create(model="embed", input=[e.query, e.relevant, e.irrelevant])
        # half by index into the request's inputs, half by text
        body = (
            {"relevant": [1], "irrelevant": [2]}
            if n % 2
            else {"relevant": [e.relevant], "irrelevant": [e.irrelevant]}
        )
        response = _feedback(embed_gateway, {"response_id": out.id, **body})
        assert response.status_code == 201, response.text
    assert store.xlen(keys.PLAIN_KEYSPACE.retrieval_stream) == 200

    config = tmp_path / "retrain.yaml"
    settings = yaml.safe_load(embed_gateway.config_path.read_text())
    settings["retrain"] = {"gateway_url": embed_gateway.url, "admin_key": ADMIN_KEY}
    config.write_text(yaml.safe_dump(settings))
    candidate, report_path = tmp_path / "embed-ft", tmp_path / "report.json"
    started = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "retrain",
            "embed",
            "--base",
            str(tiny_embedder),
            "--out",
            str(candidate),
            "--model",
            "embed",
            "--register",
            "embed-ft",
            "--upstream",
            "embedder-ft",
            "--report",
            str(report_path),
            "--config",
            str(config),
        ],
        capture_output=True,
        text=True,
        timeout=1200,
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
    )
    took = time.monotonic() - started
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(report_path.read_text())
    print(f"retrain embed took {took:.0f} s: {json.dumps(report, ensure_ascii=False)}")
    assert report["triples"] == 200 and report["held_out_queries"] >= 10
    assert report["candidate"]["mrr@10"] > report["base"]["mrr@10"]
    assert report["mrr_gain"]["low"] > 0
    assert report["registered"] == "embed-ft"

    # the candidate, served by vLLM, through the gateway
    with VLLMServer(
        candidate,
        log_path=tmp_path / "vllm-ft.log",
        port=candidate_port,
        served_model_name="embed-ft",
        max_model_len=256,
        embed=True,
        startup_timeout=600,
    ):
        query = data[0].query
        served = shop.embeddings.create(model="embed-ft", input=[query], encoding_format="float")
        assert served.model == "embed-ft"
        trained = _local(candidate).encode([query])[0].tolist()
        base = _local(tiny_embedder).encode([query])[0].tolist()
        assert _cosine(served.data[0].embedding, trained) > 0.999
        assert _cosine(served.data[0].embedding, base) < 0.99  # not the base's vectors
