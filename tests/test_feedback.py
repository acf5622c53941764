"""Ratings: accepted the instant a response ends, stored once per rater, never lost."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

from flywheel_stack import VLLMServer
from retrain.feedback_log import FeedbackConsumer

from .conftest import API_KEY, CLIENT, OTHER_TENANT_KEY, gateway_config
from .faulty_upstream import FaultyUpstream
from .served import Served, served_on, session_store
from .services import GatewayProcess, RedisProcess
from .stores import STORES, Store

HELLO = [{"role": "user", "content": "Can I return shoes after 20 days?"}]


@pytest.fixture(scope="module", params=STORES)
def store(request: pytest.FixtureRequest) -> Store:
    return session_store(request)


@pytest.fixture(scope="module")
def served(
    request: pytest.FixtureRequest, store: Store, vllm: VLLMServer, faulty: FaultyUpstream
) -> Iterator[Served]:
    with served_on(request, store, vllm, faulty) as s:
        yield s


def rate(gw: GatewayProcess, key: str = API_KEY, **body: Any) -> httpx.Response:
    return httpx.post(
        gw.base_url + "/feedback", json=body, headers={"Authorization": f"Bearer {key}"}
    )


def aggregate(store: Store, experiment: str, arm: str) -> dict[str, float]:
    with store.client() as r:
        raw = r.hgetall(store.ks.aggregate(experiment, arm))
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
    served: Served,
    rating: str | int,
    score: float,
    failure: int,
) -> None:
    gateway, client, store = served.gateway, served.client, served.store
    before = aggregate(store, "default", "base")
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
    after = aggregate(store, "default", "base")
    assert delta(after, before) == {
        "count": 1,
        "score_sum": score,
        "failures": failure,
        "corrections": 0,
    }


def test_correction_is_kept_and_counted(served: Served) -> None:
    gateway, client, store = served.gateway, served.client, served.store
    before = aggregate(store, "default", "base")
    rid = answer(client)
    fix = "We offer 30-day returns on unworn shoes."
    assert rate(gateway, response_id=rid, rating="down", correction=fix).status_code == 201
    stored = httpx.get(gateway.base_url + f"/feedback/{rid}", headers=CLIENT).json()["data"]
    assert stored[0]["correction"] == fix
    assert delta(aggregate(store, "default", "base"), before)["corrections"] == 1


def test_rerating_replaces_instead_of_double_counting(served: Served) -> None:
    gateway, client, store = served.gateway, served.client, served.store
    before = aggregate(store, "default", "base")
    rid = answer(client)
    first = rate(gateway, response_id=rid, rating="up", user="u-1").json()
    second = rate(gateway, response_id=rid, rating="down", user="u-1").json()
    assert first["replaced"] is False and second["replaced"] is True
    assert first["id"] == second["id"]
    assert delta(aggregate(store, "default", "base"), before) == {
        "count": 1,
        "score_sum": 0.0,
        "failures": 1,
        "corrections": 0,
    }
    other = rate(gateway, response_id=rid, rating="up", user="u-2").json()  # another rater
    assert other["replaced"] is False
    stored = httpx.get(gateway.base_url + f"/feedback/{rid}", headers=CLIENT).json()["data"]
    assert sorted((r["rater"], r["rating"]) for r in stored) == [("u-1", "down"), ("u-2", "up")]


def test_ratings_sent_the_instant_a_stream_ends_are_all_joined(served: Served) -> None:
    gateway, client = served.gateway, served.client
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
    served: Served,
    vllm: VLLMServer,
    faulty: FaultyUpstream,
    tmp_path: Path,
) -> None:
    # The replica shares the first gateway's store: one Redis, or the cluster.
    cfg = gateway_config(vllm.base_url, faulty.base_url, **served.store.config)
    replica = GatewayProcess(cfg, tmp_path / "replica").start()
    try:
        for _ in range(20):
            rid = answer(served.client)  # served by the first gateway
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


def test_200_concurrent_ratings_on_one_arm_are_all_counted(served: Served) -> None:
    gateway, client, store = served.gateway, served.client, served.store
    ids = [answer(client) for _ in range(200)]
    before = aggregate(store, "default", "base")
    replies = rate_all_at_once(gateway, ids, rating=2)
    assert [(r.status_code, r.text) for r in replies if r.status_code != 201] == []
    d = delta(aggregate(store, "default", "base"), before)
    assert d == {"count": 200, "score_sum": 50.0, "failures": 200, "corrections": 0}


def stream_length(store: Store) -> int:
    with store.client() as r:
        return int(r.xlen(store.ks.feedback_stream))


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
    served: Served,
    body: dict[str, Any],
    status: int,
    param: str,
) -> None:
    gateway, client, store = served.gateway, served.client, served.store
    rid = answer(client)
    if "response_id" not in body and param != "response_id":
        body = {"response_id": rid, **body}
    before = aggregate(store, "default", "base"), stream_length(store)
    resp = rate(gateway, **body)
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert err["param"] == param and err["message"]
    after = aggregate(store, "default", "base"), stream_length(store)
    assert after == before
    with store.client() as r:
        assert not r.exists(store.ks.feedback(rid))


def test_another_tenant_cannot_rate_or_read_a_response(served: Served) -> None:
    gateway, client = served.gateway, served.client
    rid = answer(client)
    assert rate(gateway, key=OTHER_TENANT_KEY, response_id=rid, rating="down").status_code == 404
    assert rate(gateway, response_id=rid, rating="up").status_code == 201
    theirs = httpx.get(
        gateway.base_url + f"/feedback/{rid}",
        headers={"Authorization": f"Bearer {OTHER_TENANT_KEY}"},
    )
    assert theirs.status_code == 404


def test_feedback_metrics_count_ratings_and_scores(served: Served) -> None:
    gateway, client = served.gateway, served.client
    labels = {"experiment": "default", "arm": "base"}
    before = gateway.metric("flywheel_feedback_total", rating="4", **labels)
    sum_before = gateway.metric("flywheel_feedback_score_sum", **labels)
    rate(gateway, response_id=answer(client), rating=4)
    assert gateway.metric("flywheel_feedback_total", rating="4", **labels) == before + 1
    assert gateway.metric("flywheel_feedback_score_sum", **labels) == sum_before + 0.75


def test_consumer_that_crashes_before_ack_loses_nothing_and_repeats_nothing(
    served: Served,
) -> None:
    gateway, client, store = served.gateway, served.client, served.store
    for _ in range(5):
        assert rate(gateway, response_id=answer(client), rating="down").status_code == 201
    group = f"test-{uuid.uuid4().hex[:8]}"
    ks = store.ks
    with store.client() as r:
        everything = {sid.decode() for sid, _ in r.xrange(ks.feedback_stream)}

        crashed = FeedbackConsumer(r, ks, group=group, consumer="run-1", claim_idle_ms=0)
        died = crashed.read_all()
        assert {e.stream_id for e in died} == everything  # ...and then it dies without ack

        second = FeedbackConsumer(r, ks, group=group, consumer="run-2", claim_idle_ms=0)
        redelivered = second.read_all()
        assert sorted(e.stream_id for e in redelivered) == sorted(everything)  # exactly once
        assert second.ack(redelivered) == len(everything)

        third = FeedbackConsumer(r, ks, group=group, consumer="run-3", claim_idle_ms=0)
        assert third.read_all() == []
        rid = answer(client)
        rate(gateway, response_id=rid, rating="up")
        fresh = third.read_all()
        assert [e.record["response_id"] for e in fresh] == [rid]  # only what is new


# On one Redis only: it stops and restarts the one Redis the gateway uses (a cluster
# master going away is a failover, test_cluster's business).
def test_ratings_survive_a_redis_restart(
    vllm: VLLMServer, faulty: FaultyUpstream, tmp_path: Path
) -> None:
    own = RedisProcess(tmp_path / "redis")
    own.start()
    store = Store(own.url, False, (own.port,))
    gw = GatewayProcess(gateway_config(vllm.base_url, faulty.base_url, own.url), tmp_path / "gw")
    gw.start()
    try:
        c = openai.OpenAI(base_url=gw.base_url, api_key=API_KEY, max_retries=0)
        ids = [answer(c) for _ in range(10)]
        for i, rid in enumerate(ids):
            assert rate(gw, response_id=rid, rating=1 + i % 5).status_code == 201
        before = aggregate(store, "default", "base")
        own.stop()
        own.start()  # AOF replays everything it acknowledged
        for i, rid in enumerate(ids):
            resp = httpx.get(gw.base_url + f"/feedback/{rid}", headers=CLIENT)
            assert resp.status_code == 200, resp.text
            got = resp.json()["data"]
            assert [r["rating"] for r in got] == [1 + i % 5]
        assert aggregate(store, "default", "base") == before
        assert before["count"] == 10
    finally:
        gw.stop()
        own.stop()


# On one Redis only: it kills -9 and restarts the one Redis the gateway uses.
def test_every_rating_acknowledged_before_a_kill_9_survives_with_aof_always(
    vllm: VLLMServer, faulty: FaultyUpstream, tmp_path: Path
) -> None:
    own = RedisProcess(tmp_path / "redis", appendfsync="always")  # as the chart and embedded
    own.start()
    store = Store(own.url, False, (own.port,))
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
        with store.client() as r:
            assert all(r.hlen(store.ks.feedback(rid)) == 1 for rid in acknowledged)
        assert aggregate(store, "default", "base")["count"] == 50
    finally:
        gw.stop()
        own.stop()


def test_export_feedback_writes_interactions_with_their_ratings(
    served: Served,
    tmp_path: Path,
) -> None:
    gateway, client = served.gateway, served.client
    since = datetime.now(UTC)
    time.sleep(0.01)  # the clock: the answer is stamped strictly after `since`
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


def test_feedback_needs_an_api_key(served: Served) -> None:
    gateway = served.gateway
    resp = httpx.post(gateway.base_url + "/feedback", json={"response_id": "x", "rating": "up"})
    assert resp.status_code == 401


def test_stream_is_trimmed_by_retention_but_never_past_an_unacknowledged_event(
    store: Store,
) -> None:
    from gateway.core.store import connect
    from gateway.serving.feedback import trim_feedback_stream

    # A feedback stream of the test's own, beside the gateway's (in its slot on a
    # cluster): no gateway writes to it, trims it, or reads it in a group.
    stream = f"{store.ks.feedback_stream}:test-{uuid.uuid4().hex[:8]}"
    ks = dataclasses.replace(store.ks, feedback_stream=stream)
    with store.client() as r:
        try:
            ids = [r.xadd(stream, {"data": b"{}"}).decode() for _ in range(6)]
            r.xgroup_create(stream, "a", id="0")
            r.xgroup_create(stream, "b", id="0")

            async def trim_now() -> None:
                aio = connect(store.url, cluster=store.cluster)
                try:
                    await trim_feedback_stream(aio, ks, retention_s=0)
                finally:
                    await aio.aclose()

            def trim() -> list[str]:
                asyncio.run(trim_now())
                return [sid.decode() for sid, _ in r.xrange(stream)]

            assert trim() == ids  # nothing read by anyone yet: all kept despite retention 0
            for group in ("a", "b"):
                got = r.xreadgroup(group, "c", {stream: ">"}, count=4)
                r.xack(stream, group, *[sid for sid, _ in got[0][1]][:2])
            assert trim() == ids[2:]  # the 3rd and 4th are delivered but not acknowledged
            for group in ("a", "b"):
                r.xack(stream, group, *ids[2:4])
            assert trim() == ids[4:]  # the last two were never delivered
            r.xgroup_create(stream, "late", id="$")
            for group in ("a", "b"):
                r.xreadgroup(group, "c", {stream: ">"})
                r.xack(stream, group, *ids[4:])
            assert trim() == []
        finally:
            r.delete(stream)


def test_once_archived_the_stream_is_trimmed_past_a_group_that_never_reads(
    store: Store,
) -> None:
    from gateway.core import keys
    from gateway.core.store import connect
    from gateway.serving.feedback import trim_feedback_stream

    stream = f"{store.ks.feedback_stream}:test-{uuid.uuid4().hex[:8]}"
    ks = dataclasses.replace(store.ks, feedback_stream=stream)
    with store.client() as r:
        try:
            ids = [r.xadd(stream, {"data": b"{}"}).decode() for _ in range(6)]
            r.xgroup_create(stream, "retrain.gone", id="0")  # an experiment nobody builds
            r.xgroup_create(stream, keys.ARCHIVE_GROUP, id="0")

            def trim(hot_s: float) -> list[str]:
                async def now() -> None:
                    aio = connect(store.url, cluster=store.cluster)
                    try:
                        await trim_feedback_stream(aio, ks, retention_s=86400, hot_s=hot_s)
                    finally:
                        await aio.aclose()

                asyncio.run(now())
                return [sid.decode() for sid, _ in r.xrange(stream)]

            assert trim(hot_s=0) == ids  # nothing archived yet: nothing goes
            got = r.xreadgroup(keys.ARCHIVE_GROUP, "a", {stream: ">"}, count=4)
            r.xack(stream, keys.ARCHIVE_GROUP, *[sid for sid, _ in got[0][1]][:3])
            assert trim(hot_s=3600) == ids  # archived, but younger than the hot window
            assert trim(hot_s=0) == ids[3:]  # archived and old: gone, though never read
            r.xack(stream, keys.ARCHIVE_GROUP, ids[3])
            assert trim(hot_s=0) == ids[4:]
        finally:
            r.delete(stream)
