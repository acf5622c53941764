"""Two turns of the loop on the real vLLM: turn 1's canary is moved through every stage
by the decider on simulated ratings and becomes the control; turn 2 trains on new
failures and is evaluated against the promoted model, not the old base."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import redis

from flywheel_stack import VLLMServer
from gateway.core import keys
from retrain.jobs import JobStore

from .conftest import ADMIN, CLIENT
from .helpers.flywheel import config_for, rate_corrections, retrain
from .services import GatewayProcess, RedisProcess

# Large simulated effect (0.6 in mean score): a wide mixing prior and few users suffice.
# Latency is not what this test is about: LoRA on CPU is slower than the base.
RULES = {"min_ratings": 20, "mixture_sd": 0.3, "min_requests": 20, "max_p95_ratio": 100}


def simulated_ratings(gw: GatewayProcess, experiment: str, liked: str, users: int) -> None:
    """New users ask once and rate: ``liked``'s users say up 80% of the time, others 20%."""
    batch = uuid.uuid4().hex[:6]
    with httpx.Client(timeout=60) as c, ThreadPoolExecutor(4) as pool:

        def one(i: int) -> None:
            resp = c.post(
                gw.base_url + "/chat/completions",
                headers=CLIENT,
                json={
                    "model": experiment,
                    "user": f"{batch}-{i}",
                    "max_tokens": 1,
                    "messages": [{"role": "user", "content": "Hello"}],
                },
            )
            assert resp.status_code == 200, resp.text
            up = (i % 5 != 0) if resp.headers["x-flywheel-arm"] == liked else (i % 5 == 0)
            rated = c.post(
                gw.base_url + "/feedback",
                headers=CLIENT,
                json={"response_id": resp.json()["id"], "rating": "up" if up else "down"},
            )
            assert rated.status_code == 201, rated.text

        list(pool.map(one, range(users)))


@pytest.mark.vllm
@pytest.mark.timeout(900)  # two turns, each training the tiny model
def test_turn_one_is_promoted_in_stages_and_turn_two_is_evaluated_against_it(
    gateway: GatewayProcess,
    vllm: VLLMServer,
    redis_server: RedisProcess,
    tiny_model: Path,
    tmp_path: Path,
) -> None:
    exp = f"turns-{uuid.uuid4().hex[:6]}"
    url = f"{gateway.url}/admin/experiments/{exp}"
    spec = {
        "arms": [{"model": "base", "weight": 1}],
        "fallback": "base",
        "auto_promote": True,
        "decision": RULES,
    }
    assert httpx.put(url, headers=ADMIN, json=spec).is_success
    config = config_for(gateway, tmp_path, tiny_model)

    rate_corrections(gateway, exp)
    first = retrain(config, "run", "--experiment", exp)
    assert first.returncode == 0 and "is a canary of" in first.stdout, first.stdout + first.stderr
    state = httpx.get(url, headers=ADMIN).json()
    (canary,) = [a["model"] for a in state["spec"]["arms"] if a["model"] != "base"]

    deadline = time.monotonic() + 240
    while state["spec"].get("control") != canary:
        assert time.monotonic() < deadline, state
        simulated_ratings(gateway, exp, liked=canary, users=100)
        time.sleep(1.5)  # three decision periods
        state = httpx.get(url, headers=ADMIN).json()
    history = httpx.get(url + "/history", headers=ADMIN).json()["data"]
    steps = [(h["by"], h["action"].split(":")[0]) for h in history if h["by"] == "decider"]
    assert steps == [
        ("decider", f"auto ramp {canary} to 20%"),
        ("decider", f"auto ramp {canary} to 50%"),
        ("decider", f"auto promote {canary}"),
    ]
    assert {a["model"]: a["weight"] for a in state["spec"]["arms"]} == {"base": 0, canary: 100}

    rate_corrections(gateway, exp)  # new failures, rated under the promoted model
    second = retrain(config, "run", "--experiment", exp)
    assert second.returncode in (0, 6), second.stdout + second.stderr  # canary or rejected
    jobs = [
        j
        for j in JobStore(redis.Redis.from_url(redis_server.url), keys.PLAIN_KEYSPACE).list(50)
        if j["experiment"] == exp
    ]
    latest = max(jobs, key=lambda j: j["created"])
    assert latest["dataset_parent"] is not None  # trained on a newer dataset version
    assert latest["evaluation"]["control"] == canary  # against the promoted model
