"""Runtime keys, tenants and budgets, on real gateways (fixed upstream) and a real Redis."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from gateway.control.apikeys import KeySpec

from .conftest import ADMIN, ADMIN_KEY
from .fixed_gateway import FIXED, fixed_gateway
from .polling import eventually
from .services import GatewayProcess, RedisProcess
from .stores import STORES, Store, store_for

KEYS_DB = 12  # the keys and experiments made here stay out of the other tests' database
HELLO = [{"role": "user", "content": "hello"}]
# fixed-* answers use 7 prompt and 3 completion tokens: 3.0 per answer at this price
PRICED = {m: {"upstream": "fixed", "model": m, "price": {"completion_per_1m": 1e6}} for m in FIXED}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def create_key(gw: GatewayProcess, headers: dict[str, str] = ADMIN, **body: Any) -> dict[str, Any]:
    r = httpx.post(gw.url + "/admin/keys", json=body, headers=headers)
    assert r.status_code == 201, r.text
    doc: dict[str, Any] = r.json()
    return doc


def ids(url: str, headers: dict[str, str], field: str = "id") -> set[str]:
    return {d[field] for d in httpx.get(url, headers=headers).json()["data"]}


def chat(gw: GatewayProcess, key: str, model: str = "fixed-a", **extra: Any) -> httpx.Response:
    return httpx.post(
        gw.base_url + "/chat/completions",
        headers=bearer(key),
        json={"model": model, "messages": HELLO, **extra},
    )


def known(key: str, *gws: GatewayProcess) -> None:
    """Wait until every replica in ``gws`` accepts ``key`` (``GET /v1/models``: nothing
    spent, no request counted). A replica reads keys and tenants in one load, so a key
    known there brings every tenant policy written before it."""

    def everywhere() -> bool:
        return all(
            httpx.get(gw.base_url + "/models", headers=bearer(key)).status_code == 200 for gw in gws
        )

    eventually(everywhere, f"the key {key[:8]}… reaches {len(gws)} replica(s)", timeout_s=5)


@pytest.fixture(scope="module", params=STORES)
def store(request: pytest.FixtureRequest) -> Store:
    return store_for(request, KEYS_DB)


@pytest.fixture(scope="module")
def pair(
    store: Store, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    """Two replicas on one store (a Redis database, or the cluster), every model priced."""
    workdir = tmp_path_factory.mktemp("keys")
    with fixed_gateway(store, workdir, models=PRICED) as (a, _):
        cfg = a.config_path.read_text()
        b_dir = workdir / "b"
        b_dir.mkdir()
        import yaml

        doc = yaml.safe_load(cfg)
        doc["data_dir"] = str(b_dir / "data")
        b = GatewayProcess(doc, b_dir).start()
        try:
            yield a, b
        finally:
            b.stop()


@pytest.mark.slow
def test_a_key_made_on_one_replica_works_on_another_and_its_revocation_reaches_it_within_1s(
    pair: tuple[GatewayProcess, GatewayProcess],
) -> None:
    a, b = pair
    made = create_key(a, name="app-one", tenant="alpha")
    secret = made["key"]
    assert secret.startswith("fwk-") and "digest" not in made
    eventually(lambda: chat(b, secret).status_code == 200, "the key works on b", timeout_s=1)
    r = httpx.delete(f"{a.url}/admin/keys/{made['id']}", headers=ADMIN)
    assert r.status_code == 200 and r.json()["revoked_at"]
    eventually(
        lambda: chat(b, secret).status_code != 200,
        "the revoked key stops working on the other replica",
        every_s=0.02,
    )
    refused = chat(b, secret)
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "invalid_api_key"
    with (
        openai.OpenAI(base_url=b.base_url, api_key=secret, max_retries=0) as client,
        pytest.raises(openai.AuthenticationError),
    ):
        client.chat.completions.create(model="fixed-a", messages=HELLO)


def test_rotation_stops_the_old_secret_and_keeps_the_key(
    pair: tuple[GatewayProcess, GatewayProcess],
) -> None:
    a, b = pair
    made = create_key(a, name="rotated", tenant="alpha")
    assert chat(a, made["key"]).status_code == 200
    r = httpx.post(f"{a.url}/admin/keys/{made['id']}/rotate", headers=ADMIN)
    assert r.status_code == 200, r.text
    new = r.json()
    assert new["id"] == made["id"] and new["key"] != made["key"]
    assert chat(a, made["key"]).status_code == 401
    assert chat(a, new["key"]).status_code == 200
    eventually(
        lambda: (chat(b, made["key"]).status_code, chat(b, new["key"]).status_code) == (401, 200),
        "the other replica follows the rotation",
        timeout_s=5,
    )


def test_no_plaintext_key_in_redis_logs_or_errors(
    pair: tuple[GatewayProcess, GatewayProcess], store: Store
) -> None:
    a, b = pair
    made = create_key(a, name="secretive", tenant="alpha")
    rotated = httpx.post(f"{a.url}/admin/keys/{made['id']}/rotate", headers=ADMIN).json()
    secrets = [made["key"], rotated["key"]]
    for s in secrets:
        chat(a, s)
        chat(b, s, model="no-such-model")
    httpx.delete(f"{a.url}/admin/keys/{made['id']}", headers=ADMIN)
    eventually(lambda: chat(b, secrets[1]).status_code == 401, "b sees the revocation")
    errors = [chat(b, s).text for s in secrets]
    errors.append(httpx.get(f"{a.url}/admin/keys/{made['id']}", headers=ADMIN).text)
    errors.append(httpx.get(f"{a.url}/admin/audit", headers=ADMIN).text)
    errors.append(httpx.get(f"{a.url}/admin/keys", headers=ADMIN).text)
    r = store.client()
    stored = []
    for key in r.scan_iter():
        kind = r.type(key)
        if kind == b"string":
            stored.append(r.get(key) or b"")
        elif kind == b"hash":
            stored += [k + v for k, v in r.hgetall(key).items()]
        elif kind == b"list":
            stored += r.lrange(key, 0, -1)
        elif kind == b"stream":
            stored += [str(e).encode() for e in r.xrange(key)]
    r.close()
    logs = a.log_path.read_text() + b.log_path.read_text()
    for s in secrets:
        assert not any(s.encode() in v for v in stored), "a secret is stored in Redis"
        assert s not in logs, "a secret is in a gateway's log"
        assert not any(s in e for e in errors), "a secret is in an answer"
        # nor half of one (hints show the last 4 characters only)
        assert not any(s[4:24].encode() in v for v in stored)


def test_audit_records_who_changed_which_key_with_before_and_after(
    pair: tuple[GatewayProcess, GatewayProcess],
) -> None:
    a, _ = pair
    made = create_key(a, name="audited", tenant="alpha", rpm=100)
    assert set(KeySpec.model_fields) <= set(made)  # every setting a key has is shown back
    r = httpx.patch(f"{a.url}/admin/keys/{made['id']}", json={"rpm": 5}, headers=ADMIN)
    assert r.status_code == 200 and r.json()["rpm"] == 5
    entries = httpx.get(f"{a.url}/admin/audit", headers=ADMIN).json()["data"]
    mine = [e for e in entries if e["target"] == made["id"]]
    assert [e["action"] for e in mine] == ["key.created", "key.updated"]
    assert {e["by"] for e in mine} == {"ops"}
    assert mine[0]["before"] is None and mine[0]["after"]["rpm"] == 100
    assert mine[1]["before"]["rpm"] == 100 and mine[1]["after"]["rpm"] == 5
    assert all("digest" not in (e["after"] or {}) for e in mine)


def test_bad_key_bodies_are_openai_shaped_400s(pair: tuple[GatewayProcess, GatewayProcess]) -> None:
    a, _ = pair
    bad = (
        {},
        {"name": "x", "role": "root"},
        {"name": "x", "rpm": 0},
        {"name": "x", "budget": {"limit": -1}},
        {"name": "x", "colour": "red"},
    )
    for body in bad:
        r = httpx.post(a.url + "/admin/keys", json=body, headers=ADMIN)
        assert r.status_code == 400, (body, r.text)
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    r = httpx.delete(a.url + "/admin/keys/key_nope", headers=ADMIN)
    assert r.status_code == 404


# -- tenancy ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tenants(pair: tuple[GatewayProcess, GatewayProcess]) -> dict[str, str]:
    """Tenants alpha and beta, each with an experiment, a model, a client and an admin key."""
    a, _ = pair
    out = {}
    for t in ("alpha", "beta"):
        r = httpx.post(
            a.url + "/admin/models",
            headers=ADMIN,
            json={"name": f"{t}-model", "upstream": "fixed", "model": "fixed-b", "tenant": t},
        )
        assert r.status_code == 201, r.text
        r = httpx.put(
            f"{a.url}/admin/experiments/{t}-exp",
            headers=ADMIN,
            json={"arms": [{"model": f"{t}-model"}], "tenant": t},
        )
        assert r.status_code == 200, r.text
        out[t] = create_key(a, name=f"{t}-app", tenant=t)["key"]
        out[f"{t}-admin"] = create_key(a, name=f"{t}-ops", tenant=t, role="admin")["key"]

    def listed(gw: GatewayProcess, key: str) -> set[str]:
        r = httpx.get(gw.base_url + "/models", headers=bearer(key))
        return {d["id"] for d in r.json()["data"]} if r.status_code == 200 else set()

    def everywhere() -> bool:  # the admin keys came last: each replica knows them all
        return all(
            {f"{t}-exp", f"{t}-model"} <= listed(gw, out[t]) and listed(gw, out[f"{t}-admin"])
            for gw in pair
            for t in ("alpha", "beta")
        )

    eventually(everywhere, "both replicas know the tenants' keys, models and experiments")
    return out


def test_a_tenant_lists_and_calls_only_its_own_and_shared_experiments_and_models(
    pair: tuple[GatewayProcess, GatewayProcess], tenants: dict[str, str]
) -> None:
    a, b = pair
    for gw in (a, b):
        for me, other in (("alpha", "beta"), ("beta", "alpha")):
            listed = ids(gw.base_url + "/models", bearer(tenants[me]))
            assert {f"{me}-exp", f"{me}-model", "default", *FIXED} <= listed
            assert not {f"{other}-exp", f"{other}-model"} & listed
            assert chat(gw, tenants[me], f"{me}-exp").status_code == 200
            assert chat(gw, tenants[me], "default").status_code == 200
            unknown = chat(gw, tenants[me], "no-such-name").json()["error"]
            for hidden in (f"{other}-exp", f"{other}-model"):
                r = chat(gw, tenants[me], hidden)
                err = r.json()["error"]
                # the same answer as a name that does not exist: names do not leak
                assert (r.status_code, err["code"]) == (400, unknown["code"])
                assert err["code"] == "model_not_found"
                assert err["message"] == unknown["message"].replace("no-such-name", hidden)


def test_a_tenant_admin_sees_and_changes_only_its_tenant(
    pair: tuple[GatewayProcess, GatewayProcess], tenants: dict[str, str]
) -> None:
    a, _ = pair
    mine, theirs = bearer(tenants["alpha-admin"]), "beta"
    names = ids(a.url + "/admin/experiments", mine, "name")
    assert "alpha-exp" in names and "default" in names and "beta-exp" not in names
    models = ids(a.url + "/admin/models", mine)
    assert "alpha-model" in models and "beta-model" not in models
    for path in ("", "/history", "/report"):
        r = httpx.get(f"{a.url}/admin/experiments/{theirs}-exp{path}", headers=mine)
        assert r.status_code == 404, (path, r.text)
    r = httpx.post(
        f"{a.url}/admin/experiments/{theirs}-exp/promote",
        headers=mine,
        json={"model": f"{theirs}-model"},
    )
    assert r.status_code == 404
    assert httpx.get(f"{a.url}/admin/models/{theirs}-model", headers=mine).status_code == 404
    assert httpx.delete(f"{a.url}/admin/models/{theirs}-model", headers=mine).status_code == 404
    # what it creates is its tenant's; it cannot create for another tenant
    r = httpx.post(a.url + "/admin/keys", headers=mine, json={"name": "x", "tenant": theirs})
    assert r.status_code == 403
    made = create_key(a, headers=mine, name="alpha-second")
    assert made["tenant"] == "alpha"
    keys_seen = {k["tenant"] for k in httpx.get(a.url + "/admin/keys", headers=mine).json()["data"]}
    assert keys_seen == {"alpha"}
    audit = httpx.get(a.url + "/admin/audit", headers=mine).json()["data"]
    assert audit and {e["tenant"] for e in audit} == {"alpha"}
    # a client key is no admin
    assert httpx.get(a.url + "/admin/keys", headers=bearer(tenants["alpha"])).status_code == 403


def test_a_tenant_reads_ratings_only_of_its_own_answers(
    pair: tuple[GatewayProcess, GatewayProcess], tenants: dict[str, str]
) -> None:
    a, _ = pair
    rid = chat(a, tenants["alpha"], "default").json()["id"]
    r = httpx.post(
        a.base_url + "/feedback",
        headers=bearer(tenants["alpha"]),
        json={"response_id": rid, "rating": "up"},
    )
    assert r.status_code == 201, r.text
    theirs = httpx.get(f"{a.base_url}/feedback/{rid}", headers=bearer(tenants["beta"]))
    assert theirs.status_code == 404
    r = httpx.post(
        a.base_url + "/feedback",
        headers=bearer(tenants["beta"]),
        json={"response_id": rid, "rating": "down"},
    )
    assert r.status_code == 404


def test_a_key_limited_to_some_experiments_cannot_call_the_others(
    pair: tuple[GatewayProcess, GatewayProcess], tenants: dict[str, str]
) -> None:
    a, _ = pair
    key = create_key(a, name="narrow", tenant="alpha", experiments=["alpha-exp"], models=[])["key"]
    assert chat(a, key, "alpha-exp").status_code == 200
    assert chat(a, key, "default").status_code == 400
    assert chat(a, key, "fixed-a").status_code == 400
    listed = ids(a.base_url + "/models", bearer(key))
    assert listed == {"alpha-exp"}


# -- budgets ---------------------------------------------------------------------------


# Replicas add their spend to Redis and read the others' every auth.spend_sync_s (0.1 s)
SYNCED = 0.35


def wait_for_period_start(seconds: int) -> None:
    """The clock is the behaviour under test: a budget period starts on the wall clock."""
    time.sleep(seconds - time.time() % seconds + 0.05)


@pytest.mark.slow
def test_a_budget_spent_by_real_usage_refuses_with_insufficient_quota_until_the_next_period(
    pair: tuple[GatewayProcess, GatewayProcess],
) -> None:
    a, b = pair
    period = 5
    made = create_key(a, name="budgeted", tenant="gamma", budget={"limit": 7, "period": period})
    known(made["key"], a, b)
    wait_for_period_start(period)
    answered = 0
    with (
        openai.OpenAI(base_url=a.base_url, api_key=made["key"], max_retries=0) as ca,
        openai.OpenAI(base_url=b.base_url, api_key=made["key"], max_retries=0) as cb,
    ):
        with pytest.raises(openai.RateLimitError) as refused:
            for i in range(10):
                (ca if i % 2 else cb).chat.completions.create(model="fixed-a", messages=HELLO)
                answered += 1
                # the sync period is the behaviour under test: once it has passed, the
                # other replica has seen this answer's cost
                time.sleep(SYNCED)
        assert answered == 3  # 0, 3 and 6 spent are under 7; 9 is over, on either replica
        err = refused.value.body
        assert isinstance(err, dict) and err["code"] == "insufficient_quota"
        assert refused.value.status_code == 429
        assert a.metric("flywheel_quota_refused_total", scope="key", owner=made["id"]) >= 1
        wait_for_period_start(period)
        assert cb.chat.completions.create(model="fixed-a", messages=HELLO).id


def test_a_request_that_would_exceed_by_its_max_tokens_is_refused_up_front(
    pair: tuple[GatewayProcess, GatewayProcess],
) -> None:
    a, _ = pair
    made = create_key(a, name="careful", tenant="delta", budget={"limit": 50, "period": "daily"})
    known(made["key"], a)
    r = chat(a, made["key"], max_tokens=100)  # 100 completion tokens at 1.0 would be 100 > 50
    assert r.status_code == 429 and r.json()["error"]["code"] == "insufficient_quota"
    assert chat(a, made["key"], max_tokens=10).status_code == 200


def test_a_tenant_budget_counts_every_key_of_the_tenant_and_streams_are_charged_at_their_end(
    pair: tuple[GatewayProcess, GatewayProcess],
) -> None:
    a, b = pair
    r = httpx.put(
        a.url + "/admin/tenants/epsilon",
        headers=ADMIN,
        json={"budget": {"limit": 5, "period": "daily", "soft": 0.5}},
    )
    assert r.status_code == 200, r.text
    one = create_key(a, name="eps-one", tenant="epsilon")["key"]
    two = create_key(a, name="eps-two", tenant="epsilon")["key"]
    known(one, a, b)
    known(two, a, b)
    body = {"model": "fixed-a", "messages": HELLO, "stream": True}
    url = a.base_url + "/chat/completions"
    with httpx.stream("POST", url, headers=bearer(one), json=body) as s:
        assert s.status_code == 200
        assert "[DONE]" in "".join(s.iter_text())
    eventually(
        lambda: a.metric("flywheel_budget_used_ratio", scope="tenant", owner="epsilon") != 0,
        "the stream's cost is charged at its end",
        timeout_s=2,
    )
    assert a.metric("flywheel_budget_used_ratio", scope="tenant", owner="epsilon") == 0.6
    assert a.metric("flywheel_spend_total", tenant="epsilon", model="fixed-a") == 3.0
    assert a.metric("flywheel_budget_soft_ratio", scope="tenant", owner="epsilon") == 0.5
    assert chat(b, two).status_code == 200  # 3 < 5: admitted; now 6
    r = chat(b, one)
    assert r.status_code == 429 and "tenant 'epsilon'" in r.json()["error"]["message"]
    entries = httpx.get(a.url + "/admin/audit", headers=ADMIN).json()["data"]
    assert any(e["action"] == "tenant.updated" and e["target"] == "epsilon" for e in entries)


# -- command line ----------------------------------------------------------------------


def gateway_cli(gw: GatewayProcess, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "keys", *args, "--config", str(gw.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).parent.parent,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.slow
def test_keys_made_and_revoked_from_the_command_line_work_and_stop_on_the_running_gateway(
    pair: tuple[GatewayProcess, GatewayProcess],
) -> None:
    import orjson

    a, _ = pair
    made = orjson.loads(
        gateway_cli(a, "create", "cli-app", "--tenant", "alpha", "--rpm", "50", "--json")
    )
    known(made["key"], a)  # written to Redis by another process: the replica reloads it
    assert chat(a, made["key"]).status_code == 200
    listed = gateway_cli(a, "list")
    assert made["id"] in listed and made["key"] not in listed
    rotated = gateway_cli(a, "rotate", made["id"])
    new = next(line.split()[1] for line in rotated.splitlines() if line.startswith("key:"))
    gateway_cli(a, "revoke", made["id"])
    # the rotation already stopped the first secret: the revocation is what stops the new one
    eventually(lambda: chat(a, new).status_code == 401, "the revocation reaches a")
    assert chat(a, made["key"]).status_code == 401
    assert chat(a, new).status_code == 401
    audit = gateway_cli(a, "audit")
    assert "key.revoked" in audit and "cli:" in audit


@pytest.mark.slow
def test_retrain_build_of_a_tenants_experiment_trains_on_that_tenants_ratings_only(
    pair: tuple[GatewayProcess, GatewayProcess], tenants: dict[str, str], tmp_path: Path
) -> None:
    import json

    import yaml

    a, _ = pair
    rated = {}
    for who, key in (("alpha", tenants["alpha"]), ("ops", ADMIN_KEY)):  # ops: every tenant
        prompt = f"question asked by {who}"
        r = httpx.post(
            a.base_url + "/chat/completions",
            headers=bearer(key),
            json={"model": "alpha-exp", "messages": [{"role": "user", "content": prompt}]},
        )
        assert r.status_code == 200, r.text
        fb = {"response_id": r.json()["id"], "rating": "down", "correction": f"fixed for {who}"}
        assert httpx.post(a.base_url + "/feedback", json=fb, headers=bearer(key)).status_code == 201
        rated[who] = prompt
    # beta cannot even call alpha's experiment, so it has nothing there to rate
    assert chat(a, tenants["beta"], "alpha-exp").status_code == 400
    doc = yaml.safe_load(a.config_path.read_text())
    doc["retrain"] = {
        "dataset_dir": str(tmp_path / "datasets"),
        "min_examples": 1,
        "split": {"validation": 0, "test": 0},
    }
    config = tmp_path / "retrain.yaml"
    config.write_text(yaml.safe_dump(doc))
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "retrain",
            "build",
            "--experiment",
            "alpha-exp",
            "--config",
            str(config),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parent.parent,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    root = tmp_path / "datasets" / "alpha-exp"
    latest = root / (root / "latest").read_text().strip()
    train = [json.loads(line) for line in (latest / "train.jsonl").read_text().splitlines()]
    prompts = {row["messages"][0]["content"] for row in train}
    assert prompts == {rated["alpha"]}
    answers = {row["messages"][-1]["content"] for row in train}
    assert answers == {"fixed for alpha"}
    # and its ratings, exported for one tenant, are that tenant's only
    for tenant in ("alpha", "beta"):
        out = tmp_path / f"{tenant}.jsonl"
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "retrain",
                "export-feedback",
                "--since",
                "2020-01-01",
                "--tenant",
                tenant,
                "--out",
                str(out),
                "--config",
                str(config),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=Path(__file__).parent.parent,
        )
        assert run.returncode == 0, run.stderr
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert {r["interaction"]["tenant"] for r in rows} <= {tenant}
        exported = {r["interaction"]["messages"][0]["content"] for r in rows}
        assert (rated["alpha"] in exported) == (tenant == "alpha")
        assert rated["ops"] not in exported


def test_an_expired_key_is_refused(pair: tuple[GatewayProcess, GatewayProcess]) -> None:
    a, _ = pair
    made = create_key(a, name="short-lived", tenant="alpha", expires_at=time.time() + 1.5)
    assert chat(a, made["key"]).status_code == 200
    time.sleep(max(0.0, made["expires_at"] - time.time()) + 0.1)  # expiry: the behaviour
    r = chat(a, made["key"])
    assert r.status_code == 401 and "expired" in r.json()["error"]["message"]


@pytest.mark.slow
def test_with_fail_open_off_budgets_and_rate_limits_refuse_while_redis_is_down(
    tmp_path: Path,
) -> None:
    """The default admits (serving over metering); ``auth.fail_open: false`` answers 503."""
    from .faulty_upstream import FaultyUpstream
    from .fixed_gateway import fixed_config

    own = RedisProcess(tmp_path / "redis")
    own.start()
    upstream = FaultyUpstream().start()
    cfg = fixed_config(upstream.base_url, own.url, models=PRICED)
    closed_cfg = {**cfg, "auth": {**cfg["auth"], "fail_open": False}}
    gws = [GatewayProcess(c, tmp_path / n) for c, n in ((cfg, "open"), (closed_cfg, "closed"))]
    try:
        for gw in gws:
            gw.start()
        budgeted = create_key(gws[0], name="b", budget={"limit": 1000, "period": "daily"})["key"]
        limited = create_key(gws[0], name="r", rpm=1000)["key"]
        known(budgeted, *gws)
        known(limited, *gws)
        for gw in gws:
            assert chat(gw, budgeted).status_code == 200
            assert chat(gw, limited).status_code == 200
        own.stop()
        open_gw, closed_gw = gws
        eventually(  # a sync fails: the replicas know Redis is gone
            lambda: chat(closed_gw, budgeted).status_code == 503, "Redis is known to be gone"
        )
        assert chat(open_gw, budgeted).status_code == 200
        assert chat(open_gw, limited).status_code == 200
        for key in (budgeted, limited):
            r = chat(closed_gw, key)
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "store_unavailable"
    finally:
        for gw in gws:
            gw.stop()
        upstream.stop()
        own.stop()


def test_a_tenant_admin_changes_no_shared_experiment_and_its_candidates_stay_its_own(
    pair: tuple[GatewayProcess, GatewayProcess], tenants: dict[str, str]
) -> None:
    a, _ = pair
    mine = bearer(tenants["alpha-admin"])
    r = httpx.post(
        f"{a.url}/admin/experiments/default/promote", headers=mine, json={"model": "fixed-b"}
    )
    assert r.status_code == 403, r.text
    r = httpx.put(
        f"{a.url}/admin/experiments/default",
        headers=mine,
        json={"arms": [{"model": "alpha-model"}]},
    )
    assert r.status_code == 403, r.text
    assert httpx.delete(f"{a.url}/admin/models/fixed-c", headers=mine).status_code == 403
    # its own experiment it does change
    r = httpx.post(
        f"{a.url}/admin/experiments/alpha-exp/arms",
        headers=mine,
        json={"model": "fixed-c", "weight": 0},
    )
    assert r.status_code == 200, r.text
    # a candidate registered for a tenant's experiment (as retrain run does, with an admin
    # of every tenant) belongs to that tenant
    r = httpx.post(
        a.url + "/admin/models",
        headers=ADMIN,
        json={
            "name": "alpha-exp-cand",
            "upstream": "fixed",
            "model": "fixed-a",
            "lineage": {"experiment": "alpha-exp", "job": "ftjob-1"},
        },
    )
    assert r.status_code == 201 and r.json()["tenant"] == "alpha", r.text
    eventually(
        lambda: "alpha-exp-cand" in ids(a.base_url + "/models", bearer(tenants["alpha"])),
        "the candidate is listed for its tenant",
    )
    assert "alpha-exp-cand" in ids(a.base_url + "/models", bearer(tenants["alpha"]))
    assert "alpha-exp-cand" not in ids(a.base_url + "/models", bearer(tenants["beta"]))
