"""The decider on a real gateway: staged promotion, control following the promote,
operators' pins, guardrails driven by the fixed upstream, the judge's two orders, cost.

Every model answers from the fault server's instant ``fixed-*`` models (``fixed-slow``:
the same answer 0.2 s later), so the latencies the guardrails see are the ones the test
sets, not the machine's load. Ratings are scripted per user: the candidate's users like
it 80% of the time, the control's 20%.
"""

from __future__ import annotations

import getpass
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from retrain import feedback_log

from .conftest import ADMIN, ADMIN_KEY, API_KEY, CLIENT
from .faulty_upstream import FaultyUpstream
from .fixed_gateway import FIXED, fixed_gateway
from .polling import eventually
from .services import GatewayProcess
from .stores import STORES, Store, store_for

DECISIONS_DB = 9
DECIDE_S = 0.2
PRICE = {"prompt_per_1m": 1.0, "completion_per_1m": 2.0}
# Effects in the tests are large (0.6 in mean score): a wide mixing prior, few users.
RULES = {"min_ratings": 20, "mixture_sd": 0.3, "min_requests": 20}
REVIEWER = "sk-review-decisions-0123456789"


@pytest.fixture(scope="module", params=STORES)
def store(request: pytest.FixtureRequest) -> Store:
    return store_for(request, DECISIONS_DB)


@pytest.fixture(scope="module")
def decided(
    store: Store, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[GatewayProcess, FaultyUpstream]]:
    models: dict[str, Any] = {m: {"upstream": "fixed", "model": m} for m in FIXED}
    models["fixed-a"]["price"] = PRICE
    models["fixed-slow"] = {"upstream": "fixed", "model": "fixed-slow"}
    models["judge"] = {"upstream": "fixed", "model": "judge-scripted"}
    with fixed_gateway(
        store,
        tmp_path_factory.mktemp("decisions"),
        models=models,
        control={"decide_s": DECIDE_S, "refresh_s": 0.1, "judge": "judge"},
        auth={
            "api_keys": [{"key": API_KEY, "name": "tests"}],
            "admin_keys": [{"key": ADMIN_KEY, "name": "ops", "tenant": "tests"}],
            "reviewer_keys": [{"key": REVIEWER, "name": "rita"}],
        },
    ) as pair:
        yield pair


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def admin(gw: GatewayProcess, method: str, path: str, **kw: Any) -> dict[str, Any]:
    resp = httpx.request(method, f"{gw.url}/admin/{path}", headers=ADMIN, timeout=10, **kw)
    assert resp.status_code < 300, resp.text
    doc: dict[str, Any] = resp.json()
    return doc


def traffic(gw: GatewayProcess, name: str, users: int, liked: str | None = None) -> list[str]:
    """``users`` new users send one request each and rate it (unless ``liked`` is None):
    the users of ``liked`` say up 80% of the time, the others 20%. Returns their arms."""
    batch = uuid.uuid4().hex[:6]
    with httpx.Client(timeout=10) as c, ThreadPoolExecutor(8) as pool:

        def one(i: int) -> str:
            resp = c.post(
                gw.base_url + "/chat/completions",
                headers={**CLIENT, "x-flywheel-user": f"{batch}-{i}"},
                json={
                    "model": name,
                    "messages": [{"role": "user", "content": "hi"}],
                    "max_tokens": 2,
                },
            )
            assert resp.status_code == 200, resp.text
            arm = resp.headers["x-flywheel-arm"]
            if liked is not None:
                up = (i % 5 != 0) if arm == liked else (i % 5 == 0)
                fb = c.post(
                    gw.base_url + "/feedback",
                    headers=CLIENT,
                    json={"response_id": resp.json()["id"], "rating": "up" if up else "down"},
                )
                assert fb.status_code == 201, fb.text
            return arm

        return list(pool.map(one, range(users)))


def weights(state: dict[str, Any]) -> dict[str, float]:
    return {a["model"]: a["weight"] for a in state["spec"]["arms"]}


def wait_for_version(
    gw: GatewayProcess, name: str, above: int, timeout: float = 5
) -> dict[str, Any]:
    def acted() -> dict[str, Any] | None:
        state: dict[str, Any] = admin(gw, "GET", f"experiments/{name}")
        return state if state["version"] > above else None

    return eventually(acted, f"the decider acts on {name}", timeout_s=timeout)


@pytest.mark.slow
def test_a_winner_is_ramped_stage_by_stage_then_promoted_and_becomes_the_control(
    decided: tuple[GatewayProcess, FaultyUpstream], store: Store
) -> None:
    gw, _ = decided
    name = unique("ramp")
    state = admin(
        gw,
        "PUT",
        f"experiments/{name}",
        json={
            "arms": [{"model": "fixed-a", "weight": 95}, {"model": "fixed-b", "weight": 5}],
            "auto_promote": True,
            "decision": RULES,
        },
    )
    for _ in range(40):  # each round: new users, then a few decision periods
        if state["spec"]["control"] == "fixed-b":
            break
        traffic(gw, name, 100, liked="fixed-b")
        time.sleep(3 * DECIDE_S)
        state = admin(gw, "GET", f"experiments/{name}")
    assert state["spec"]["control"] == "fixed-b" and state["pin"] is None
    seen = [
        {a["model"]: a["weight"] for a in h["after"]["arms"]}
        for h in admin(gw, "GET", f"experiments/{name}/history")["data"]
    ]
    assert seen == [
        {"fixed-a": 95, "fixed-b": 5},
        {"fixed-a": 80, "fixed-b": 20},
        {"fixed-a": 50, "fixed-b": 50},
        {"fixed-a": 0, "fixed-b": 100},
    ]
    history = admin(gw, "GET", f"experiments/{name}/history")["data"][1:]
    assert [h["by"] for h in history] == ["decider"] * 3
    assert history[0]["action"].startswith("auto ramp fixed-b to 20%: to 20% of traffic (stage 2")
    assert history[1]["action"].startswith("auto ramp fixed-b to 50%")
    assert history[2]["action"].startswith("auto promote fixed-b: score 0.")
    # each stage judged by the guardrails on its own requests: versions count what they
    # served (the score test adds the ramp's stages up)
    r = store.client()
    for version in (2, 3):
        users = int(r.hget(store.ks.user_scores(name, version, "fixed-b"), "users") or 0)
        assert users >= RULES["min_ratings"]
    r.close()
    # a promote is final: later looks change nothing
    time.sleep(5 * DECIDE_S)  # the behaviour: five decision periods pass and change nothing
    assert admin(gw, "GET", f"experiments/{name}")["version"] == state["version"]


@pytest.mark.slow
def test_the_deciders_ramp_steps_keep_the_evidence_and_a_persons_change_starts_anew(
    decided: tuple[GatewayProcess, FaultyUpstream],
) -> None:
    gw, _ = decided
    name = unique("strata")
    state = admin(
        gw,
        "PUT",
        f"experiments/{name}",
        json={
            "arms": [{"model": "fixed-a", "weight": 95}, {"model": "fixed-b", "weight": 5}],
            "auto_promote": True,
            "decision": RULES,
        },
    )
    assert state["ramp_from"] == state["version"] == 1
    for _ in range(40):  # small rounds: one ramp step at most (20 requests per arm first)
        if state["version"] > 1:
            break
        traffic(gw, name, 50, liked="fixed-b")
        time.sleep(3 * DECIDE_S)
        state = admin(gw, "GET", f"experiments/{name}")
    assert weights(state) == {"fixed-a": 80, "fixed-b": 20}
    assert state["version"] == 2 and state["ramp_from"] == 1  # the decider's step kept it
    report = admin(gw, "GET", f"experiments/{name}/report")
    assert report["ramp_from"] == 1
    (cmp,) = report["comparisons"]
    # the 5% stage's users and its looks still count at 20%
    assert cmp["ready"] and cmp["ramp_p_value"] is not None and cmp["ramp_p_value"] < 0.5
    changed = admin(
        gw,
        "PUT",
        f"experiments/{name}",
        json={
            **state["spec"],
            "arms": [{"model": "fixed-a", "weight": 70}, {"model": "fixed-b", "weight": 30}],
        },
    )
    assert changed["ramp_from"] == changed["version"] == 3  # a person's change: a new ramp
    (cmp,) = admin(gw, "GET", f"experiments/{name}/report")["comparisons"]
    assert not cmp["ready"] and cmp["strata"] == 0 and cmp["ramp_p_value"] is None


def test_auto_promote_applies_the_decision_and_records_it(
    decided: tuple[GatewayProcess, FaultyUpstream],
) -> None:
    gw, _ = decided
    name = unique("auto")
    admin(
        gw,
        "PUT",
        f"experiments/{name}",
        json={
            "arms": [{"model": "fixed-a", "weight": 50}, {"model": "fixed-b", "weight": 50}],
            "auto_promote": True,
            "decision": RULES,
        },
    )
    traffic(gw, name, 100, liked="fixed-b")
    state = wait_for_version(gw, name, 1)
    assert weights(state) == {"fixed-a": 0, "fixed-b": 100}
    last = admin(gw, "GET", f"experiments/{name}/history")["data"][-1]
    assert last["by"] == "decider" and last["action"].startswith("auto promote fixed-b")
    time.sleep(5 * DECIDE_S)  # the behaviour: later rounds see it applied and change nothing
    assert admin(gw, "GET", f"experiments/{name}")["version"] == 2


def looks(gw: GatewayProcess, name: str, action: str) -> float:
    """How many of the decider's looks at ``name`` led to ``action`` (its metric)."""
    text = httpx.get(f"{gw.url}/metrics").text
    prefix = f'flywheel_decisions_total{{action="{action}",experiment="{name}"}} '
    line = next((x for x in text.splitlines() if x.startswith(prefix)), prefix + "0")
    return float(line.rsplit(" ", 1)[1])


@pytest.mark.slow
def test_a_manual_rollback_stays_through_ten_periods_of_overwhelming_evidence_until_resumed(
    decided: tuple[GatewayProcess, FaultyUpstream],
) -> None:
    gw, _ = decided
    name = unique("paused")
    admin(
        gw,
        "PUT",
        f"experiments/{name}",
        json={
            "arms": [{"model": "fixed-a", "weight": 50}, {"model": "fixed-b", "weight": 50}],
            "auto_promote": True,
            "decision": RULES,
        },
    )
    traffic(gw, name, 100, liked="fixed-b")
    promoted = wait_for_version(gw, name, 1, timeout=30)
    assert weights(promoted) == {"fixed-a": 0, "fixed-b": 100}
    assert promoted["updated_by"] == "decider" and promoted["spec"]["control"] == "fixed-b"

    rolled = admin(gw, "POST", f"experiments/{name}/rollback")
    assert weights(rolled) == {"fixed-a": 50, "fixed-b": 50}
    assert rolled["pin"]["by"] == "ops" and rolled["pin"]["action"] == "rolled back"

    # Fresh users under the rolled-back weights like fixed-b as much as before: by the
    # evidence alone the decider would promote it again at its next look.
    traffic(gw, name, 100, liked="fixed-b")
    before = looks(gw, name, "paused")
    deadline = time.monotonic() + 300 * DECIDE_S  # a loaded machine looks less often
    while looks(gw, name, "paused") - before < 10 and time.monotonic() < deadline:
        time.sleep(DECIDE_S)
    assert looks(gw, name, "paused") - before >= 10  # ten periods looked at, none acted on
    state = admin(gw, "GET", f"experiments/{name}")
    assert state["version"] == rolled["version"] and weights(state) == weights(rolled)
    report = admin(gw, "GET", f"experiments/{name}/report")
    assert report["paused"] is True and report["pin"]["by"] == "ops"
    assert report["decision"]["action"] == "promote"  # what the evidence says
    assert report["decision"]["reasons"][0] == (
        f"paused by ops at version {rolled['version']} (rolled back): no automatic action "
        "until an operator resumes"
    )

    resumed = admin(gw, "POST", f"experiments/{name}/resume")
    assert resumed["pin"] is None and resumed["version"] == rolled["version"]
    # (the decider may act on the evidence right after the resume: find the resume itself)
    history = admin(gw, "GET", f"experiments/{name}/history")["data"]
    entry = next(e for e in reversed(history) if e["action"].startswith("resumed"))
    assert entry["by"] == "ops" and entry["action"] == (
        f"resumed automatic decisions (paused by ops at version {rolled['version']})"
    )
    # The evidence collected while it was paused counts: the decider acts on it now.
    again = wait_for_version(gw, name, rolled["version"], timeout=30)
    assert weights(again) == {"fixed-a": 0, "fixed-b": 100}
    last = admin(gw, "GET", f"experiments/{name}/history")["data"][-1]
    assert last["by"] == "decider" and last["action"].startswith("auto promote fixed-b")
    refused = httpx.post(f"{gw.url}/admin/experiments/{name}/resume", headers=ADMIN, timeout=10)
    assert refused.status_code == 409 and "is not paused" in refused.json()["error"]["message"]


def test_a_canary_added_by_retrain_run_pauses_nothing_and_a_ramp_pauses_the_decider(
    decided: tuple[GatewayProcess, FaultyUpstream],
) -> None:
    gw, _ = decided
    name = unique("canary")
    spec = {
        "arms": [{"model": "fixed-a", "weight": 100}],
        "auto_promote": True,
        "decision": {**RULES, "stages": [50, 100]},
    }
    created = admin(gw, "PUT", f"experiments/{name}", json=spec)
    assert created["pin"] is None  # creating an experiment pauses nothing
    # what `retrain run` does with a candidate that passed its gate
    canary = admin(gw, "POST", f"experiments/{name}/arms", json={"model": "fixed-b", "weight": 5})
    assert canary["pin"] is None
    same = admin(gw, "PUT", f"experiments/{name}", json={**spec, "arms": canary["spec"]["arms"]})
    assert same["pin"] is None  # a PUT that leaves the traffic as it was pauses nothing
    ramped = admin(
        gw,
        "PUT",
        f"experiments/{name}",
        json={
            **spec,
            "arms": [{"model": "fixed-a", "weight": 50}, {"model": "fixed-b", "weight": 50}],
        },
    )
    assert ramped["pin"]["by"] == "ops" and ramped["pin"]["action"] == "replaced"
    # another canary while paused keeps the pause, and the decider stays out
    third = admin(gw, "POST", f"experiments/{name}/arms", json={"model": "fixed-c", "weight": 1})
    assert third["pin"] == ramped["pin"]
    traffic(gw, name, 100, liked="fixed-b")
    before = looks(gw, name, "paused")
    deadline = time.monotonic() + 150 * DECIDE_S
    while looks(gw, name, "paused") - before < 3 and time.monotonic() < deadline:
        time.sleep(DECIDE_S)
    assert looks(gw, name, "paused") - before >= 3
    assert admin(gw, "GET", f"experiments/{name}")["version"] == third["version"]
    admin(gw, "POST", f"experiments/{name}/resume")
    acted = wait_for_version(gw, name, third["version"], timeout=30)
    assert acted["updated_by"] == "decider"


def resume_cli(gw: GatewayProcess, name: str, key: str | None) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "gateway", "experiments", "resume", name]
    argv += ["--config", str(gw.config_path), *(["--key", key] if key else [])]
    env = {k: v for k, v in os.environ.items() if k != "FLYWHEEL_ADMIN_KEY"}
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)


@pytest.mark.slow
def test_resume_is_an_admin_action_of_the_experiments_tenant_on_the_api_and_command_line(
    decided: tuple[GatewayProcess, FaultyUpstream],
) -> None:
    gw, _ = decided

    def key(role: str, tenant: str) -> str:
        body = {"name": unique(f"{tenant}-{role}"), "role": role, "tenant": tenant}
        return str(admin(gw, "POST", "keys", json=body)["key"])

    alpha_admin, beta_admin = key("admin", "alpha"), key("admin", "beta")
    refused = {
        "a client key of the tenant": (key("client", "alpha"), 403, "needs an admin key"),
        "a client key of the config": (CLIENT["Authorization"][7:], 403, "needs an admin key"),
        "a reviewer key of the tenant": (key("reviewer", "alpha"), 403, "needs an admin key"),
        "an admin of another tenant": (beta_admin, 404, "No experiment named"),
    }
    name = unique("tenanted")
    spec = {
        "arms": [{"model": "fixed-a", "weight": 50}, {"model": "fixed-b", "weight": 50}],
        "tenant": "alpha",
        "auto_promote": True,
        "decision": RULES,
    }
    admin(gw, "PUT", f"experiments/{name}", json=spec)

    def pause(weight: float) -> dict[str, Any]:
        arms = [
            {"model": "fixed-a", "weight": 100 - weight},
            {"model": "fixed-b", "weight": weight},
        ]
        state = admin(gw, "PUT", f"experiments/{name}", json={**spec, "arms": arms})
        assert state["pin"]["by"] == "ops"
        return state

    paused = pause(40)
    url = f"{gw.url}/admin/experiments/{name}/resume"
    for who, (secret, status, message) in refused.items():
        resp = httpx.post(url, headers={"Authorization": f"Bearer {secret}"}, timeout=10)
        assert resp.status_code == status, (who, resp.text)
        error = resp.json()["error"]
        assert message in error["message"] and set(error) == {"message", "type", "param", "code"}
    assert httpx.post(url, timeout=10).status_code == 401  # no key at all
    assert admin(gw, "GET", f"experiments/{name}")["pin"] == paused["pin"]  # all refused
    tenant_admin = httpx.post(url, headers={"Authorization": f"Bearer {alpha_admin}"}, timeout=10)
    assert tenant_admin.status_code == 200, tenant_admin.text
    assert tenant_admin.json()["pin"] is None
    entry = admin(gw, "GET", f"experiments/{name}/history")["data"][-1]
    assert entry["by"].startswith("alpha-admin-") and entry["action"].startswith("resumed")

    # The command line: the same rule for a key given with --key.
    paused = pause(30)
    for who, (secret, _, _) in refused.items():
        done = resume_cli(gw, name, secret)
        assert done.returncode == 1, (who, done.stdout, done.stderr)
        assert done.stderr.startswith("gateway experiments resume: "), done.stderr
    assert "needs an admin key" in resume_cli(gw, name, REVIEWER).stderr  # a config reviewer
    assert admin(gw, "GET", f"experiments/{name}")["pin"] == paused["pin"]
    done = resume_cli(gw, name, alpha_admin)
    assert done.returncode == 0, done.stderr
    assert (
        done.stdout.strip() == f"{name}: automatic decisions resumed at version {paused['version']}"
    )
    assert admin(gw, "GET", f"experiments/{name}")["pin"] is None
    entry = admin(gw, "GET", f"experiments/{name}/history")["data"][-1]
    assert entry["by"].startswith("alpha-admin-")
    # without a key: the operator who holds the config (and so the Redis)
    pause(20)
    done = resume_cli(gw, name, None)
    assert done.returncode == 0, done.stderr
    entry = admin(gw, "GET", f"experiments/{name}/history")["data"][-1]
    assert entry["by"] == f"cli:{getpass.getuser()}" and entry["action"].startswith("resumed")
    again = resume_cli(gw, name, None)
    assert again.returncode == 1 and "is not paused" in again.stderr


def test_a_slow_candidate_is_rolled_back_by_the_latency_guardrail_though_liked(
    decided: tuple[GatewayProcess, FaultyUpstream],
) -> None:
    gw, _ = decided
    name = unique("slow")
    admin(
        gw,
        "PUT",
        f"experiments/{name}",
        json={
            "arms": [{"model": "fixed-a", "weight": 50}, {"model": "fixed-slow", "weight": 50}],
            "auto_promote": True,
            "decision": RULES,
        },
    )
    traffic(gw, name, 120, liked="fixed-slow")
    state = wait_for_version(gw, name, 1)
    assert weights(state) == {"fixed-a": 50, "fixed-slow": 0}
    last = admin(gw, "GET", f"experiments/{name}/history")["data"][-1]
    assert last["by"] == "decider"
    assert last["action"].startswith("auto rollback fixed-slow: p95 latency at least")


def test_equal_arms_are_left_alone_whatever_the_machine_load(
    decided: tuple[GatewayProcess, FaultyUpstream],
) -> None:
    """Both arms answer at once and are liked alike: no guardrail trips, nothing moves."""
    gw, _ = decided
    name = unique("equal")
    admin(
        gw,
        "PUT",
        f"experiments/{name}",
        json={
            "arms": [{"model": "fixed-a", "weight": 50}, {"model": "fixed-b", "weight": 50}],
            "auto_promote": True,
            "decision": RULES,
        },
    )
    for _ in range(3):
        traffic(gw, name, 100, liked=None)
        time.sleep(2 * DECIDE_S)
    report = admin(gw, "GET", f"experiments/{name}/report")
    assert report["version"] == 1 and report["comparisons"][0]["guardrails_ok"] is True
    assert report["arms"][0]["requests"] + report["arms"][1]["requests"] == 300


def test_cost_per_1k_requests_in_the_report_and_prometheus_with_an_inherited_price(
    decided: tuple[GatewayProcess, FaultyUpstream],
) -> None:
    gw, _ = decided
    model = unique("fixed-b-tuned")
    registered = admin(
        gw, "POST", "models", json={"name": model, "upstream": "fixed", "model": "fixed-b"}
    )
    assert {k: v for k, v in registered["price"].items() if v is not None} == PRICE
    assert admin(gw, "GET", f"models/{model}")["price_from"] == "fixed-a"
    name = unique("cost")
    admin(
        gw,
        "PUT",
        f"experiments/{name}",
        json={"arms": [{"model": "fixed-a", "weight": 50}, {"model": model, "weight": 50}]},
    )
    traffic(gw, name, 40)

    def costed() -> dict[str, Any] | None:  # once the log writer's batch is in
        report: dict[str, Any] = admin(gw, "GET", f"experiments/{name}/report")
        costs = [a["cost_per_1k_requests"] for a in report["arms"]]
        return report if costs == [0.013, 0.013] else None

    # 7 prompt and 3 completion tokens per answer at 1 and 2 per 1M: 13e-6 per request
    report = eventually(costed, "each arm costs 0.013 per 1k requests")
    text = httpx.get(f"{gw.url}/metrics").text
    spent = [
        float(x.rsplit(" ", 1)[1])
        for x in text.splitlines()
        if x.startswith(f'flywheel_cost_total{{arm="{model}",experiment="{name}"}}')
    ]
    requests = sum(a["requests"] for a in report["arms"] if a["model"] == model)
    assert spent and spent[0] * 1000 / requests == pytest.approx(0.013)
    admin(gw, "PUT", f"experiments/{name}", json={"arms": [{"model": "fixed-a"}]})


def judged(gw: GatewayProcess, upstream: FaultyUpstream, store: Store, name: str) -> float | None:
    """Serve one request of a shadowed experiment; the judge score of its shadow answer."""
    upstream.judged.clear()
    with httpx.Client(timeout=10) as c:
        served = c.post(
            gw.base_url + "/chat/completions",
            headers=CLIENT,
            json={"model": name, "messages": [{"role": "user", "content": "hi"}]},
        ).json()["id"]
    deadline = time.monotonic() + 5
    with store.client() as r:
        while True:
            assert time.monotonic() < deadline, "no judged shadow record"
            for _, fields in r.xrevrange(store.ks.interaction_stream, count=20):
                rec = feedback_log.interaction(r, fields[b"id"].decode())
                if rec and rec.get("shadow_of") == served:
                    score: float | None = rec.get("judge_score")
                    return score
            time.sleep(0.05)


def test_the_shadow_judge_sees_both_orders_so_position_bias_cancels(
    decided: tuple[GatewayProcess, FaultyUpstream], store: Store
) -> None:
    gw, upstream = decided
    name = unique("judged")
    admin(
        gw,
        "PUT",
        f"experiments/{name}",
        json={"arms": [{"model": "fixed-a"}], "shadow": {"model": "fixed-b", "share": 1.0}},
    )
    # a judge that always prefers the second answer: a tie, not a win for the shadow
    upstream.verdicts = {"Answer B:": "5"}
    assert judged(gw, upstream, store, name) == 0.5
    prompts = upstream.judged
    assert len(prompts) == 2
    assert {p.split("Answer A:\n")[1].split("\n")[0] for p in prompts} == {
        "answer from fixed-a",
        "answer from fixed-b",
    }
    # a judge that prefers the shadow's answer in either place
    shadow_b, served_b = "Answer B:\nanswer from fixed-b", "Answer B:\nanswer from fixed-a"
    upstream.verdicts = {shadow_b: "5", served_b: "1"}
    assert judged(gw, upstream, store, name) == 1.0
    # and one that finds it a little worse in both places
    upstream.verdicts = {shadow_b: "2", served_b: "4"}
    assert judged(gw, upstream, store, name) == 0.25


def test_a_user_counts_once_with_the_mean_of_their_ratings_and_a_replaced_rating_moves_it(
    decided: tuple[GatewayProcess, FaultyUpstream], store: Store
) -> None:
    gw, _ = decided
    name = unique("units")
    admin(gw, "PUT", f"experiments/{name}", json={"arms": [{"model": "fixed-a"}]})
    with httpx.Client(timeout=10) as c:

        def ask(user: str) -> str:
            resp = c.post(
                gw.base_url + "/chat/completions",
                headers={**CLIENT, "x-flywheel-user": user},
                json={"model": name, "messages": [{"role": "user", "content": "hi"}]},
            )
            rid: str = resp.json()["id"]
            return rid

        def rate(rid: str, rating: str | int) -> None:
            resp = c.post(
                gw.base_url + "/feedback",
                headers=CLIENT,
                json={"response_id": rid, "rating": rating},
            )
            assert resp.status_code == 201, resp.text

        heavy = [ask("heavy") for _ in range(3)]
        for rid, rating in zip(heavy, ["up", "down", "up"], strict=True):
            rate(rid, rating)
        rate(ask("light"), 1)  # one star: score 0
        r = store.client()
        key = store.ks.user_scores(name, 1, "fixed-a")

        def scores() -> dict[str, float]:
            raw = r.hmget(key, "users", "ratings", "mean_sum", "mean_sq")
            return dict(
                zip(
                    ("users", "ratings", "mean_sum", "mean_sq"),
                    (float(x) for x in raw),
                    strict=True,
                )
            )

        # two users: means 2/3 and 0, over four ratings
        assert scores() == pytest.approx(
            {"users": 2, "ratings": 4, "mean_sum": 2 / 3, "mean_sq": 4 / 9}
        )
        rate(heavy[1], "up")  # the same rater changes their mind: the user's mean is now 1
        assert scores() == pytest.approx({"users": 2, "ratings": 4, "mean_sum": 1, "mean_sq": 1})
        report = admin(gw, "GET", f"experiments/{name}/report")
        assert report["arms"][0]["ratings"]["users"] == 2
        assert report["arms"][0]["ratings"]["mean_score"] == 0.5
        assert report["srm"]["assigned"] == 2  # users, not the four requests
        r.close()
