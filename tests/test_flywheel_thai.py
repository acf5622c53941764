"""The loop in Thai, on the real vLLM: corrections rated in Thai are trained into the
tiny model, and the gate lets the candidate say them whole.

The tiny model's vocabulary has no Thai merges: it spends about three tokens on a Thai
character, nine times the characters / 3 estimate. An answer budget from the estimate
cut every Thai answer short (``finish_reason: length``); counted with the base model's
tokenizer, each fits.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import redis
import yaml

from localstack import VLLMServer
from retrain import tokens
from retrain.jobs import JobStore
from retrain.text_metrics import answer_budget

from .conftest import CLIENT
from .services import GatewayProcess, RedisProcess
from .test_flywheel import config_for, new_experiment, retrain

# Can I return ...? / ... can be returned within 30 days.
ITEMS = ["รองเท้า", "เสื้อ", "กระเป๋า", "หมวก", "นาฬิกา"]


def question(item: str) -> str:
    return f"คืน{item}ได้ไหม"


def correction(item: str) -> str:
    return f"คืน{item}ได้ภายใน 30 วัน"


def rate_in_thai(gw: GatewayProcess, experiment: str) -> None:
    with httpx.Client(timeout=60) as c:
        for i, item in enumerate(ITEMS):
            resp = c.post(
                gw.base_url + "/chat/completions",
                headers=CLIENT,
                json={
                    "model": experiment,
                    "user": f"customer-th-{i}",
                    "max_tokens": 8,
                    "messages": [{"role": "user", "content": question(item)}],
                },
            )
            assert resp.status_code == 200, resp.text
            rated = c.post(
                gw.base_url + "/feedback",
                headers=CLIENT,
                json={
                    "response_id": resp.json()["id"],
                    "rating": "down",
                    "correction": correction(item),
                },
            )
            assert rated.status_code == 201, rated.text


@pytest.mark.vllm
@pytest.mark.timeout(600)
def test_a_candidate_trained_on_thai_corrections_says_them_whole_in_the_gate(
    gateway: GatewayProcess,
    vllm: VLLMServer,
    redis_server: RedisProcess,
    tiny_model: Path,
    tmp_path: Path,
) -> None:
    own = tokens.local(str(tiny_model))
    for item in ITEMS:  # the estimate's budget (about 30) is half the answer (about 64)
        answer = correction(item)
        assert answer_budget(answer, 1.5, 16, 512) < own.text(answer)
    exp = new_experiment(gateway)
    rate_in_thai(gateway, exp)
    golden = tmp_path / "golden.jsonl"
    golden.write_text(
        "".join(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": question(item)},
                        {"role": "assistant", "content": correction(item)},
                    ]
                },
                ensure_ascii=False,
            )
            + "\n"
            for item in ITEMS
        ),
        encoding="utf-8",
    )
    config = config_for(gateway, tmp_path, tiny_model)
    doc = yaml.safe_load(config.read_text())
    doc["retrain"]["eval"].update(max_tokens=512, golden=str(golden), golden_tolerance=1.0)
    config.write_text(yaml.safe_dump(doc))

    run = retrain(config, "run", "--experiment", exp)
    assert run.returncode in (0, 6), run.stdout + run.stderr
    (counted,) = [line for line in run.stdout.splitlines() if "answer budgets counted by" in line]
    assert str(tiny_model) in counted and "vllm:base (" in counted  # candidate's, control's
    (job,) = [
        j
        for j in JobStore(redis.Redis.from_url(redis_server.url)).list(50)
        if j["experiment"] == exp
    ]
    ev = job["evaluation"]
    assert str(tiny_model) in ev["tokenizer"] and ev["tokens_exact"]
    root = tmp_path / "datasets" / exp
    train = root / (root / "latest").read_text().strip() / "train.jsonl"
    answers = {json.loads(line)["messages"][-1]["content"] for line in train.open()}
    trained = [r for r in ev["rows"] if r["source"] == "golden" and r["expected"] in answers]
    assert trained, ev["rows"]
    for row in trained:  # every answer it was trained on, whole: not cut at the budget
        assert row["expected_tokens"] == own.text(row["expected"])
        assert row["max_tokens"] >= row["expected_tokens"]
        assert row["candidate"]["answer"] == row["expected"], row
