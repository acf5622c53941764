"""One turn of the loop from the command line: a retrain config, rated corrections and
the canary's answers."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import yaml

from ..conftest import ADMIN, ADMIN_KEY, API_KEY, CLIENT
from ..services import GatewayProcess

# Six held out for the gate: its interval at n = 2 is widened ~7x (Student's t at one
# degree of freedom), so two answers whose gains differ by 0.1 already fail a sound
# candidate; at n = 6 the widening is 1.4x.
ITEMS = [
    "shoes",
    "shirts",
    "jackets",
    "bags",
    "hats",
    "socks",
    "belts",
    "scarves",
    "gloves",
    "boots",
    "coats",
    "sandals",
]


def correction(item: str) -> str:
    return f"Yes: {item} can be returned within 30 days with the receipt."


def config_for(gw: GatewayProcess, tmp_path: Path, tiny_model: Path, **local: Any) -> Path:
    doc = yaml.safe_load(gw.config_path.read_text())
    doc["retrain"] = {
        "dataset_dir": str(tmp_path / "datasets"),
        "min_examples": 1,
        "split": {"validation": 0, "test": 0.5, "seed": 0},  # six of the twelve held out
        "gateway_url": gw.url,
        "gateway_key": API_KEY,
        "admin_key": ADMIN_KEY,
        "eval": {"margin": 0.05, "min_examples": 2, "max_tokens": 64},
        "canary_share": 0.05,
        "local": {
            "base_model": str(tiny_model),
            "upstream": "local",
            "adapter_dir": str(tmp_path / "adapters"),
            "max_steps": 300,
            "learning_rate": 0.005,  # the tutorial's recipe (examples/local.yaml)
            "batch_size": 4,
            **local,
        },
    }
    path = tmp_path / f"flywheel-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def retrain(config: Path, *args: str, crash: str | None = None, **popen: Any) -> Any:
    env = {**os.environ, "COLUMNS": "200"}
    if crash:
        env["FLYWHEEL_RETRAIN_CRASH_AT"] = crash
    argv = [sys.executable, "-m", "retrain", *args, "--config", str(config)]
    if popen:
        return subprocess.Popen(argv, env=env, **popen)
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)


def ask(
    gw: GatewayProcess, model: str, question: str, arm: str | None = None, max_tokens: int = 64
) -> str:
    headers = {**ADMIN, "x-flywheel-arm": arm} if arm else CLIENT
    resp = httpx.post(
        gw.base_url + "/chat/completions",
        headers=headers,
        timeout=120,
        json={
            "model": model,
            "messages": [{"role": "user", "content": question}],
            "temperature": 0,
            "max_tokens": max_tokens,
        },
    )
    assert resp.status_code == 200, resp.text
    return str(resp.json()["choices"][0]["message"]["content"])


def rate_corrections(gw: GatewayProcess, experiment: str, workload: str | None = None) -> None:
    with httpx.Client(timeout=60) as c:
        for i, item in enumerate(ITEMS):
            body: dict[str, Any] = {
                "model": experiment,
                "user": f"customer-{i}",
                "max_tokens": 8,
                "messages": [{"role": "user", "content": f"Can I return {item}?"}],
            }
            if workload:
                body["metadata"] = {"workload": workload}
            resp = c.post(gw.base_url + "/chat/completions", headers=CLIENT, json=body)
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


def new_experiment(gw: GatewayProcess) -> str:
    name = f"loop-{uuid.uuid4().hex[:6]}"
    spec = {"arms": [{"model": "base", "weight": 1}], "fallback": "base"}
    resp = httpx.put(f"{gw.url}/admin/experiments/{name}", headers=ADMIN, json=spec)
    assert resp.is_success, resp.text
    return name


def rated_experiment(
    gw: GatewayProcess, tmp_path: Path, tiny_model: Path, **local: Any
) -> tuple[str, Path]:
    """A new experiment whose answers were rated down with corrections, and the retrain
    config that trains on them."""
    exp = new_experiment(gw)
    rate_corrections(gw, exp)
    return exp, config_for(gw, tmp_path, tiny_model, **local)


def canary_of(gw: GatewayProcess, exp: str) -> str:
    spec = httpx.get(f"{gw.url}/admin/experiments/{exp}", headers=ADMIN).json()["spec"]
    (canary,) = [a["model"] for a in spec["arms"] if a["model"] != "base"]
    return canary


def answers_a_trained_correction(gw: GatewayProcess, exp: str, tmp_path: Path) -> bool:
    root = tmp_path / "datasets" / exp
    train = (root / (root / "latest").read_text().strip() / "train.jsonl").read_text()
    item = next(i for i in ITEMS if correction(i) in train)
    return ask(gw, exp, f"Can I return {item}?", arm=canary_of(gw, exp)) == correction(item)
