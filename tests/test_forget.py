"""Forgetting a user: out of Redis, the archive and every dataset version, audited.

A real gateway (fixed upstream, real Redis) serves and takes ratings of three users;
``retrain archive`` (a real process) copies them to the Delta tables; ``retrain build`` makes
dataset versions. Then ``DELETE /admin/users/{user}`` and ``retrain forget`` remove
one user each, and the others' data stays whole.
"""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis
import yaml

from gateway.core import keys
from gateway.core.config import load_settings
from gateway.core.records import block_hash, unpack
from gateway.ops.archive import CRASH_ENV as ARCHIVE_CRASH_ENV
from retrain.config import RetrainSettings
from retrain.dataset import Builder
from retrain.faults import CRASH_ENV as RETRAIN_CRASH_ENV
from retrain.feedback_log import connect

from .archive_places import SETUPS, Place, new_place
from .conftest import ADMIN, CLIENT
from .fixed_gateway import fixed_gateway
from .polling import eventually
from .services import GatewayProcess
from .stores import Store, store_for

FORGET_DB = 6  # this module's users stay out of the other tests' database
# A gateway's first forget on S3 loads s3fs and botocore (seconds on a busy machine).
FORGET_TIMEOUT_S = 60
SYSTEM = {"role": "system", "content": "You answer for a shop that sells bicycles. " * 8}
VOCAB = (
    "refund order parcel invoice courier warranty return label account password delivery "
    "address payment card discount voucher store opening hours size colour exchange damaged "
    "missing late tracking number email phone support manager"
).split()
RNG = random.Random(17)
CLEAN_ENV = ("FLYWHEEL_CONFIG", ARCHIVE_CRASH_ENV, RETRAIN_CRASH_ENV)


def words(n: int = 14) -> str:
    return " ".join(RNG.choice(VOCAB) for _ in range(n))


@dataclass
class World:
    gateway: GatewayProcess
    redis: redis.Redis
    settings: RetrainSettings
    config: Path  # the gateway's config plus a retrain section
    archive: Place
    datasets: Path
    ks: keys.Keyspace
    ids: dict[str, list[str]] = field(default_factory=dict)  # user → response ids
    first_turn: list[dict[str, Any]] = field(default_factory=list)  # alice's, as a block


def chat(w: World, user: str, messages: list[dict[str, Any]]) -> tuple[str, str]:
    body = {"model": "default", "user": user, "messages": messages}
    r = httpx.post(w.gateway.base_url + "/chat/completions", json=body, headers=CLIENT)
    assert r.status_code == 200, r.text
    doc = r.json()
    w.ids.setdefault(user, []).append(doc["id"])
    return doc["id"], doc["choices"][0]["message"]["content"]


def rate(w: World, rid: str, correction: str, rater: str | None = None) -> None:
    fb: dict[str, Any] = {"response_id": rid, "rating": "down", "correction": correction}
    if rater:
        fb["user"] = rater
    r = httpx.post(w.gateway.base_url + "/feedback", json=fb, headers=CLIENT)
    assert r.status_code == 201, r.text


def retrain(
    w: World, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV}
    return subprocess.run(
        [sys.executable, "-m", "retrain", *args, "--config", str(w.config)],
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=180,
    )


def build(w: World) -> str:
    result = Builder(connect(w.settings), w.ks, w.settings, "default").run()
    assert result.status == "written", result.message
    return str(result.manifest["id"])


def wait_written(w: World, *rids: str) -> None:
    names = [keys.interaction(i) for i in rids]
    eventually(lambda: w.redis.exists(*names) == len(names), "the interaction log wrote")


@pytest.fixture(scope="module", params=SETUPS)
def setup(request: pytest.FixtureRequest) -> tuple[Store, str]:
    """The store (one Redis or the cluster) and where the archive lives (``dir``, ``s3``)."""
    store_kind, place_kind = request.param
    return store_for(request, FORGET_DB, store_kind), place_kind


@pytest.fixture(scope="module")
def store(setup: tuple[Store, str]) -> Store:
    return setup[0]


@pytest.fixture(scope="module")
def world(
    setup: tuple[Store, str],
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[World]:
    work = tmp_path_factory.mktemp("forget")
    store, place_kind = setup
    archive = new_place(place_kind, request, work)
    with fixed_gateway(store, work / "gw", archive=archive.config(enabled=False)) as (gw, _):
        doc = yaml.safe_load(gw.config_path.read_text())
        doc["retrain"] = {
            "dataset_dir": str(work / "datasets"),
            "min_examples": 1,
            "split": {"validation": 0, "test": 0},
        }
        config = work / "retrain.yaml"
        config.write_text(yaml.safe_dump(doc))
        settings = load_settings(config, schema=RetrainSettings)
        w = World(gw, store.client(), settings, config, archive, work / "datasets", store.ks)
        # alice: a two-turn conversation (its first turn becomes a block), and a rating
        # of one of bob's answers; bob and carol: one answer each, rated by themselves
        q1 = {"role": "user", "content": f"alice-secret one {words()}"}
        a1, answer = chat(w, "alice", [SYSTEM, q1])
        w.first_turn = [q1, {"role": "assistant", "content": answer}]
        q2 = {"role": "user", "content": f"alice-secret two {words()}"}
        a2, _ = chat(w, "alice", [SYSTEM, *w.first_turn, q2])
        b1, _ = chat(w, "bob", [SYSTEM, {"role": "user", "content": f"bob asks {words()}"}])
        b2, _ = chat(w, "bob", [SYSTEM, {"role": "user", "content": f"bob asks {words()}"}])
        c1, _ = chat(w, "carol", [SYSTEM, {"role": "user", "content": f"carol-only {words()}"}])
        wait_written(w, a1, a2, b1, b2, c1)
        rate(w, a1, f"alice-secret fix {words()}")
        rate(w, a2, f"alice-secret fix {words()}")
        rate(w, b1, f"bob fix {words()}")
        rate(w, b2, f"alice-secret fix of bob {words()}", rater="alice")
        rate(w, c1, f"carol-only fix {words()}")
        done = retrain(w, "archive")
        assert done.returncode == 0 and "archived 5 interactions and 5 ratings" in done.stdout
        build(w)
        # more of each, hot only (not archived), in a second version
        a3, _ = chat(w, "alice", [SYSTEM, {"role": "user", "content": f"alice-secret {words()}"}])
        b3, _ = chat(w, "bob", [SYSTEM, {"role": "user", "content": f"bob asks {words()}"}])
        a4, _ = chat(w, "alice", [SYSTEM, {"role": "user", "content": f"alice-secret {words()}"}])
        wait_written(w, a3, b3, a4)
        rate(w, a3, f"alice-secret fix {words()}")
        rate(w, b3, f"bob fix {words()}")
        r = httpx.post(  # a failure without a correction: the build queues it for review
            w.gateway.base_url + "/feedback",
            json={"response_id": a4, "rating": "down"},
            headers=CLIENT,
        )
        assert r.status_code == 201, r.text
        build(w)
        assert w.redis.hexists(w.ks.review("default"), a4)
        yield w
        w.redis.close()


def hot_users(w: World) -> dict[str, set[str]]:
    """Response ids of the records in Redis, by user."""
    out: dict[str, set[str]] = {}
    for name in w.redis.scan_iter(match="fw:ix:*", count=1000):
        rid = keys.text(name).removeprefix("fw:ix:")
        if rid == "stream":
            continue
        rec = unpack(w.redis.get(name), rid)
        if rec is not None:
            out.setdefault(rec["user"] or "", set()).add(rid)
    return out


def rating_stream(w: World) -> list[dict[str, Any]]:
    return [orjson.loads(f[b"data"]) for _, f in w.redis.xrange(w.ks.feedback_stream)]


def archived(w: World, sql: str) -> list[tuple[Any, ...]]:
    files = {
        kind: f"read_parquet('{w.archive.uri(kind, '*', '*', '*.parquet')}', "
        "hive_partitioning=true)"
        for kind in ("interactions", "feedback")
    }
    return w.archive.query(sql.format(**files))


def dataset_text(w: World) -> str:
    return "\n".join(p.read_text() for p in sorted(w.datasets.rglob("*")) if p.is_file())


def latest(w: World) -> str:
    return (w.datasets / "default" / "latest").read_text().strip()


def test_bad_user_ids_are_openai_shaped_400s_and_an_unknown_user_is_zero_counts(
    world: World,
) -> None:
    for path in ("/admin/users/", "/admin/users/%20%20", "/admin/users/" + "u" * 300):
        r = httpx.delete(world.gateway.url + path, headers=ADMIN, timeout=FORGET_TIMEOUT_S)
        assert r.status_code == 400, (path, r.text)
        error = r.json()["error"]
        assert error["type"] == "invalid_request_error" and error["param"] == "user"
        assert "user id" in error["message"]
    r = httpx.delete(
        world.gateway.url + "/admin/users/bob", headers=CLIENT, timeout=FORGET_TIMEOUT_S
    )
    assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error"
    # a misspelt tenant would widen the forget to every tenant: refused, nothing removed
    before = hot_users(world)["bob"]
    r = httpx.delete(
        world.gateway.url + "/admin/users/bob?tenat=tests", headers=ADMIN, timeout=FORGET_TIMEOUT_S
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "tenat", r.text
    assert hot_users(world)["bob"] == before
    r = httpx.delete(
        world.gateway.url + "/admin/users/nobody-at-all", headers=ADMIN, timeout=FORGET_TIMEOUT_S
    )
    assert r.status_code == 200, r.text
    removed = r.json()["removed"]
    assert all(n == 0 for place in ("redis", "archive") for n in removed[place].values())
    bad = retrain(world, "forget", "--user", "")
    assert bad.returncode == 2 and "must not be empty" in bad.stderr


def test_a_tenant_admin_cannot_forget_another_tenants_user(world: World) -> None:
    made = httpx.post(
        world.gateway.url + "/admin/keys",
        json={"name": "beta-ops", "tenant": "beta", "role": "admin"},
        headers=ADMIN,
    )
    assert made.status_code == 201, made.text
    beta = {"Authorization": f"Bearer {made.json()['key']}"}
    before = hot_users(world)["bob"]
    r = httpx.delete(
        world.gateway.url + "/admin/users/bob?tenant=tests", headers=beta, timeout=FORGET_TIMEOUT_S
    )
    assert r.status_code == 403 and r.json()["error"]["param"] == "tenant"
    # within its own tenant, bob (a user of tenant "tests") is unknown: nothing is removed
    r = httpx.delete(world.gateway.url + "/admin/users/bob", headers=beta, timeout=FORGET_TIMEOUT_S)
    assert r.status_code == 200 and r.json()["tenant"] == "beta"
    assert r.json()["removed"]["redis"]["interactions"] == 0
    assert hot_users(world)["bob"] == before
    assert archived(world, "SELECT count(*) FROM {interactions} WHERE user = 'bob'") == [(2,)]


def test_the_admin_api_forgets_a_user_everywhere_and_leaves_the_others_whole(
    world: World,
) -> None:
    alice, bob = world.ids["alice"], world.ids["bob"]
    turn = block_hash(orjson.dumps(world.first_turn))
    system = block_hash(orjson.dumps(SYSTEM))
    assert world.redis.exists(keys.block(turn), keys.block(system)) == 2
    before = latest(world)
    assert "alice-secret" in dataset_text(world)

    r = httpx.delete(
        world.gateway.url + "/admin/users/alice", headers=ADMIN, timeout=FORGET_TIMEOUT_S
    )
    assert r.status_code == 200, r.text
    removed = r.json()["removed"]
    # 4 records; her 4 ratings and hers of bob's answer; 2 archived rows and 3 ratings
    assert removed["redis"]["interactions"] == 4 and removed["redis"]["ratings"] == 5
    assert removed["redis"]["rating_events"] == 5 and removed["redis"]["blocks"] == 1
    assert removed["redis"]["review_items"] == 1 and removed["redis"]["user_stats"] == 2
    assert removed["archive"] == {"interactions": 2, "ratings": 3, "files_rewritten": 2}
    assert removed["datasets"] == {"pending": True}

    # Redis: her records, stream entries, ratings and her conversation's block are gone
    hot = hot_users(world)
    assert "alice" not in hot and hot["bob"] == set(bob) and hot["carol"]
    stream = {keys.text(f[b"id"]) for _, f in world.redis.xrange(world.ks.interaction_stream)}
    assert not stream & set(alice) and set(bob) <= stream
    assert not world.redis.exists(*[world.ks.feedback(i) for i in alice])
    assert world.redis.hkeys(world.ks.feedback(bob[1])) == []  # only alice had rated it
    assert world.redis.hkeys(world.ks.feedback(bob[0])) == [b"bob"]
    ratings = rating_stream(world)
    assert not [e for e in ratings if e["rater"] == "alice" or e["response_id"] in alice]
    assert {e["rater"] for e in ratings} == {"bob", "carol"}
    assert not world.redis.exists(keys.block(turn))
    assert world.redis.exists(keys.block(system))  # bob's and carol's records use it
    assert world.redis.hkeys(world.ks.review("default")) == []
    # her unit leaves the SRM sets and the per-user scores (whose sums follow); bob's stays
    units = {u: hashlib.sha256(u.encode()).hexdigest()[:16] for u in ("alice", "bob")}
    members = set().union(
        *(world.redis.smembers(k) for k in world.redis.scan_iter(world.ks.prefix + "users:*"))
    )
    assert units["alice"].encode() not in members and units["bob"].encode() in members
    scores = [world.redis.hgetall(k) for k in world.redis.scan_iter(world.ks.prefix + "uagg:*")]
    fields = set().union(*scores)
    assert f"u:{units['alice']}".encode() not in fields and f"u:{units['bob']}".encode() in fields
    assert sum(int(h.get(b"users", 0)) for h in scores) == 2  # bob and carol

    # the archive: no row of hers, every other row as it was, and a new pass adds none
    again = retrain(world, "archive")
    assert again.returncode == 0, again.stderr
    assert archived(world, "SELECT count(*) FROM {interactions} WHERE user = 'alice'") == [(0,)]
    assert archived(world, "SELECT user, count(*) FROM {interactions} GROUP BY 1 ORDER BY 1") == [
        ("bob", 3),
        ("carol", 1),
    ]
    assert archived(world, "SELECT rater, count(*) FROM {feedback} GROUP BY 1 ORDER BY 1") == [
        ("bob", 2),
        ("carol", 1),
    ]
    assert not archived(
        world,
        "SELECT * FROM {feedback} WHERE response_id IN (" + ",".join(f"'{i}'" for i in alice) + ")",
    )
    # nor the tables' logs: their statistics hold ids and times only, and the deletes
    # name response ids, never her
    logs = world.archive.glob("*", "_delta_log", "*.json")
    assert logs
    for path in logs:
        with world.archive.fs.open(path, "rb") as f:
            assert b"alice" not in f.read(), path

    # a build meanwhile carries none of her examples forward
    b4, _ = chat(world, "bob", [SYSTEM, {"role": "user", "content": f"bob asks {words()}"}])
    wait_written(world, b4)
    rate(world, b4, f"bob fix {words()}")
    after_build = build(world)
    text = (world.datasets / "default" / after_build / "train.jsonl").read_text()
    assert "alice-secret" not in text and text.count("bob fix") == 3

    # the datasets: every version that held her examples is gone, a successor took over
    done = retrain(world, "forget", "--pending")
    assert done.returncode == 0, done.stderr
    assert not world.redis.hlen(world.ks.forget_pending)
    assert "alice-secret" not in dataset_text(world)
    assert not (world.datasets / "default" / before).exists()
    train = (world.datasets / "default" / latest(world) / "train.jsonl").read_text()
    assert train.count("bob fix") == 3 and train.count("carol-only fix") == 1

    audit = httpx.get(world.gateway.url + "/admin/audit", headers=ADMIN).json()["data"]
    entries = [e for e in audit if e["action"] == "user.forgotten" and e["target"] == "alice"]
    assert entries[0]["by"] == "ops" and entries[0]["after"]["removed"] == removed
    # the build that ran meanwhile removed her versions (audited), --pending found none left
    assert [e["by"] for e in entries[1:]] == ["retrain:build", entries[2]["by"]]
    assert entries[1]["after"]["removed"]["datasets"]["versions_removed"] == 2


@pytest.mark.slow
def test_retrain_forget_removes_a_user_everywhere_and_a_second_run_finds_nothing(
    world: World,
) -> None:
    carol = world.ids["carol"]
    assert "carol-only" in dataset_text(world)
    done = retrain(world, "forget", "--user", "carol")
    assert done.returncode == 0, done.stderr
    removed = orjson.loads(done.stdout)["removed"]
    assert removed["redis"]["interactions"] == 1 and removed["archive"]["interactions"] == 1
    assert removed["datasets"]["successors"] == 1
    assert "carol" not in hot_users(world)
    assert not world.redis.exists(world.ks.feedback(carol[0]))
    assert archived(world, "SELECT count(*) FROM {interactions} WHERE user = 'carol'") == [(0,)]
    assert archived(world, "SELECT count(*) FROM {feedback} WHERE rater = 'carol'") == [(0,)]
    assert "carol-only" not in dataset_text(world)
    train = (world.datasets / "default" / latest(world) / "train.jsonl").read_text()
    assert train.count("bob fix") == 3
    again = retrain(world, "forget", "--user", "carol")
    assert again.returncode == 0, again.stderr
    second = orjson.loads(again.stdout)["removed"]
    assert all(n == 0 for place in second.values() for n in place.values())
    audit = httpx.get(world.gateway.url + "/admin/audit", headers=ADMIN).json()["data"]
    assert [e["by"].startswith("cli:") for e in audit if e["target"] == "carol"] == [True, True]


@pytest.mark.parametrize(
    ("env", "step"),
    [
        (ARCHIVE_CRASH_ENV, "forget-after-plan"),
        (ARCHIVE_CRASH_ENV, "forget-after-redis"),
        (ARCHIVE_CRASH_ENV, "forget-after-delete"),
        (ARCHIVE_CRASH_ENV, "forget-after-vacuum"),
        (RETRAIN_CRASH_ENV, "forget-after-successor"),
    ],
)
@pytest.mark.slow
def test_a_forget_killed_at_any_step_is_finished_by_running_it_again(
    world: World, env: str, step: str
) -> None:
    user = f"dave-{step}"
    rid, _ = chat(world, user, [SYSTEM, {"role": "user", "content": f"{user} {words()}"}])
    wait_written(world, rid)
    rate(world, rid, f"{user} fix {words()}")
    assert retrain(world, "archive").returncode == 0
    build(world)
    assert user in dataset_text(world)
    count = f"SELECT count(*) FROM {{interactions}} WHERE user = '{user}'"
    assert archived(world, count) == [(1,)]

    crashed = retrain(world, "forget", "--user", user, env={env: step})
    assert crashed.returncode == 137, crashed.stderr
    done = retrain(world, "forget", "--user", user)
    assert done.returncode == 0, done.stderr
    assert user not in hot_users(world)
    assert not world.redis.exists(world.ks.feedback(rid))
    assert archived(world, count) == [(0,)]  # every file on disk, committed or not
    assert not archived(world, f"SELECT * FROM {{feedback}} WHERE response_id = '{rid}'")
    assert user not in dataset_text(world)
    assert not world.redis.hlen(world.ks.forget_pending)
    train = (world.datasets / "default" / latest(world) / "train.jsonl").read_text()
    assert train.count("bob fix") == 3  # b4 too is archived by now
    assert archived(world, "SELECT count(*) FROM {interactions} WHERE user = 'bob'") == [(4,)]
