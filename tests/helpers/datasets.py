"""Ratings made through a real gateway, and the dataset builds that read them."""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import yaml

from gateway.core.config import load_settings
from gateway.core.store import keyspace
from retrain.config import RetrainSettings
from retrain.dataset import Builder
from retrain.feedback_log import connect

from ..conftest import ADMIN, CLIENT
from ..services import GatewayProcess


def new_experiment(gw: GatewayProcess) -> str:
    name = f"ds-{uuid.uuid4().hex[:8]}"
    spec = {"arms": [{"model": "fixed-a", "weight": 1}, {"model": "fixed-b", "weight": 0}]}
    assert httpx.put(f"{gw.url}/admin/experiments/{name}", json=spec, headers=ADMIN).is_success
    return name


def serve_and_rate(gw: GatewayProcess, experiment: str, items: list[dict[str, Any]]) -> list[str]:
    """Each item: prompt, user, rating, and optionally correction, tags, arm. → response ids."""

    def one(item: dict[str, Any]) -> str:
        headers = {**CLIENT}
        if item.get("arm"):
            headers = {**ADMIN, "x-flywheel-arm": item["arm"]}
        messages = [{"role": "user", "content": item["prompt"]}]
        body = {"model": experiment, "user": item["user"], "messages": messages}
        resp = c.post(gw.base_url + "/chat/completions", json=body, headers=headers)
        assert resp.status_code == 200, resp.text
        rid = resp.json()["id"]
        fb = {"response_id": rid, "rating": item["rating"]}
        fb.update({k: item[k] for k in ("correction", "tags") if k in item})
        rated = c.post(gw.base_url + "/feedback", json=fb, headers=headers)
        assert rated.status_code == 201, rated.text
        return str(rid)

    with httpx.Client() as c, ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, items))


def settings_for(
    gw: GatewayProcess, tmp_path: Path, **retrain: Any
) -> tuple[RetrainSettings, Path]:
    """The gateway's own config plus a retrain section, written where the CLI can read it."""
    doc = yaml.safe_load(gw.config_path.read_text())
    doc["retrain"] = {
        "dataset_dir": str(tmp_path / "datasets"),
        "min_examples": 1,
        "split": {"validation": 0, "test": 0},
        **retrain,
    }
    path = tmp_path / "retrain.yaml"
    path.write_text(yaml.safe_dump(doc))
    return load_settings(path, schema=RetrainSettings), path


def build(settings: RetrainSettings, experiment: str, **kwargs: Any) -> Any:
    return Builder(connect(settings), keyspace(settings), settings, experiment).run(**kwargs)


def lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def sft(prompt: str, answer: str) -> dict[str, Any]:
    return {
        "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    }
