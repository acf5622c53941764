"""A console stack for tests and screenshots: real Redis, a fixed-upstream gateway with
admin, reviewer and client keys, and traffic made through the gateway itself."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from .conftest import ADMIN, ADMIN_KEY, API_KEY, OTHER_TENANT_KEY
from .fixed_gateway import fixed_gateway
from .services import GatewayProcess, RedisProcess
from .stores import Store

REVIEWER_KEY = "sk-review-0123456789abcdef"
TENANT_REVIEWER_KEY = "sk-review-other-0123456789"
CHROMIUM = os.environ.get("FLYWHEEL_CHROMIUM", "/usr/lib/chromium/chromium")


def console_auth() -> dict[str, Any]:
    return {
        "api_keys": [
            {"key": API_KEY, "name": "tests"},
            {"key": OTHER_TENANT_KEY, "name": "intruder", "tenant": "other"},
        ],
        "admin_keys": [{"key": ADMIN_KEY, "name": "ops", "tenant": "tests"}],
        "reviewer_keys": [
            {"key": REVIEWER_KEY, "name": "rita"},
            {"key": TENANT_REVIEWER_KEY, "name": "tom", "tenant": "other"},
        ],
    }


@contextmanager
def console_gateway(
    redis_server: RedisProcess | Store, workdir: Path, db: int = 0
) -> Iterator[tuple[GatewayProcess, Path]]:
    """The gateway and the config file ``retrain`` reads (datasets under ``workdir``)."""
    datasets = workdir / "datasets"
    retrain = {
        "dataset_dir": str(datasets),
        "min_examples": 1,
        "split": {"validation": 0, "test": 0},
    }
    console = {"page_size": 5}  # paging shows with a few interactions
    with fixed_gateway(
        redis_server, workdir, db, auth=console_auth(), retrain=retrain, console=console
    ) as (gw, _):
        yield gw, gw.config_path


def new_experiment(gw: GatewayProcess, prefix: str = "ui") -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    spec = {
        "arms": [{"model": "fixed-a", "weight": 90}, {"model": "fixed-b", "weight": 10}],
        "fallback": "fixed-c",
    }
    r = httpx.put(f"{gw.url}/admin/experiments/{name}", json=spec, headers=ADMIN)
    assert r.is_success, r.text
    return name


def chat_and_rate(
    gw: GatewayProcess,
    experiment: str,
    n: int,
    *,
    rating: Any = "down",
    key: str = API_KEY,
    prefix: str = "question",
) -> list[str]:
    """``n`` chats through the gateway, each rated ``rating`` (None: not rated)."""
    ids = []
    with httpx.Client(headers={"Authorization": f"Bearer {key}"}, timeout=10) as c:
        for i in range(n):
            body = {
                "model": experiment,
                "user": f"user-{i % 7}",
                "messages": [{"role": "user", "content": f"{prefix} {i}: where is my parcel?"}],
            }
            r = c.post(gw.base_url + "/chat/completions", json=body)
            assert r.status_code == 200, r.text
            rid = r.json()["id"]
            ids.append(rid)
            if rating is not None:
                fb = c.post(gw.base_url + "/feedback", json={"response_id": rid, "rating": rating})
                assert fb.status_code == 201, fb.text
    return ids


def retrain_build(config: Path, experiment: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "retrain",
            "build",
            "--experiment",
            experiment,
            "--config",
            str(config),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )


def chromium_available() -> bool:
    return Path(CHROMIUM).exists() or shutil.which("chromium") is not None
