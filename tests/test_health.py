"""Health, readiness and metrics endpoints."""

from __future__ import annotations

import httpx
import openai

from .services import GatewayProcess


def test_healthz_and_readyz(gateway: GatewayProcess) -> None:
    assert httpx.get(gateway.url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(gateway.url + "/readyz")
    assert ready.status_code == 200
    checks = ready.json()["checks"]
    assert checks["redis"] == "ok" and checks["upstream:local"] == "ok"
    assert checks["upstream:dead"] != "ok"  # reported, but one live upstream is enough


def test_metrics_count_requests_by_experiment_arm_and_status(
    client: openai.OpenAI, gateway: GatewayProcess
) -> None:
    labels = {"experiment": "default", "arm": "base", "status": "2xx"}
    before = gateway.metric("flywheel_requests_total", **labels)
    client.chat.completions.create(
        model="default", messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    assert gateway.metric("flywheel_requests_total", **labels) == before + 1
    assert (
        gateway.metric("flywheel_request_duration_seconds_count", experiment="default", arm="base")
        >= 1
    )
    assert gateway.metric("flywheel_tokens_total", arm="base", kind="completion") > 0
