"""A/B experiments as live state: admin API, replicas in step, canaries, breaker, report.

The routing tests use the fault server's ``fixed-*`` models (instant answers) where a
test needs hundreds of requests; adapter registration uses the real vLLM.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis

from flywheel_stack import VLLMServer, make_test_adapter
from gateway.core import keys
from gateway.core.config import ModelVersion
from retrain import feedback_log

from .conftest import ADMIN, CLIENT, gateway_config
from .faulty_upstream import FaultyUpstream
from .helpers import flywheel
from .polling import eventually
from .services import GatewayProcess, RedisProcess

KS = keys.PLAIN_KEYSPACE  # these tests run on one Redis

HELLO = [{"role": "user", "content": "hello"}]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def arms(**weights: float) -> dict[str, Any]:
    return {"arms": [{"model": m.replace("_", "-"), "weight": w} for m, w in weights.items()]}


def put(gw: GatewayProcess, name: str, spec: dict[str, Any]) -> httpx.Response:
    return httpx.put(f"{gw.url}/admin/experiments/{name}", json=spec, headers=ADMIN)


def chat(
    client: httpx.Client, gw: GatewayProcess, model: str, user: str, **headers: str
) -> httpx.Response:
    return client.post(
        gw.base_url + "/chat/completions",
        json={"model": model, "messages": HELLO, "max_tokens": 2},
        headers={**CLIENT, "x-flywheel-user": user, **headers},
    )


def arm_of(client: httpx.Client, gw: GatewayProcess, model: str, user: str) -> str | None:
    resp = chat(client, gw, model, user)
    return resp.headers.get("x-flywheel-arm") if resp.status_code == 200 else None


def test_a_weight_change_reaches_another_replica_within_a_second(
    gateway: GatewayProcess,
    vllm: VLLMServer,
    faulty: FaultyUpstream,
    redis_server: RedisProcess,
    tmp_path: Path,
) -> None:
    cfg = gateway_config(vllm.base_url, faulty.base_url, redis_server.url)
    other = GatewayProcess(cfg, tmp_path / "replica").start()
    name = unique("live")
    try:
        assert put(gateway, name, arms(fixed_a=1, fixed_b=0)).status_code == 200
        with httpx.Client() as c:
            deadline = time.monotonic() + 2
            while arm_of(c, other, name, "u1") != "fixed-a":
                assert time.monotonic() < deadline, "the new experiment never reached the replica"
            t0 = time.monotonic()
            assert put(gateway, name, arms(fixed_a=0, fixed_b=1)).status_code == 200
            while arm_of(c, other, name, "u1") != "fixed-b":
                assert time.monotonic() - t0 < 10, "the replica still routes by the old weights"
            # and from then on it stays switched
            assert {arm_of(c, other, name, f"u{i}") for i in range(50)} == {"fixed-b"}
    finally:
        other.stop()


def test_ramping_a_canary_moves_only_control_users_and_nobody_flips_back(
    gateway: GatewayProcess,
) -> None:
    name = unique("ramp")
    users = [f"user-{i}" for i in range(400)]

    def assignments(c: httpx.Client) -> dict[str, str | None]:
        return {u: arm_of(c, gateway, name, u) for u in users}

    with httpx.Client() as c:
        assert put(gateway, name, arms(fixed_a=95, fixed_b=5)).status_code == 200
        small = assignments(c)
        assert put(gateway, name, arms(fixed_a=80, fixed_b=20)).status_code == 200
        large = assignments(c)
        again = assignments(c)
    assert set(small.values()) == set(large.values()) == {"fixed-a", "fixed-b"}
    moved = [u for u in users if small[u] != large[u]]
    assert moved, "a 5% → 20% ramp moved nobody"
    assert all(small[u] == "fixed-a" and large[u] == "fixed-b" for u in moved)
    assert all(large[u] == "fixed-b" for u in users if small[u] == "fixed-b")
    assert again == large  # sticky: nobody flips back and forth
    share = sum(a == "fixed-b" for a in large.values()) / len(users)
    assert 0.12 < share < 0.28  # Binomial(400, 0.2): sd 0.02


def test_promote_then_rollback_restores_the_exact_weights_and_history_shows_both(
    gateway: GatewayProcess,
) -> None:
    name = unique("promo")
    spec = {
        "arms": [
            {"model": "fixed-a", "weight": 70},
            {"model": "fixed-b", "weight": 25},
            {"model": "fixed-c", "weight": 5},
        ],
        "fallback": "fixed-a",
    }
    created = put(gateway, name, spec).json()
    assert created["version"] == 1 and created["spec"]["arms"] == spec["arms"]

    url = f"{gateway.url}/admin/experiments/{name}"
    promoted = httpx.post(url + "/promote", json={"model": "fixed-c"}, headers=ADMIN).json()
    assert [a["weight"] for a in promoted["spec"]["arms"]] == [0, 0, 100]
    assert promoted["version"] == 2
    assert promoted["spec"]["control"] == "fixed-c"  # the winner is what the next is compared with
    assert promoted["pin"]["by"] == "ops" and promoted["pin"]["action"] == "promoted fixed-c"
    with httpx.Client() as c:
        assert {arm_of(c, gateway, name, f"u{i}") for i in range(30)} == {"fixed-c"}

    rolled = httpx.post(url + "/rollback", headers=ADMIN).json()
    assert rolled["spec"]["arms"] == spec["arms"] and rolled["spec"]["fallback"] == "fixed-a"
    assert rolled["spec"]["control"] is None
    assert rolled["version"] == 3

    history = httpx.get(url + "/history", headers=ADMIN).json()["data"]
    assert [(h["version"], h["action"], h["by"]) for h in history] == [
        (1, "created", "ops"),
        (2, "promoted fixed-c", "ops"),
        (3, "rolled back", "ops"),
    ]
    assert history[1]["before"]["arms"] == spec["arms"]
    assert history[1]["after"]["arms"] == promoted["spec"]["arms"]
    assert history[2]["after"]["arms"] == spec["arms"]
    assert all(h["at"] > time.time() - 60 for h in history)


def test_adding_a_canary_arm_and_invalid_changes(gateway: GatewayProcess) -> None:
    name = unique("canary")
    url = f"{gateway.url}/admin/experiments/{name}"
    assert put(gateway, name, arms(fixed_a=1)).status_code == 200
    added = httpx.post(url + "/arms", json={"model": "fixed-b", "weight": 0.05}, headers=ADMIN)
    assert added.status_code == 200 and added.json()["spec"]["arms"][1] == {
        "model": "fixed-b",
        "weight": 0.05,
    }
    again = httpx.post(url + "/arms", json={"model": "fixed-b", "weight": 1}, headers=ADMIN)
    assert again.status_code == 409 and "already an arm" in again.json()["error"]["message"]

    bad = [
        (arms(fixed_a=1, nope=1), "arms[1].model", "unknown model 'nope'"),
        (arms(fixed_a=0, fixed_b=0), "arms", "at least one arm needs a weight > 0"),
        (arms(fixed_a=-1), "arms[0].weight", "greater than or equal to 0"),
        ({"arms": [{"model": "fixed-a"}], "colour": "red"}, "colour", "unknown field"),
        ({"arms": [{"model": "fixed-a"}], "fallback": "nope"}, "fallback", "unknown model"),
    ]
    for spec, param, message in bad:
        resp = put(gateway, name, spec)
        assert resp.status_code == 400, spec
        err = resp.json()["error"]
        assert err["param"] == param and message in err["message"], err
    state = httpx.get(url, headers=ADMIN).json()
    assert state["version"] == 2  # nothing above changed it
    missing = httpx.post(
        f"{gateway.url}/admin/experiments/{unique('nope')}/rollback", headers=ADMIN
    )
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"


def test_admin_api_needs_an_admin_key_and_so_does_forcing_an_arm(gateway: GatewayProcess) -> None:
    url = f"{gateway.url}/admin/experiments"
    client_key = httpx.get(url, headers=CLIENT)
    assert client_key.status_code == 403
    assert client_key.json()["error"]["type"] == "permission_error"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer sk-wrong"}).status_code == 401

    with httpx.Client() as c:
        forced = chat(c, gateway, "ab", "u1", **{"x-flywheel-arm": "support-v1"})
        assert forced.status_code == 403 and forced.json()["error"]["param"] == "x-flywheel-arm"
        ok = c.post(
            gateway.base_url + "/chat/completions",
            json={"model": "ab", "messages": HELLO, "max_tokens": 1},
            headers={**ADMIN, "x-flywheel-arm": "support-v1"},
        )
        assert ok.status_code == 200 and ok.headers["x-flywheel-arm"] == "support-v1"
        not_an_arm = c.post(
            gateway.base_url + "/chat/completions",
            json={"model": "ab", "messages": HELLO, "max_tokens": 1},
            headers={**ADMIN, "x-flywheel-arm": "fixed-a"},
        )
        assert not_an_arm.status_code == 400
        assert "not an arm of experiment 'ab'" in not_an_arm.json()["error"]["message"]


def vllm_models(vllm: VLLMServer) -> dict[str, dict[str, Any]]:
    return {m["id"]: m for m in httpx.get(vllm.base_url + "/models").json()["data"]}


@pytest.mark.vllm
def test_registering_an_adapter_loads_it_into_vllm_and_routes_to_it(
    gateway: GatewayProcess, vllm: VLLMServer, tiny_model: Path, tmp_path: Path
) -> None:
    adapter = make_test_adapter(tiny_model, tmp_path / "support-v2", seed=2)
    name = unique("support-v2")
    models_url = f"{gateway.url}/admin/models"

    resp = httpx.post(
        models_url,
        json={"name": name, "upstream": "local", "adapter_path": str(adapter)},
        headers=ADMIN,
    )
    assert resp.status_code == 201, resp.text
    assert set(ModelVersion.model_fields) <= set(resp.json())  # every setting shown back
    assert vllm_models(vllm)[name]["parent"] == "base"
    listed = {m["id"]: m for m in httpx.get(gateway.base_url + "/models", headers=CLIENT).json()["data"]}  # fmt: skip  # noqa: E501
    assert listed[name]["flywheel"]["adapter"] is True
    assert listed[name]["flywheel"]["parent"] == "base"

    exp = unique("adapters")
    assert put(gateway, exp, arms(base=1, **{name.replace("-", "_"): 1})).status_code == 200
    answer = httpx.post(
        gateway.base_url + "/chat/completions",
        json={"model": exp, "messages": HELLO, "max_tokens": 3},
        headers={**ADMIN, "x-flywheel-arm": name},
    )
    assert answer.status_code == 200 and answer.json()["model"] == name
    assert answer.json()["usage"]["completion_tokens"] >= 1  # vLLM generated with the adapter

    # A vLLM replica that forgets the adapter (a restart) gets it loaded again.
    unload = httpx.post(vllm.base_url + "/unload_lora_adapter", json={"lora_name": name})
    assert unload.status_code == 200  # (the gateway may reload it at once: that is the point)
    eventually(lambda: name in vllm_models(vllm), "the gateway reloads the adapter", every_s=0.2)

    in_use = httpx.delete(f"{models_url}/{name}", headers=ADMIN)
    assert in_use.status_code == 409 and exp in in_use.json()["error"]["message"]
    assert put(gateway, exp, arms(base=1)).status_code == 200
    removed = httpx.delete(f"{models_url}/{name}", headers=ADMIN)
    assert removed.status_code == 200 and removed.json()["deleted"] is True
    assert name not in vllm_models(vllm)
    assert name not in {m["id"] for m in httpx.get(models_url, headers=ADMIN).json()["data"]}


@pytest.mark.vllm
def test_base_answers_stay_the_base_models_while_more_adapters_than_slots_share_its_batches(
    gateway: GatewayProcess, vllm: VLLMServer, tiny_model: Path, tmp_path: Path
) -> None:
    """vLLM's CPU build indexed a base token's LoRA slot (-1) as the last slot: once every
    slot held an adapter, base requests batched beside adapter requests were answered
    partly by that adapter (the control of an evaluation, the base arm of an A/B).
    Flywheel's vLLM plugin masks those tokens; this is what a user of the base sees."""
    names = [unique(f"slot-{k}") for k in range(5)]  # more adapters than --max-loras (4)
    for k, name in enumerate(names):
        path = make_test_adapter(tiny_model, tmp_path / name, seed=11 + k)
        resp = httpx.post(
            f"{gateway.url}/admin/models",
            json={"name": name, "upstream": "local", "adapter_path": str(path)},
            headers=ADMIN,
        )
        assert resp.status_code == 201, resp.text
    questions = [f"Can I return my {item}?" for item in ("shoes", "bags", "hats", "coats")]

    def ask(model: str, question: str) -> str:
        return flywheel.ask(gateway, model, question, max_tokens=12)

    try:
        alone = {q: ask("base", q) for q in questions}
        adapters = {(n, q): ask(n, q) for n in names for q in questions}  # every slot filled
        assert sum(a != alone[q] for (_, q), a in adapters.items()) >= len(adapters) // 2
        for _ in range(2):
            with ThreadPoolExecutor(8) as pool:
                work = [(m, q) for i, q in enumerate(questions) for m in ("base", names[i])]
                work += [(names[-1], q) for q in questions]
                answers = list(pool.map(lambda mq: (mq, ask(*mq)), work))
            assert {q: a for (m, q), a in answers if m == "base"} == alone
    finally:
        for name in names:
            httpx.delete(f"{gateway.url}/admin/models/{name}", headers=ADMIN)


@pytest.mark.vllm
def test_an_adapter_that_does_not_exist_is_refused_and_gets_no_traffic(
    gateway: GatewayProcess, vllm: VLLMServer, tmp_path: Path
) -> None:
    name = unique("ghost")
    missing = tmp_path / "no-such-adapter"
    resp = httpx.post(
        f"{gateway.url}/admin/models",
        json={"name": name, "upstream": "local", "adapter_path": str(missing)},
        headers=ADMIN,
    )
    assert resp.status_code == 400, resp.text
    err = resp.json()["error"]
    assert err["param"] == "adapter_path" and err["code"] == "adapter_load_failed"
    assert str(missing) in err["message"]
    assert name not in vllm_models(vllm)
    listed = httpx.get(f"{gateway.url}/admin/models", headers=ADMIN).json()["data"]
    assert name not in {m["id"] for m in listed}
    refused = put(gateway, unique("ghostly"), arms(base=1, **{name.replace("-", "_"): 1}))
    assert refused.status_code == 400 and f"unknown model '{name}'" in refused.text


def test_an_open_circuit_costs_no_latency(gateway: GatewayProcess) -> None:
    """One arm's upstream hangs: after 3 timeouts its circuit opens and requests go
    straight to the fallback, as fast as a healthy experiment's."""
    broken, healthy = unique("hanging"), unique("healthy")
    assert put(gateway, broken, {**arms(hang=1), "fallback": "fixed-a"}).status_code == 200
    assert put(gateway, healthy, {**arms(fixed_b=1), "fallback": "fixed-a"}).status_code == 200

    def p95(c: httpx.Client, model: str, n: int = 60) -> float:
        times = []
        for i in range(n):
            t0 = time.perf_counter()
            resp = chat(c, gateway, model, f"u{i}")
            times.append(time.perf_counter() - t0)
            assert resp.status_code == 200
        return sorted(times)[int(0.95 * n) - 1]

    with httpx.Client() as c:
        for i in range(3):  # each waits for the 0.3 s timeout, then falls back
            resp = chat(c, gateway, broken, f"warm{i}")
            assert resp.headers["x-flywheel-fallback-from"] == "hang"
        assert gateway.metric("flywheel_upstream_replicas", upstream="hanging", state="open") == 1
        p95(c, healthy, 20)  # warm up both paths
        healthy_p95, broken_p95 = p95(c, healthy), p95(c, broken)
    assert broken_p95 < 0.3  # no request waited for the hanging upstream
    assert broken_p95 <= 2 * healthy_p95 + 0.002, (broken_p95, healthy_p95)
    skipped = gateway.metric(
        "flywheel_upstream_errors_total", upstream="hanging", reason="no_replica"
    )
    assert skipped >= 60


def test_shadow_answers_are_logged_and_never_returned(
    gateway: GatewayProcess, redis_server: RedisProcess
) -> None:
    name = unique("shadowed")
    spec = {**arms(fixed_a=1), "shadow": {"model": "fixed-b", "share": 1.0}}
    assert put(gateway, name, spec).status_code == 200
    with httpx.Client() as c:
        resp = chat(c, gateway, name, "u1")
    assert resp.json()["choices"][0]["message"]["content"] == "answer from fixed-a"
    served = resp.json()["id"]
    r = redis.Redis.from_url(redis_server.url)
    deadline = time.monotonic() + 5
    shadow = None
    while shadow is None:
        assert time.monotonic() < deadline, "no shadow record was logged"
        for _, fields in r.xrevrange(KS.interaction_stream, count=50):
            rec = feedback_log.interaction(r, fields[b"id"].decode())
            if rec and rec.get("shadow_of") == served:
                shadow = rec
        time.sleep(0.05)
    assert shadow["arm"] == "fixed-b" and shadow["answer"] == "answer from fixed-b"
    assert shadow["experiment"] == name and shadow["status"] == "ok"
    # shadow traffic is nobody's: the arm's request counters do not see it
    assert r.hget(KS.requests(name, "fixed-b"), "requests") is None


def test_the_report_on_real_traffic_and_ratings_says_promote(
    gateway: GatewayProcess, tmp_path: Path
) -> None:
    """800 users split 50/50, rated 50% up on control and 70% up on the candidate."""
    name = unique("report")
    spec = {**arms(fixed_a=50, fixed_b=50), "decision": {"min_ratings": 100}}
    assert put(gateway, name, spec).status_code == 200

    # One client for all threads: an httpx.Client costs ~20 ms to make (its TLS context).
    with httpx.Client() as c, ThreadPoolExecutor(8) as pool:

        def serve(i: int) -> tuple[str, str]:
            resp = chat(c, gateway, name, f"user-{i}")
            return resp.json()["id"], resp.headers["x-flywheel-arm"]

        served = list(pool.map(serve, range(800)))
        by_arm = {arm: [rid for rid, a in served if a == arm] for arm in ("fixed-a", "fixed-b")}
        share_up = {"fixed-a": 0.5, "fixed-b": 0.7}
        ratings = [
            (rid, "up" if j < round(share_up[arm] * len(ids)) else "down")
            for arm, ids in by_arm.items()
            for j, rid in enumerate(ids)
        ]

        def rate(item: tuple[str, str]) -> int:
            rid, rating = item
            return c.post(
                gateway.base_url + "/feedback",
                headers=CLIENT,
                json={"response_id": rid, "rating": rating},
            ).status_code

        assert set(pool.map(rate, ratings)) == {201}

    rep = httpx.get(f"{gateway.url}/admin/experiments/{name}/report", headers=ADMIN).json()
    got = {a["model"]: a for a in rep["arms"]}
    for arm, ids in by_arm.items():
        assert got[arm]["requests"] == got[arm]["assigned"] == len(ids)
        assert got[arm]["ratings"]["count"] == len(ids)
        assert got[arm]["tokens"] == {"prompt": 7 * len(ids), "completion": 3 * len(ids)}
        assert got[arm]["latency_ms"]["p50"] is not None
    assert rep["srm"]["mismatch"] is False
    assert rep["decision"]["action"] == "promote" and rep["decision"]["model"] == "fixed-b"
    assert rep["comparisons"][0]["test"] == "mixture SPRT"
    assert rep["srm"]["assigned"] == 800  # users

    cli = subprocess.run(
        [sys.executable, "-m", "gateway", "report", name, "--config", str(gateway.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**gateway.env, "COLUMNS": "200"},
    )
    assert cli.returncode == 0, cli.stderr
    assert "Decision: promote fixed-b" in cli.stdout and "fixed-a" in cli.stdout
    as_json = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "report",
            name,
            "--json",
            "--config",
            str(gateway.config_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=gateway.env,
    )
    assert orjson.loads(as_json.stdout)["decision"] == rep["decision"]


def test_with_redis_down_at_start_it_routes_by_the_config_then_seeds_redis(
    vllm: VLLMServer, faulty: FaultyUpstream, tmp_path: Path
) -> None:
    later = RedisProcess(tmp_path / "redis")  # not started yet
    gw = GatewayProcess(
        gateway_config(vllm.base_url, faulty.base_url, later.url), tmp_path / "gw"
    ).start()
    try:
        with httpx.Client() as c:
            assert arm_of(c, gw, "broken-arm", "u1") == "base"  # by the config's experiment
            later.start()
            deadline = time.monotonic() + 10
            while (
                resp := c.get(f"{gw.url}/admin/experiments/ab", headers=ADMIN)
            ).status_code != 200:  # noqa: E501
                assert time.monotonic() < deadline, resp.text
                time.sleep(0.1)
            assert resp.json()["version"] == 1
            history = c.get(f"{gw.url}/admin/experiments/ab/history", headers=ADMIN).json()
            assert [h["action"] for h in history["data"]] == ["created from config"]
            assert arm_of(c, gw, "broken-arm", "u1") == "base"
    finally:
        gw.stop()
        later.stop()
