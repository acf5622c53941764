"""A fast gateway for the operations tests: only the instant ``fixed-*`` upstream models
(no vLLM), an A/B experiment over two of them, and ``gateway serve --workers N``."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from gateway.localstack import tail

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


class ServedGateway(GatewayProcess):
    """``python -m gateway serve --workers N``, as an operator starts it."""

    def __init__(self, *args: Any, workers: int = 1, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.workers = workers

    def start(self, timeout: float = 60) -> ServedGateway:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway", "serve", "--config", str(self.config_path),
                 "--port", str(self.port), "--workers", str(self.workers)],
                stdout=log, stderr=subprocess.STDOUT, env=self.env,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited at start-up:\n{tail(self.log_path)}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"gateway not ready in {timeout}s:\n{tail(self.log_path)}")


def chat(
    gw: GatewayProcess, user: str, model: str = EXPERIMENT, stream: bool = False
) -> tuple[str, str]:
    """One chat completion on a fresh connection (so the kernel picks any worker):
    its response id and the arm that answered."""
    resp = HTTP.post(
        gw.base_url + "/chat/completions",
        json={"model": model, "user": user, "stream": stream,
              "messages": [{"role": "user", "content": "hi"}]},
    )  # fmt: skip
    resp.raise_for_status()
    arm = resp.headers["x-flywheel-arm"]
    if stream:
        return resp.text.split('"id":"', 1)[1].split('"', 1)[0], arm
    return str(resp.json()["id"]), arm


def rate(gw: GatewayProcess, response_id: str, rating: str | int, **extra: Any) -> None:
    body = {"response_id": response_id, "rating": rating, **extra}
    resp = HTTP.post(gw.base_url + "/feedback", json=body)
    assert resp.status_code == 201, resp.text
