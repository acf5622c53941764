"""Distillation, end to end on the tiny stack: a teacher's unrated traffic trains a
student, which answers held-out questions as the teacher does and becomes its canary.

The teacher is the tiny model with an adapter trained on a set of answers (as the
tutorial trains one: rated corrections and ``retrain run``); the student is the base
tiny model, served by the same vLLM.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from flywheel_stack import VLLMServer
from retrain.text_metrics import chrf

from .conftest import ADMIN, CLIENT
from .helpers.flywheel import ask, new_experiment, rated_experiment
from .services import GatewayProcess, RedisProcess

PRODUCTS = (
    "boots sandals scarves gloves belts wallets umbrellas backpacks sweaters hoodies "
    "jeans shorts skirts dresses coats vests ties caps mittens slippers sneakers loafers "
    "blouses leggings pyjamas swimsuits raincoats beanies earrings necklaces bracelets "
    "watches sunglasses suitcases purses towels blankets pillows curtains rugs"
).split()


def retrain(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``retrain`` as a user runs it; a training of the tiny model on a busy CPU may take
    minutes."""
    argv = [sys.executable, "-m", "retrain", *args, "--config", str(config)]
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)


def question(product: str) -> str:
    return f"Can I return {product}?"


@pytest.mark.vllm
@pytest.mark.timeout(2400)  # two trainings of the tiny model: the teacher's, the student's
def test_a_student_trained_on_the_teachers_traffic_answers_as_the_teacher_does(
    gateway: GatewayProcess,
    vllm: VLLMServer,
    redis_server: RedisProcess,
    tiny_model: Path,
    tmp_path: Path,
) -> None:
    # The teacher: the tiny model taught the shop's return answers.
    taught, config = rated_experiment(gateway, tmp_path, tiny_model)
    first = retrain(config, "run", "--experiment", taught)
    assert first.returncode == 0, first.stdout + first.stderr
    spec = httpx.get(f"{gateway.url}/admin/experiments/{taught}", headers=ADMIN).json()["spec"]
    (tuned,) = [a["model"] for a in spec["arms"] if a["model"] != "base"]
    adapter = httpx.get(f"{gateway.url}/admin/models/{tuned}", headers=ADMIN).json()
    # The same adapter, priced as a hosted model is (per token): the expensive teacher.
    teacher = f"{tuned}-hosted"
    resp = httpx.post(
        f"{gateway.url}/admin/models",
        headers=ADMIN,
        json={
            "name": teacher,
            "upstream": "local",
            "model": teacher,
            "adapter_path": adapter["adapter_path"],
            "price": {"prompt_per_1m": 2.5, "completion_per_1m": 10.0},
        },
    )
    assert resp.is_success, resp.text

    # 40 unrated requests of one workload go to the teacher, and a few of another.
    with httpx.Client(timeout=60) as c:
        for i, product in enumerate([*PRODUCTS[:40], "opening hours", "gift cards"]):
            workload = "returns" if i < 40 else "stores"
            resp = c.post(
                gateway.base_url + "/chat/completions",
                headers={**CLIENT, "x-flywheel-workload": workload},
                json={
                    "model": teacher,
                    "user": f"shopper-{i}",
                    "messages": [{"role": "user", "content": question(product)}],
                    "temperature": 0,
                    "max_tokens": 32,
                },
            )
            assert resp.status_code == 200, resp.text

    # An experiment whose control is the teacher; the student is trained and canaried.
    exp = new_experiment(gateway)
    resp = httpx.put(
        f"{gateway.url}/admin/experiments/{exp}",
        headers=ADMIN,
        json={"arms": [{"model": teacher, "weight": 1}], "fallback": "base"},
    )
    assert resp.is_success, resp.text
    doc = yaml.safe_load(config.read_text())
    doc["retrain"]["split"] = {"validation": 0, "test": 0.2, "seed": 0}
    doc["retrain"]["eval"]["min_examples"] = 4
    # Five held-out answers give a wide interval (one run: chrF 0.52 vs 0.94, gain -0.42,
    # 95% CI -0.89 to +0.05): the gate here lets the canary's ratings decide, and the
    # student's closeness to the teacher is checked below, against the base's.
    doc["retrain"]["distill"] = {"margin": -1.0}
    doc["retrain"]["local"]["price"] = {"gpu_hour": 2.0, "tokens_per_s": 2000.0}
    config.write_text(yaml.safe_dump(doc))
    started = time.monotonic()
    run = retrain(
        config,
        "run",
        "--experiment",
        exp,
        "--distill",
        "--teacher",
        teacher,
        "--student",
        str(tiny_model),
        "--workload",
        "returns",
    )
    assert run.returncode == 0, run.stdout + run.stderr
    print(f"retrain run --distill: {time.monotonic() - started:.0f} s")
    print(run.stdout)
    assert f"is a canary of '{exp}'" in run.stdout
    spec = httpx.get(f"{gateway.url}/admin/experiments/{exp}", headers=ADMIN).json()["spec"]
    (student,) = [a["model"] for a in spec["arms"] if a["model"] != teacher]
    model = httpx.get(f"{gateway.url}/admin/models/{student}", headers=ADMIN).json()
    assert model["lineage"]["teacher"] == teacher and model["lineage"]["workload"] == "returns"

    # The dataset holds the teacher's answers to this workload only.
    root = tmp_path / "datasets" / exp / "distill" / teacher / "workload" / "returns"
    version = root / (root / "latest").read_text().strip()
    rows = [orjson.loads(line) for line in (version / "examples.jsonl").read_bytes().splitlines()]
    asked = {r["line"]["messages"][-2]["content"] for r in rows}
    assert asked <= {question(p) for p in PRODUCTS[:40]} and len(asked) >= 30
    held_out = [r["line"]["messages"] for r in rows if r["split"] == "test"]
    assert len(held_out) >= 4

    # On held-out questions the student answers close to the teacher; the base does not.
    def similarity(model: str) -> float:
        scores = []
        for messages in held_out:
            reference: Any = messages[-1]["content"]
            answer = ask(gateway, model, messages[-2]["content"])
            scores.append(chrf(answer, reference))
        return sum(scores) / len(scores)

    student_similarity, base_similarity = similarity(student), similarity("base")
    print(f"chrF to the teacher: student {student_similarity:.3f}, base {base_similarity:.3f}")
    assert student_similarity >= 0.5
    assert base_similarity < 0.2

    # The report prices both arms: the student by its GPU time, the teacher per token.
    with httpx.Client(timeout=60) as c:
        for i, product in enumerate(PRODUCTS[:20]):
            resp = c.post(
                gateway.base_url + "/chat/completions",
                headers={**ADMIN, "x-flywheel-arm": student if i % 2 else teacher},
                json={
                    "model": exp,
                    "user": f"buyer-{i}",
                    "messages": [{"role": "user", "content": question(product)}],
                    "max_tokens": 32,
                },
            )
            assert resp.status_code == 200, resp.text
    report = httpx.get(f"{gateway.url}/admin/experiments/{exp}/report", headers=ADMIN).json()
    costs = {a["model"]: a["cost_per_1k_requests"] for a in report["arms"]}
    print(f"cost per 1k requests: {costs}")
    assert 0 < costs[student] < costs[teacher]
    (saving,) = report["savings"]
    print(saving["text"])
    assert saving["candidate"] == student and saving["per_1k_requests"] > 0


def test_run_distill_needs_a_teacher(tmp_path: Path) -> None:
    config = tmp_path / "flywheel.yaml"
    config.write_text("{}")
    done = retrain(config, "run", "--experiment", "shop", "--distill")
    assert done.returncode == 2 and "--teacher" in done.stderr
