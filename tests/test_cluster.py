"""A gateway on a real Redis Cluster of 3 masters (``redis_cluster: true``).

The cluster is started by the tests (``redis-server --cluster-enabled yes`` ×3 and
``redis-cli --cluster create``). What must hold there as on one Redis: chat is served
and logged, ratings of one response by one rater stay exact under concurrency (the
feedback script's keys share a slot), experiment changes are compare-and-set, and
``retrain build`` reads the ratings back. And what the cluster is for: the interaction
records spread over every master while the shared state stays in one slot.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis
import yaml
from redis.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import MovedError

from gateway.core import keys
from retrain.dataset import latest_version

from .conftest import ADMIN, API_KEY, CLIENT
from .faulty_upstream import FaultyUpstream
from .fixed_gateway import fixed_config
from .helpers.datasets import lines, serve_and_rate, sft
from .polling import eventually
from .services import GatewayProcess, RedisClusterProcess, RedisProcess
from .stores import Store

pytestmark = pytest.mark.cluster
KS = keys.CLUSTER_KEYSPACE  # the key names of a gateway with redis_cluster: true


@pytest.fixture(scope="module")
def cluster_gateway(
    redis_cluster: RedisClusterProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    # the cluster as new: another module on this worker may have left live state on it
    Store(redis_cluster.url, True, tuple(redis_cluster.ports)).flush()
    upstream = FaultyUpstream().start()
    config = fixed_config(
        upstream.base_url,
        redis_cluster.url,
        redis_cluster=True,
        # fewer connections than a burst of ratings: the burst waits, none is refused
        redis_pool={"max_connections": 16},
    )
    config["auth"]["api_keys"] = [
        {"key": API_KEY, "name": "tests", "rpm": 100_000, "budget": {"limit": 1_000_000}}
    ]
    config["models"]["fixed-a"]["price"] = {"prompt_per_1m": 1.0, "completion_per_1m": 2.0}
    gw = GatewayProcess(config, tmp_path_factory.mktemp("cluster-gateway"), ready_path="/readyz")
    try:
        gw.start()
        yield gw
    finally:
        gw.stop()
        upstream.stop()


def client_of(cluster: RedisClusterProcess) -> RedisCluster:
    return RedisCluster.from_url(cluster.url, decode_responses=True)


def new_experiment(gw: GatewayProcess) -> str:
    name = f"cl-{uuid.uuid4().hex[:8]}"
    spec = {"arms": [{"model": "fixed-a", "weight": 1}, {"model": "fixed-b", "weight": 0}]}
    r = httpx.put(f"{gw.url}/admin/experiments/{name}", json=spec, headers=ADMIN)
    assert r.status_code == 200, r.text
    return name


def chat(gw: GatewayProcess, model: str, user: str = "u-1") -> str:
    body = {"model": model, "user": user, "messages": [{"role": "user", "content": "hi"}]}
    r = httpx.post(gw.base_url + "/chat/completions", json=body, headers=CLIENT)
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


def on_any_node(ports: list[int], *command: str) -> Any:
    """A one-key command's answer from the master that has the key (None: no master)."""
    for port in ports:
        node = redis.Redis(port=port, decode_responses=True)
        try:
            return node.execute_command(*command)
        except MovedError:
            pass
        finally:
            node.close()
    return None


def keys_by_node(cluster: RedisClusterProcess) -> dict[int, list[str]]:
    out = {}
    for port in cluster.ports:
        node = redis.Redis(port=port, decode_responses=True)
        out[port] = list(node.scan_iter(count=1000))
        node.close()
    return out


def retrain_config(gw: GatewayProcess, tmp_path: Path, experiment: str) -> Path:
    """The gateway's config plus a retrain section, for the ``retrain`` CLI."""
    doc = yaml.safe_load(gw.config_path.read_text())
    doc["retrain"] = {
        "dataset_dir": str(tmp_path / "datasets"),
        "min_examples": 1,
        "keep_good_share": 1.0,
        "split": {"validation": 0, "test": 0},
    }
    config = tmp_path / "retrain.yaml"
    config.write_text(yaml.safe_dump(doc))
    return config


def build_dataset(config: Path, experiment: str) -> subprocess.CompletedProcess[str]:
    build = [sys.executable, "-m", "retrain", "build", "--experiment", experiment]
    return subprocess.run(
        [*build, "--config", str(config)], capture_output=True, text=True, timeout=120
    )


def test_chat_is_served_logged_and_records_spread_over_every_master(
    cluster_gateway: GatewayProcess, redis_cluster: RedisClusterProcess
) -> None:
    with openai.OpenAI(base_url=cluster_gateway.base_url, api_key=API_KEY, max_retries=0) as c:
        messages: Any = [{"role": "user", "content": "Where is my parcel?"}]
        answer = c.chat.completions.create(model="fixed-a", messages=messages)
        assert answer.choices[0].message.content == "answer from fixed-a"
        stream = c.chat.completions.create(model="fixed-a", messages=messages, stream=True)
        streamed = "".join(
            chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices
        )
        assert streamed == "answer from fixed-a"
        raw = c.chat.completions.with_raw_response.create(model="default", messages=messages)
        assert int(raw.headers["x-ratelimit-remaining-requests"]) < 100_000  # limits script
    ids = [answer.id] + [chat(cluster_gateway, "default", f"u-{i}") for i in range(40)]

    r = client_of(redis_cluster)
    names = [keys.interaction(i) for i in ids]
    eventually(  # the log writer batches
        lambda: r.exists(*names) == len(names), "every interaction is logged"
    )
    day = KS.spend_day(time.strftime("%Y-%m-%d", time.gmtime()))
    day_spend = eventually(lambda: r.hgetall(day), "the spend sync (every 0.1 s) ran")
    assert float(day_spend["m:fixed-a"]) > 0
    r.close()

    by_node = keys_by_node(redis_cluster)
    holding_records = [
        p for p, names in by_node.items() if {keys.interaction(i) for i in ids} & set(names)
    ]
    assert len(holding_records) == 3, "41 records spread over the 3 masters"
    shared = {p for p, names in by_node.items() if any(n.startswith("{fw}:") for n in names)}
    assert len(shared) == 1, "the shared state is one slot, so one master"
    assert not [n for names in by_node.values() for n in names if n.startswith("fw:ctl")]


def test_concurrent_ratings_by_one_rater_keep_the_aggregates_exact(
    cluster_gateway: GatewayProcess, redis_cluster: RedisClusterProcess
) -> None:
    exp = new_experiment(cluster_gateway)
    rid = chat(cluster_gateway, exp, user="rater-1")
    ratings = [1 + i % 5 for i in range(60)]

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(headers=CLIENT, timeout=30) as http:
            return await asyncio.gather(
                *(
                    http.post(
                        cluster_gateway.base_url + "/feedback",
                        json={"response_id": rid, "rating": rating, "user": "rater-1"},
                    )
                    for rating in ratings
                )
            )

    replies = asyncio.run(burst())
    assert sorted(r.status_code for r in replies) == [201] * len(ratings)
    assert sum(not r.json()["replaced"] for r in replies) == 1  # one first rating

    stored = httpx.get(cluster_gateway.base_url + f"/feedback/{rid}", headers=CLIENT).json()
    assert [r["rater"] for r in stored["data"]] == ["rater-1"]
    score = (stored["data"][0]["rating"] - 1) / 4
    r = client_of(redis_cluster)
    agg = {k: float(v) for k, v in r.hgetall(KS.aggregate(exp, "fixed-a")).items()}
    assert agg["count"] == 1
    assert agg["score_sum"] == pytest.approx(score, abs=1e-9)
    assert agg["score_sq"] == pytest.approx(score * score, abs=1e-9)
    assert agg["failures"] == (1 if score <= 0.25 else 0)
    users = {k: v for k, v in r.hgetall(KS.user_scores(exp, 1, "fixed-a")).items()}
    assert (int(users["users"]), int(users["ratings"])) == (1, 1)
    assert float(users["mean_sum"]) == pytest.approx(score, abs=1e-9)
    events = [e for _, e in r.xrange(KS.feedback_stream) if rid in e["data"]]
    assert len(events) == len(ratings)  # every rating event reaches the stream
    r.close()


def test_concurrent_experiment_changes_one_wins_the_other_conflicts(
    cluster_gateway: GatewayProcess,
) -> None:
    exp = new_experiment(cluster_gateway)
    url = f"{cluster_gateway.url}/admin/experiments/{exp}"
    for _ in range(5):
        version = httpx.get(url, headers=ADMIN).json()["version"]

        def promote(model: str, version: int = version) -> httpx.Response:
            form = {"experiment": exp, "action": "promote", "model": model, "version": version}
            return httpx.post(f"{cluster_gateway.url}/ui/actions/apply", data=form, headers=ADMIN)

        with ThreadPoolExecutor(2) as pool:
            a, b = pool.map(promote, ["fixed-a", "fixed-b"])
        assert sorted([a.status_code, b.status_code]) == [303, 409], (a.text, b.text)
        loser = a if a.status_code == 409 else b
        assert f"changed since version {version}" in loser.json()["error"]["message"]
        state = httpx.get(url, headers=ADMIN).json()
        assert state["version"] == version + 1  # exactly one change applied
        winner = "fixed-a" if a.status_code == 303 else "fixed-b"
        assert state["spec"]["control"] == winner
    history = httpx.get(url + "/history", headers=ADMIN).json()["data"]
    assert len(history) == 6  # created + one promotion per round


def test_retrain_build_reads_the_ratings_from_the_cluster(
    cluster_gateway: GatewayProcess, tmp_path: Path
) -> None:
    exp = new_experiment(cluster_gateway)
    correction = "Yes: returns are accepted for 30 days."
    items = [
        {"prompt": "Where is my parcel?", "user": "u1", "rating": 5},
        {"prompt": "Can I return shoes?", "user": "u2", "rating": "down", "correction": correction},
        {"prompt": "Do you ship to Norway?", "user": "u3", "rating": 3},
    ]
    serve_and_rate(cluster_gateway, exp, items)
    config = retrain_config(cluster_gateway, tmp_path, exp)
    run = build_dataset(config, exp)
    assert run.returncode == 0, run.stdout + run.stderr
    version = latest_version(tmp_path / "datasets" / exp)
    assert version is not None
    train = sorted(lines(version.path / "train.jsonl"), key=str)
    expected = [
        sft("Where is my parcel?", "answer from fixed-a"),
        sft("Can I return shoes?", correction),
    ]
    assert train == sorted(expected, key=str)
    again = build_dataset(config, exp)
    assert again.returncode == 0 and "nothing new" in again.stdout + again.stderr


def archived_ids(config: Path, kind: str, column: str) -> set[str]:
    """The ``column`` values of every file of the ``kind`` table's snapshot."""
    import duckdb

    from gateway.core.config import load_settings
    from gateway.ops.archive import Archive, default_url

    settings = load_settings(config)
    files = Archive(default_url(settings.data_dir, settings.archive.url)).files(kind)
    if not files:
        return set()
    with duckdb.connect() as db:
        rows = db.execute(f"SELECT {column} FROM read_parquet(?)", [files]).fetchall()
    return {str(r[0]) for r in rows}


def test_every_interaction_and_rating_served_on_the_cluster_is_archived(
    cluster_gateway: GatewayProcess, tmp_path: Path
) -> None:
    exp = new_experiment(cluster_gateway)
    items = [{"prompt": f"question {i}", "user": f"a{i}", "rating": i % 5 + 1} for i in range(40)]
    ids = set(serve_and_rate(cluster_gateway, exp, items))
    config = retrain_config(cluster_gateway, tmp_path, exp)

    def all_archived() -> bool:
        # `retrain archive` runs a pass, or finds the gateway's own archiver at work (5)
        run = subprocess.run(
            [sys.executable, "-m", "retrain", "archive", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode in (0, 5), run.stdout + run.stderr
        return ids <= archived_ids(config, "interactions", "id") and ids <= archived_ids(
            config, "feedback", "response_id"
        )

    eventually(all_archived, "every interaction and rating in the archive", timeout_s=60)


def test_forgetting_a_user_on_the_cluster_removes_their_records_ratings_and_examples(
    cluster_gateway: GatewayProcess,
    redis_cluster: RedisClusterProcess,
    tmp_path: Path,
) -> None:
    exp = new_experiment(cluster_gateway)
    items = [
        {
            "prompt": "Where is my parcel?",
            "user": "leaving",
            "rating": "down",
            "correction": "Here.",
        },
        {"prompt": "Can I return shoes?", "user": "staying", "rating": 5},
    ]
    gone, kept = serve_and_rate(cluster_gateway, exp, items)
    config = retrain_config(cluster_gateway, tmp_path, exp)
    assert build_dataset(config, exp).returncode == 0
    # the gateway runs its archiver: a pass in progress ends before the forget starts
    r = httpx.delete(cluster_gateway.url + "/admin/users/leaving", headers=ADMIN, timeout=60)
    assert r.status_code == 200, r.text
    removed = r.json()["removed"]["redis"]
    assert removed["interactions"] == 1 and removed["ratings"] == 1
    c = client_of(redis_cluster)
    assert not c.exists(keys.interaction(gone), KS.feedback(gone))
    assert c.exists(keys.interaction(kept), KS.feedback(kept)) == 2
    assert c.hlen(KS.forget_pending) == 1
    pending = subprocess.run(
        [sys.executable, "-m", "retrain", "forget", "--pending", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert pending.returncode == 0, pending.stderr
    assert c.hlen(KS.forget_pending) == 0
    c.close()
    version = latest_version(tmp_path / "datasets" / exp)
    assert version is not None
    assert lines(version.path / "train.jsonl") == [
        sft("Can I return shoes?", "answer from fixed-a")
    ]


def test_migrate_keys_moves_a_single_redis_deployment_onto_a_cluster(tmp_path: Path) -> None:
    """A deployment on one Redis (today's names), stopped, copied with ``gateway
    migrate-keys`` onto a fresh cluster: its experiment, ratings and the retrain job's
    place in the feedback stream carry on there."""
    single = RedisProcess(tmp_path / "single")
    single.start()
    fresh = RedisClusterProcess(tmp_path / "fresh-cluster")
    upstream = FaultyUpstream().start()
    try:
        fresh.start()
        old = GatewayProcess(fixed_config(upstream.base_url, single.url), tmp_path / "old")
        old.start()
        try:
            exp = new_experiment(old)
            items = [
                {"prompt": "Where is my parcel?", "user": "u1", "rating": 5},
                {"prompt": "Can I pay by card?", "user": "u2", "rating": 4},
            ]
            ids = serve_and_rate(old, exp, items)
            r = httpx.post(
                f"{old.url}/admin/experiments/{exp}/promote",
                json={"model": "fixed-a"},
                headers=ADMIN,
            )
            assert r.status_code == 200, r.text
            config = retrain_config(old, tmp_path, exp)
            first = build_dataset(config, exp)  # a first version, from the single Redis
            assert first.returncode == 0, first.stdout + first.stderr
        finally:
            old.stop()
        assert redis.Redis(port=single.port).exists("fw:ctl:experiments")  # today's names

        doc = yaml.safe_load(config.read_text())
        doc.update(redis_url=fresh.url, redis_cluster=True)
        config.write_text(yaml.safe_dump(doc))
        migrate = [sys.executable, "-m", "gateway", "migrate-keys", "--from", single.url]
        run = subprocess.run(
            [*migrate, "--config", str(config)], capture_output=True, text=True, timeout=60
        )
        assert run.returncode == 0, run.stderr
        assert "already on the target" in run.stdout and " 0 already" in run.stdout, run.stdout
        again = subprocess.run(
            [*migrate, "--config", str(config)], capture_output=True, text=True, timeout=60
        )
        assert again.returncode == 0 and "copied 0 keys" in again.stdout, again.stdout

        new = GatewayProcess(
            fixed_config(upstream.base_url, fresh.url, redis_cluster=True), tmp_path / "new"
        )
        new.start()
        try:
            state = httpx.get(f"{new.url}/admin/experiments/{exp}", headers=ADMIN).json()
            assert state["version"] == 2 and state["spec"]["control"] == "fixed-a"
            stored = httpx.get(f"{new.base_url}/feedback/{ids[0]}", headers=CLIENT).json()
            assert [(x["rater"], x["rating"]) for x in stored["data"]] == [("u1", 5)]
            # the same rater again: replaced, not counted twice; another rater counts
            for rid, user, replaced in [(ids[0], "u1", True), (ids[1], "u3", False)]:
                body = {"response_id": rid, "rating": 5, "user": user}
                rated = httpx.post(f"{new.base_url}/feedback", json=body, headers=CLIENT)
                assert rated.status_code == 201 and rated.json()["replaced"] is replaced
            r = client_of(fresh)
            assert r.hget(KS.aggregate(exp, "fixed-a"), "count") == "3"
            r.close()
            # retrain build goes on from where its consumer group was: the two new
            # ratings are the only events it reads (and they add no new example)
            second = build_dataset(config, exp)
            assert second.returncode == 0, second.stdout + second.stderr
            assert "events: 2;" in second.stdout and "nothing new" in second.stdout
        finally:
            new.stop()
    finally:
        upstream.stop()
        fresh.stop()
        single.stop()


CONSTANTS = (
    "interaction_stream",
    "feedback_stream",
    "aggregate_index",
    "control_version",
    "experiments",
    "models",
    "models_history",
    "api_keys",
    "tenants",
    "auth_audit",
    "jobs",
    "retrain_runs",
)


def test_every_key_has_the_same_name_after_migrate_keys_as_the_cluster_gateway_uses() -> None:
    def every_name(ks: keys.Keyspace) -> list[str]:
        return [
            keys.interaction("chatcmpl-abc"),
            ks.rate_limit("key_1", "req"),
            ks.rate_limit("key_1", "tok"),
            ks.feedback("chatcmpl-abc"),
            ks.aggregate("exp", "arm"),
            ks.requests(None, "arm"),
            ks.version_requests("exp", 2, "arm"),
            ks.version_users("exp", 2, "arm"),
            ks.user_scores("exp", 2, "arm"),
            ks.sequential("exp", 2),
            ks.spend("k", "key_1", "2026-11"),
            ks.spend_day("2026-11-30"),
            ks.spend_held("k", "key_1"),
            ks.history("exp"),
            ks.decision_lock("exp"),
            ks.review("exp"),
            ks.build_lock("exp"),
            ks.run_lock("exp"),
            ks.job("job_1"),
            ks.trained("exp"),
            *(getattr(ks, name) for name in CONSTANTS),
        ]

    plain = every_name(keys.PLAIN_KEYSPACE)
    clustered = every_name(keys.CLUSTER_KEYSPACE)
    assert len(plain) == 32 and all(n.startswith("fw:") for n in plain)
    assert [keys.cluster_name(n) for n in plain] == clustered
    slot = {n: key_slot(n.encode()) for n in clustered}
    assert len({slot[n] for n in clustered if n.startswith("{fw}:")}) == 1
    assert slot["fw:rl:{key_1}:req"] == slot["fw:rl:{key_1}:tok"]


def test_when_the_shared_states_master_dies_its_replica_takes_over_and_nothing_served_is_lost(
    tmp_path: Path,
) -> None:
    """kill -9 the master of the ``{fw}`` slot (3 masters, each with a replica): chat is
    served throughout, ratings are refused with 503 ``store_unavailable`` (never a
    500) until the replica takes over and then accepted again, without a restart, and
    every interaction served after the kill reaches Redis."""
    cluster = RedisClusterProcess(tmp_path / "ha", masters=3, replicas=1)
    upstream = FaultyUpstream().start()
    gw = None
    try:
        cluster.start()
        config = fixed_config(upstream.base_url, cluster.url, redis_cluster=True)
        gw = GatewayProcess(config, tmp_path / "gw", ready_path="/readyz").start()
        exp = new_experiment(gw)
        first = chat(gw, exp)
        body = {"response_id": first, "rating": 5, "user": "before"}
        assert httpx.post(f"{gw.base_url}/feedback", json=body, headers=CLIENT).status_code == 201
        r = client_of(cluster)
        shared_master = r.get_node_from_key(KS.control_version).port
        r.close()

        cluster.kill(shared_master)
        served, refused, accepted = [], [], None
        deadline = time.monotonic() + 30
        with httpx.Client(headers=CLIENT, timeout=30) as c:
            while accepted is None and time.monotonic() < deadline:
                body = {"model": exp, "user": "u", "messages": [{"role": "user", "content": "x"}]}
                answer = c.post(gw.base_url + "/chat/completions", json=body)
                assert answer.status_code == 200, answer.text
                served.append(answer.json()["id"])
                rating = {"response_id": served[-1], "rating": 4, "user": "during"}
                rated = c.post(gw.base_url + "/feedback", json=rating)
                if rated.status_code == 201:
                    accepted = served[-1]
                else:
                    assert rated.status_code == 503, rated.text
                    assert rated.json()["error"]["code"] == "store_unavailable"
                    refused.append(served[-1])
                    time.sleep(0.1)
        assert accepted is not None, f"ratings still refused 30 s after the kill ({len(refused)})"
        assert refused, "the kill was seen"

        # Read node by node (each key answers on its master, MOVED elsewhere): redis-py's
        # sync cluster client, reading right after the failover, left a socket unclosed
        # (a ResourceWarning, which fails the run).
        live = [p for p in cluster.ports if p != shared_master]
        eventually(  # the log writer retries what it could not write
            lambda: all(on_any_node(live, "EXISTS", keys.interaction(i)) for i in served),
            f"none of the {len(served)} interactions served after the kill is lost",
            timeout_s=30,
            every_s=0.2,
        )
        assert on_any_node(live, "HKEYS", KS.feedback(accepted)) == ["during"]
    finally:
        if gw is not None:
            gw.stop()
        upstream.stop()
        cluster.stop()


def archived_counts(archive: Path, kind: str, column: str) -> dict[str, int]:
    """How often each ``column`` value is in the files of the ``kind`` table's snapshot."""
    import duckdb

    from gateway.ops.archive import Archive

    files = Archive(str(archive)).files(kind)
    if not files:
        return {}
    with duckdb.connect() as db:
        rows = db.execute(
            f"SELECT {column}, count(*) FROM read_parquet(?) GROUP BY 1", [files]
        ).fetchall()
    return {str(value): int(n) for value, n in rows}


def replicated(cluster: RedisClusterProcess) -> bool:
    """Every replica has every write of its master (so a failover loses nothing served)."""
    for port in cluster.ports:
        node = redis.Redis(port=port, decode_responses=True)
        try:
            info = node.info("replication")
        finally:
            node.close()
        if info.get("role") != "master":
            continue
        offsets = [
            v["offset"] for k, v in info.items() if k.startswith("slave") and k[5:].isdigit()
        ]
        if not offsets or min(offsets) < info["master_repl_offset"]:
            return False
    return True


def test_a_master_failover_during_an_archive_pass_loses_and_duplicates_nothing(
    tmp_path: Path,
) -> None:
    """kill -9 the master of the shared slot (the streams, the archive lock, the consumer
    group) while ``retrain archive`` is copying in small batches: its replica takes over,
    and the passes after it leave every interaction and rating in the archive exactly
    once — what the dead master had acknowledged but not replicated is read again and
    skipped by the table's transaction id, never written twice."""
    cluster = RedisClusterProcess(tmp_path / "ha", masters=3, replicas=1)
    upstream = FaultyUpstream().start()
    archive = tmp_path / "archive"
    gw = None
    try:
        cluster.start()
        config = fixed_config(
            upstream.base_url,
            cluster.url,
            redis_cluster=True,
            archive={"enabled": False, "url": str(archive), "batch": 4},
        )
        gw = GatewayProcess(config, tmp_path / "gw", ready_path="/readyz").start()
        config_path = gw.config_path
        exp = new_experiment(gw)
        items = [
            {"prompt": f"question {i}", "user": f"f{i}", "rating": i % 5 + 1} for i in range(48)
        ]
        ids = set(serve_and_rate(gw, exp, items))
        r = client_of(cluster)
        eventually(lambda: r.exists(*[keys.interaction(i) for i in ids]) == len(ids), "logged")
        shared_master = r.get_node_from_key(KS.interaction_stream).port
        r.close()
        gw.stop()  # what is served is in Redis: the archiver alone is at work now
        gw = None
        eventually(lambda: replicated(cluster), "every write reached the replicas")

        def archive_pass() -> subprocess.Popen[str]:
            return subprocess.Popen(
                [sys.executable, "-m", "retrain", "archive", "--config", str(config_path)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )

        running = archive_pass()
        log = archive / "interactions" / "_delta_log"
        eventually(
            lambda: log.is_dir() and any(log.glob("*.json")),
            "the pass committed its first batch",
            timeout_s=60,
            every_s=0.005,
        )
        assert running.poll() is None, "the pass ended before the kill"
        cluster.kill(shared_master)  # mid-pass: 12 batches of interactions, 12 of ratings
        out, err = running.communicate(timeout=120)
        assert running.returncode != 0 or "archived" in out, out + err

        def drained() -> bool:
            again = archive_pass()
            out, err = again.communicate(timeout=120)
            if again.returncode != 0:  # the replica is not promoted yet
                return False
            return "archived 0 interactions and 0 ratings" in out

        eventually(drained, "passes after the failover drain both streams", timeout_s=90)
        interactions = archived_counts(archive, "interactions", "id")
        ratings = archived_counts(archive, "feedback", "response_id")
        assert {i: interactions.get(i) for i in ids} == dict.fromkeys(ids, 1)
        assert {i: ratings.get(i) for i in ids} == dict.fromkeys(ids, 1)
    finally:
        if gw is not None:
            gw.stop()
        upstream.stop()
        cluster.stop()
