"""Ratings: accepted the instant a response ends, stored once per rater, never lost."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
import redis
import redis.asyncio as aioredis

from flywheel_stack import VLLMServer
from gateway.core import keys
from retrain.feedback_log import FeedbackConsumer

from .conftest import API_KEY, CLIENT, OTHER_TENANT_KEY, gateway_config
from .faulty_upstream import FaultyUpstream
from .services import GatewayProcess, RedisProcess

KS = keys.PLAIN_KEYSPACE  # these tests run on one Redis

HELLO = [{"role": "user", "content": "Can I return shoes after 20 days?"}]


def rate(gw: GatewayProcess, key: str = API_KEY, **body: Any) -> httpx.Response:
    return httpx.post(
        gw.base_url + "/feedback", json=body, headers={"Authorization": f"Bearer {key}"}
    )


def aggregate(url: str, experiment: str, arm: str) -> dict[str, float]:
    raw = redis.Redis.from_url(url).hgetall(KS.aggregate(experiment, arm))
    got = {k.decode(): float(v) for k, v in raw.items()}
    return {f: got.get(f, 0.0) for f in ("count", "score_sum", "failures", "corrections")}


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: round(after[k] - before[k], 6) for k in after}


def answer(client: openai.OpenAI, model: str = "default", user: str | None = None) -> str:
    kwargs = {"user": user} if user else {}
    return client.chat.completions.create(model=model, messages=HELLO, max_tokens=2, **kwargs).id


@pytest.mark.parametrize(
    ("rating", "score", "failure"),
    [("up", 1.0, 0), ("down", 0.0, 1), (1, 0.0, 1), (3, 0.5, 0), (5, 1.0, 0)],
)
def test_rating_is_stored_readable_and_aggregated(
    client: openai.OpenAI,
    gateway: GatewayProcess,
    redis_server: RedisProcess,
    rating: str | int,
    score: float,
    failure: int,
) -> None:
    before = aggregate(redis_server.url, "default", "base")
    rid = answer(client, user="u-rater")
    resp = rate(gateway, response_id=rid, rating=rating, comment="meh", tags=["policy"])
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert body["id"].startswith("fb-") and body["response_id"] == rid
    assert body["score"] == score and body["replaced"] is False
    assert body["rater"] == "u-rater"  # defaults to the rated request's user

    stored = httpx.get(gateway.base_url + f"/feedback/{rid}", headers=CLIENT).json()["data"]
    assert len(stored) == 1
    assert stored[0]["rating"] == rating and stored[0]["score"] == score
    assert stored[0]["comment"] == "meh" and stored[0]["tags"] == ["policy"]
    assert stored[0]["experiment"] == "default" and stored[0]["arm"] == "base"
    after = aggregate(redis_server.url, "default", "base")
    assert delta(after, before) == {
        "count": 1,
        "score_sum": score,
        "failures": failure,
        "corrections": 0,
    }


def test_correction_is_kept_and_counted(
    client: openai.OpenAI, gateway: GatewayProcess, redis_server: RedisProcess
) -> None:
    before = aggregate(redis_server.url, "default", "base")
    rid = answer(client)
    fix = "We offer 30-day returns on unworn shoes."
    assert rate(gateway, response_id=rid, rating="down", correction=fix).status_code == 201
    stored = httpx.get(gateway.base_url + f"/feedback/{rid}", headers=CLIENT).json()["data"]
    assert stored[0]["correction"] == fix
    assert delta(aggregate(redis_server.url, "default", "base"), before)["corrections"] == 1


def test_rerating_replaces_instead_of_double_counting(
    client: openai.OpenAI, gateway: GatewayProcess, redis_server: RedisProcess
) -> None:
    before = aggregate(redis_server.url, "default", "base")
    rid = answer(client)
    first = rate(gateway, response_id=rid, rating="up", user="u-1").json()
    second = rate(gateway, response_id=rid, rating="down", user="u-1").json()
    assert first["replaced"] is False and second["replaced"] is True
    assert first["id"] == second["id"]
    assert delta(aggregate(redis_server.url, "default", "base"), before) == {
        "count": 1,
        "score_sum": 0.0,
        "failures": 1,
        "corrections": 0,
    }
    other = rate(gateway, response_id=rid, rating="up", user="u-2").json()  # another rater
    assert other["replaced"] is False
    stored = httpx.get(gateway.base_url + f"/feedback/{rid}", headers=CLIENT).json()["data"]
    assert sorted((r["rater"], r["rating"]) for r in stored) == [("u-1", "down"), ("u-2", "up")]


def test_ratings_sent_the_instant_a_stream_ends_are_all_joined(
    client: openai.OpenAI, gateway: GatewayProcess
) -> None:
    with httpx.Client(headers=CLIENT) as http:
        for i in range(100):
            stream = client.chat.completions.create(
                model="ab", messages=HELLO, max_tokens=2, stream=True, user=f"s-{i}"
            )
            chunks = list(stream)
            resp = http.post(
                gateway.base_url + "/feedback",
                json={"response_id": chunks[0].id, "rating": "up"},
            )  # sent right after the last chunk arrived
            assert resp.status_code == 201, resp.text
            stored = http.get(gateway.base_url + f"/feedback/{chunks[0].id}").json()["data"]
            assert stored[0]["arm"] == chunks[0].model  # joined to its interaction


def test_rating_at_another_replica_waits_for_the_record(
    client: openai.OpenAI,
    gateway: GatewayProcess,
    vllm: VLLMServer,
    faulty: FaultyUpstream,
    redis_server: RedisProcess,
    tmp_path: Path,
) -> None:
    cfg = gateway_config(vllm.base_url, faulty.base_url, redis_server.url)
    replica = GatewayProcess(cfg, tmp_path / "replica").start()
    try:
        for _ in range(20):
            rid = answer(client)  # served by the first gateway
            assert rate(replica, response_id=rid, rating=4).status_code == 201
    finally:
        replica.stop()


def rate_all_at_once(gw: GatewayProcess, ids: list[str], rating: int) -> list[httpx.Response]:
    """One rating for each response, all sent concurrently."""

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(headers=CLIENT, timeout=30) as http:
            return await asyncio.gather(
                *(
                    http.post(gw.base_url + "/feedback", json={"response_id": r, "rating": rating})
                    for r in ids
                )
            )

    return asyncio.run(burst())


def test_200_concurrent_ratings_on_one_arm_are_all_counted(
    client: openai.OpenAI, gateway: GatewayProcess, redis_server: RedisProcess
) -> None:
    ids = [answer(client) for _ in range(200)]
    before = aggregate(redis_server.url, "default", "base")
    replies = rate_all_at_once(gateway, ids, rating=2)
    assert [(r.status_code, r.text) for r in replies if r.status_code != 201] == []
    d = delta(aggregate(redis_server.url, "default", "base"), before)
    assert d == {"count": 200, "score_sum": 50.0, "failures": 200, "corrections": 0}


def stream_length(url: str) -> int:
    return int(redis.Redis.from_url(url).xlen(KS.feedback_stream))


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"response_id": "chatcmpl-madeup", "rating": "up"}, 404, "response_id"),
        ({"rating": "up"}, 400, "response_id"),
        ({"rating": "meh"}, 400, "rating"),
        ({"rating": 0}, 400, "rating"),
        ({"rating": 6}, 400, "rating"),
        ({"rating": 2.5}, 400, "rating"),
        ({"rating": True}, 400, "rating"),
        ({}, 400, "rating"),
        ({"rating": "down", "correction": "x" * 32_001}, 400, "correction"),
        ({"rating": "down", "correction": "  "}, 400, "correction"),
        ({"rating": "down", "comment": "x" * 4001}, 400, "comment"),
        ({"rating": "up", "tags": "policy"}, 400, "tags"),
        ({"rating": "up", "tags": [f"t{i}" for i in range(17)]}, 400, "tags"),
        ({"rating": "up", "corection": "typo"}, 400, "corection"),
    ],
)
def test_bad_feedback_is_refused_and_nothing_is_stored(
    client: openai.OpenAI,
    gateway: GatewayProcess,
    redis_server: RedisProcess,
    body: dict[str, Any],
    status: int,
    param: str,
) -> None:
    rid = answer(client)
    if "response_id" not in body and param != "response_id":
        body = {"response_id": rid, **body}
    before = aggregate(redis_server.url, "default", "base"), stream_length(redis_server.url)
    resp = rate(gateway, **body)
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert err["param"] == param and err["message"]
    after = aggregate(redis_server.url, "default", "base"), stream_length(redis_server.url)
    assert after == before
    assert not redis.Redis.from_url(redis_server.url).exists(KS.feedback(rid))


def test_another_tenant_cannot_rate_or_read_a_response(
    client: openai.OpenAI, gateway: GatewayProcess
) -> None:
    rid = answer(client)
    assert rate(gateway, key=OTHER_TENANT_KEY, response_id=rid, rating="down").status_code == 404
    assert rate(gateway, response_id=rid, rating="up").status_code == 201
    theirs = httpx.get(
        gateway.base_url + f"/feedback/{rid}",
        headers={"Authorization": f"Bearer {OTHER_TENANT_KEY}"},
    )
    assert theirs.status_code == 404


def test_feedback_metrics_count_ratings_and_scores(
    client: openai.OpenAI, gateway: GatewayProcess
) -> None:
    labels = {"experiment": "default", "arm": "base"}
    before = gateway.metric("flywheel_feedback_total", rating="4", **labels)
    sum_before = gateway.metric("flywheel_feedback_score_sum", **labels)
    rate(gateway, response_id=answer(client), rating=4)
    assert gateway.metric("flywheel_feedback_total", rating="4", **labels) == before + 1
    assert gateway.metric("flywheel_feedback_score_sum", **labels) == sum_before + 0.75


def test_consumer_that_crashes_before_ack_loses_nothing_and_repeats_nothing(
    client: openai.OpenAI, gateway: GatewayProcess, redis_server: RedisProcess
) -> None:
    for _ in range(5):
        assert rate(gateway, response_id=answer(client), rating="down").status_code == 201
    r = redis.Redis.from_url(redis_server.url)
    group = f"test-{uuid.uuid4().hex[:8]}"
    everything = {sid.decode() for sid, _ in r.xrange(KS.feedback_stream)}

    crashed = FeedbackConsumer(r, KS, group=group, consumer="run-1", claim_idle_ms=0).read_all()
    assert {e.stream_id for e in crashed} == everything  # ...and then it dies without ack

    second = FeedbackConsumer(r, KS, group=group, consumer="run-2", claim_idle_ms=0)
    redelivered = second.read_all()
    assert sorted(e.stream_id for e in redelivered) == sorted(everything)  # each exactly once
    assert second.ack(redelivered) == len(everything)

    third = FeedbackConsumer(r, KS, group=group, consumer="run-3", claim_idle_ms=0)
    assert third.read_all() == []
    rid = answer(client)
    rate(gateway, response_id=rid, rating="up")
    fresh = third.read_all()
    assert [e.record["response_id"] for e in fresh] == [rid]  # only what is new


def test_ratings_survive_a_redis_restart(
    vllm: VLLMServer, faulty: FaultyUpstream, tmp_path: Path
) -> None:
    own = RedisProcess(tmp_path / "redis")
    own.start()
    gw = GatewayProcess(gateway_config(vllm.base_url, faulty.base_url, own.url), tmp_path / "gw")
    gw.start()
    try:
        c = openai.OpenAI(base_url=gw.base_url, api_key=API_KEY, max_retries=0)
        ids = [answer(c) for _ in range(10)]
        for i, rid in enumerate(ids):
            assert rate(gw, response_id=rid, rating=1 + i % 5).status_code == 201
        before = aggregate(own.url, "default", "base")
        own.stop()
        own.start()  # AOF replays everything it acknowledged
        for i, rid in enumerate(ids):
            resp = httpx.get(gw.base_url + f"/feedback/{rid}", headers=CLIENT)
            assert resp.status_code == 200, resp.text
            got = resp.json()["data"]
            assert [r["rating"] for r in got] == [1 + i % 5]
        assert aggregate(own.url, "default", "base") == before
        assert before["count"] == 10
    finally:
        gw.stop()
        own.stop()


def test_every_rating_acknowledged_before_a_kill_9_survives_with_aof_always(
    vllm: VLLMServer, faulty: FaultyUpstream, tmp_path: Path
) -> None:
    own = RedisProcess(tmp_path / "redis", appendfsync="always")  # as the chart and embedded
    own.start()
    gw = GatewayProcess(gateway_config(vllm.base_url, faulty.base_url, own.url), tmp_path / "gw")
    gw.start()
    try:
        with openai.OpenAI(base_url=gw.base_url, api_key=API_KEY, max_retries=0) as c:
            ids = [answer(c) for _ in range(50)]
        replies = rate_all_at_once(gw, ids, rating=5)
        own.kill()  # the instant the last 201 arrived: no shutdown, no final fsync
        acknowledged = [r.json()["response_id"] for r in replies if r.status_code == 201]
        assert len(acknowledged) == 50
        own.start()  # replays the AOF
        r = redis.Redis.from_url(own.url)
        assert all(r.hlen(KS.feedback(rid)) == 1 for rid in acknowledged)
        assert aggregate(own.url, "default", "base")["count"] == 50
    finally:
        gw.stop()
        own.stop()


def test_export_feedback_writes_interactions_with_their_ratings(
    client: openai.OpenAI, gateway: GatewayProcess, tmp_path: Path
) -> None:
    since = datetime.now(UTC)
    time.sleep(0.01)
    rid = answer(client, user="u-export")
    rate(gateway, response_id=rid, rating="down", correction="The right answer.")
    out = tmp_path / "export.jsonl"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "retrain",
            "export-feedback",
            "--since",
            since.isoformat(),
            "--out",
            str(out),
            "--config",
            str(gateway.config_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    rows = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert [row["response_id"] for row in rows] == [rid]
    assert rows[0]["interaction"]["messages"] == HELLO
    assert rows[0]["interaction"]["user"] == "u-export"
    assert rows[0]["ratings"][0]["correction"] == "The right answer."


def test_feedback_needs_an_api_key(gateway: GatewayProcess) -> None:
    resp = httpx.post(gateway.base_url + "/feedback", json={"response_id": "x", "rating": "up"})
    assert resp.status_code == 401


def test_stream_is_trimmed_by_retention_but_never_past_an_unacknowledged_event(
    tmp_path: Path,
) -> None:
    from gateway.serving.feedback import trim_feedback_stream

    own = RedisProcess(tmp_path / "redis")
    own.start()
    try:
        r = redis.Redis.from_url(own.url)
        ids = [r.xadd(KS.feedback_stream, {"data": b"{}"}).decode() for _ in range(6)]
        r.xgroup_create(KS.feedback_stream, "a", id="0")
        r.xgroup_create(KS.feedback_stream, "b", id="0")

        async def trim_now() -> None:
            aio = aioredis.Redis.from_url(own.url)
            try:
                await trim_feedback_stream(aio, KS, retention_s=0)
            finally:
                await aio.aclose()

        def trim() -> list[str]:
            asyncio.run(trim_now())
            return [sid.decode() for sid, _ in r.xrange(KS.feedback_stream)]

        assert trim() == ids  # nothing read by anyone yet: all kept despite retention 0
        for group in ("a", "b"):
            got = r.xreadgroup(group, "c", {KS.feedback_stream: ">"}, count=4)
            r.xack(KS.feedback_stream, group, *[sid for sid, _ in got[0][1]][:2])
        assert trim() == ids[2:]  # the 3rd and 4th are delivered but not acknowledged
        for group in ("a", "b"):
            r.xack(KS.feedback_stream, group, *ids[2:4])
        assert trim() == ids[4:]  # the last two were never delivered
        r.xgroup_create(KS.feedback_stream, "late", id="$")
        for group in ("a", "b"):
            r.xreadgroup(group, "c", {KS.feedback_stream: ">"})
            r.xack(KS.feedback_stream, group, *ids[4:])
        assert trim() == []
    finally:
        own.stop()
