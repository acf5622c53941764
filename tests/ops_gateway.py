"""A fast gateway config for the operations tests: only the instant ``fixed-*`` upstream
models (no vLLM) and an A/B experiment over two of them (served with
``GatewayProcess(..., workers=N, ready_path="/readyz")``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from .conftest import ADMIN_KEY, API_KEY, ID_SECRET
from .services import GatewayProcess

AUTH = {"Authorization": f"Bearer {API_KEY}"}
# One client (making one per request costs ~50 ms of TLS set-up); "Connection: close" makes
# each request a new connection, so the kernel may give it to any worker.
HTTP = httpx.Client(timeout=30, headers={**AUTH, "Connection": "close"})
EXPERIMENT = "ops-ab"


def fixed_config(fixed_url: str, redis_url: str, tmp: Path, **extra: Any) -> dict[str, Any]:
    return {
        "redis_url": redis_url,
        "id_secret": ID_SECRET,
        "auth": {
            "api_keys": [{"key": API_KEY, "name": "tests"}],
            "admin_keys": [{"key": ADMIN_KEY, "name": "ops"}],
        },
        "upstreams": {"fixed": {"kind": "vllm", "base_url": fixed_url}},
        "models": {m: {"upstream": "fixed", "model": m} for m in ("fixed-a", "fixed-b")},
        "experiments": {
            EXPERIMENT: {
                "arms": [{"model": "fixed-a", "weight": 50}, {"model": "fixed-b", "weight": 50}],
                "fallback": "fixed-a",
            },
            "ops-quiet": {"arms": [{"model": "fixed-a"}]},
        },
        "retrain": {"dataset_dir": str(tmp / "datasets"), "min_examples": 1},
        **extra,
    }


def chat(
    gw: GatewayProcess, user: str, model: str = EXPERIMENT, stream: bool = False
) -> tuple[str, str]:
    """One chat completion on a fresh connection (so the kernel picks any worker):
    its response id and the arm that answered."""
    resp = HTTP.post(
        gw.base_url + "/chat/completions",
        json={
            "model": model,
            "user": user,
            "stream": stream,
            "messages": [{"role": "user", "content": "hi"}],
        },
    )
    resp.raise_for_status()
    arm = resp.headers["x-flywheel-arm"]
    if stream:
        return resp.text.split('"id":"', 1)[1].split('"', 1)[0], arm
    return str(resp.json()["id"]), arm


def rate(gw: GatewayProcess, response_id: str, rating: str | int, **extra: Any) -> None:
    body = {"response_id": response_id, "rating": rating, **extra}
    resp = HTTP.post(gw.base_url + "/feedback", json=body)
    assert resp.status_code == 201, resp.text
