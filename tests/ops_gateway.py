"""A fast gateway config for the operations tests: only the instant ``fixed-*`` upstream
models (no vLLM) and an A/B experiment over two of them (served with
``GatewayProcess(..., workers=N, ready_path="/readyz")``)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import httpx

from . import fixed_gateway
from .conftest import CLIENT
from .services import GatewayProcess

EXPERIMENT = "ops-ab"


def fixed_config(fixed_url: str, redis_url: str, tmp: Path, **extra: Any) -> dict[str, Any]:
    """The fixed gateway's config with an A/B experiment over two instant models."""
    experiments = {
        EXPERIMENT: {
            "arms": [{"model": "fixed-a", "weight": 50}, {"model": "fixed-b", "weight": 50}],
            "fallback": "fixed-a",
        },
        "ops-quiet": {"arms": [{"model": "fixed-a"}]},
    }
    retrain = {"dataset_dir": str(tmp / "datasets"), "min_examples": 1}
    return fixed_gateway.fixed_config(
        fixed_url, redis_url, experiments=experiments, retrain=retrain, **extra
    )


@functools.cache
def _http() -> httpx.Client:
    """One client for the module's requests, made on first use (making one per request
    costs ~50 ms of set-up); "Connection: close" makes each request a new connection, so
    the kernel may give it to any worker."""
    return httpx.Client(timeout=30, headers={**CLIENT, "Connection": "close"})


def chat(
    gw: GatewayProcess, user: str, model: str = EXPERIMENT, stream: bool = False
) -> tuple[str, str]:
    """One chat completion on a fresh connection (so the kernel picks any worker):
    its response id and the arm that answered."""
    resp = _http().post(
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
    resp = _http().post(gw.base_url + "/feedback", json=body)
    assert resp.status_code == 201, resp.text
