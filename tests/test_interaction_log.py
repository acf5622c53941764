"""Every completion is logged to Redis by its response id, and Redis outages cost no request."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis

from flywheel_stack import VLLMServer
from gateway.core import keys
from retrain import feedback_log

from .conftest import API_KEY, gateway_config
from .faulty_upstream import FaultyUpstream
from .served import Served, served_on, session_store
from .services import GatewayProcess, RedisProcess
from .stores import STORES, Store

HELLO = [{"role": "user", "content": "Can I return shoes?"}]


@pytest.fixture(scope="module", params=STORES)
def store(request: pytest.FixtureRequest) -> Store:
    return session_store(request)


@pytest.fixture(scope="module")
def served(
    request: pytest.FixtureRequest, store: Store, vllm: VLLMServer, faulty: FaultyUpstream
) -> Iterator[Served]:
    with served_on(request, store, vllm, faulty) as s:
        yield s


def wait_for_record(store: Store, response_id: str, timeout: float = 5.0) -> dict[str, Any]:
    with store.client() as r:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            doc = feedback_log.interaction(r, response_id)
            if doc is not None:
                return doc
            time.sleep(0.02)
    raise AssertionError(f"no interaction record for {response_id} after {timeout}s")


def test_completion_is_logged_with_messages_answer_arm_and_latency(served: Served) -> None:
    done = served.client.chat.completions.create(
        model="ab", messages=HELLO, max_tokens=8, user="u-log", temperature=0.5
    )
    rec = wait_for_record(served.store, done.id)
    assert rec["messages"] == HELLO
    assert rec["answer"] == done.choices[0].message.content
    assert rec["experiment"] == "ab" and rec["arm"] == done.model
    assert rec["user"] == "u-log" and rec["params"]["temperature"] == 0.5
    assert rec["latency_ms"] > 0 and rec["status"] == "ok"
    assert rec["usage"]["completion_tokens"] == done.usage.completion_tokens  # type: ignore[union-attr]
    with served.store.client() as r:
        ttl = r.ttl(keys.interaction(done.id))
    assert 23 * 3600 < ttl <= 86400  # the default hot window (interaction_log.hot_s)


def test_streamed_completion_is_logged_with_answer_ttft_and_usage(served: Served) -> None:
    chunks = list(
        served.client.chat.completions.create(
            model="base", messages=HELLO, max_tokens=8, stream=True
        )
    )
    rec = wait_for_record(served.store, chunks[0].id)
    assert rec["answer"] == "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert rec["stream"] is True and rec["ttft_ms"] is not None
    assert 0 < rec["ttft_ms"] <= rec["latency_ms"]
    assert rec["usage"]["completion_tokens"] > 0  # asked of vLLM even though the app did not


def test_failed_request_is_logged_with_its_error(served: Served) -> None:
    with pytest.raises(openai.InternalServerError) as info:
        served.client.chat.completions.create(model="http500", messages=HELLO)
    with served.store.client() as r:
        entries = r.xrevrange(served.store.ks.interaction_stream, count=20)
    ids = [fields[b"id"].decode() for _, fields in entries if fields[b"arm"] == b"http500"]
    assert ids, "the failed request was not logged"
    rec = wait_for_record(served.store, ids[0])
    assert rec["status"] == "error" and "engine exploded" in rec["error"]
    assert info.value.response.headers["x-flywheel-arm"] == "http500"


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    proc = RedisProcess(tmp_path / "redis")
    proc.start()
    yield proc
    proc.stop()


# On one Redis only: the test stops and restarts the one Redis the gateway writes to (a
# master of a cluster going away is a failover, test_cluster's business).
def test_redis_down_mid_run_costs_no_request_and_logging_resumes(
    vllm: VLLMServer, faulty: FaultyUpstream, own_redis: RedisProcess, tmp_path: Path
) -> None:
    cfg = gateway_config(
        vllm.base_url, faulty.base_url, own_redis.url, interaction_log={"queue_size": 3}
    )
    gw = GatewayProcess(cfg, tmp_path / "gw").start()
    own = Store(own_redis.url, False, (own_redis.port,))
    try:
        client = openai.OpenAI(base_url=gw.base_url, api_key=API_KEY, max_retries=0)

        def ask() -> str:
            return client.chat.completions.create(model="base", messages=HELLO, max_tokens=1).id

        wait_for_record(own, ask())
        own_redis.stop()
        answered = [ask() for _ in range(8)]  # the queue holds 3: the rest are dropped
        assert len(answered) == 8
        # One record is held by the writer, three by the queue: the other four are dropped.
        assert gw.metric("flywheel_log_dropped_total") == 4
        ready = httpx.get(gw.url + "/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["redis"] != "ok"

        own_redis.start()
        # What was buffered (one held by the writer, three queued) is written by itself...
        r = redis.Redis.from_url(own_redis.url)
        buffered = answered[:4]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not all(
            r.exists(keys.interaction(i)) for i in buffered
        ):
            time.sleep(0.05)
        assert all(r.exists(keys.interaction(i)) for i in buffered)
        assert not any(r.exists(keys.interaction(i)) for i in answered[4:])  # the dropped
        # ... and new requests are logged again.
        wait_for_record(own, ask())
    finally:
        gw.stop()
