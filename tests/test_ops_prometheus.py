"""A real Prometheus (Debian's package) scrapes a running gateway: the PromQL an operator
writes — per-arm request rate, p95 latency, mean score per arm — gives the right answers,
the chart's rules load and record, every dashboard query runs, and a stopped archiver
fires its alert."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from flywheel_stack import free_port, tail
from gateway.serving.metrics import LATENCY_BUCKETS

from .faulty_upstream import FaultyUpstream
from .ops_catalogue import ALERTS, dashboard_expressions
from .ops_gateway import EXPERIMENT, chat, fixed_config, rate
from .polling import eventually
from .services import GatewayProcess, RedisProcess, wait_ready

PROMETHEUS = shutil.which("prometheus")
SCORE = {"fixed-a": 2, "fixed-b": 4}  # stars: scores 0.25 and 0.75


class Prometheus:
    def __init__(self, workdir: Path, target: str) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.config = workdir / "prometheus.yml"
        rules = yaml.safe_load(ALERTS.read_text())
        for group in rules["groups"]:
            group["interval"] = "1s"  # as the scrapes: no waiting for the recording rules
        (workdir / "alerts.yaml").write_text(yaml.safe_dump(rules))
        self.config.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": ["alerts.yaml"],
                    "scrape_configs": [
                        {"job_name": "flywheel", "static_configs": [{"targets": [target]}]}
                    ],
                }
            )
        )
        self.log = workdir / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Prometheus:
        assert PROMETHEUS is not None
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    PROMETHEUS,
                    f"--config.file={self.config}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
            )
        if wait_ready(self.proc, self.url + "/-/ready", self.log, 30):
            return self
        raise RuntimeError(f"prometheus not ready:\n{tail(self.log)}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(15)

    def query(self, expr: str) -> list[dict[str, Any]]:
        resp = httpx.get(self.url + "/api/v1/query", params={"query": expr})
        doc = resp.json()
        assert doc["status"] == "success", (expr, doc)
        result: list[dict[str, Any]] = doc["data"]["result"]
        return result

    def by(self, expr: str, label: str) -> dict[str, float]:
        return {r["metric"].get(label, ""): float(r["value"][1]) for r in self.query(expr)}

    def wait_for(
        self, expr: str, label: str, want: set[str], timeout: float = 20
    ) -> dict[str, float]:
        deadline = time.monotonic() + timeout
        while True:
            got = self.by(expr, label)
            if want <= set(got) or time.monotonic() > deadline:
                return got
            time.sleep(0.25)


def need_prometheus() -> None:
    if PROMETHEUS is None:
        reason = "prometheus is not installed (apt-get install prometheus)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}: CI must run the Prometheus tests", pytrace=False)
        pytest.skip(reason)


@pytest.fixture(scope="module")
def stack(
    faulty: FaultyUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[GatewayProcess, Prometheus]]:
    need_prometheus()
    tmp = tmp_path_factory.mktemp("ops-prom")
    redis = RedisProcess(tmp / "redis")
    redis.start()
    gw = GatewayProcess(
        fixed_config(faulty.base_url, redis.url, tmp), tmp / "gw", ready_path="/readyz"
    )
    # Prometheus first: it takes a few seconds to start scraping, the gateway starts meanwhile.
    prom = Prometheus(tmp, f"127.0.0.1:{gw.port}").start()
    gw.start(timeout=60)
    try:
        yield gw, prom
    finally:
        prom.stop()
        gw.stop()
        redis.stop()


@pytest.mark.slow
def test_promql_answers_per_arm_rate_p95_and_mean_score(
    stack: tuple[GatewayProcess, Prometheus],
) -> None:
    gw, prom = stack
    exp = f'experiment="{EXPERIMENT}"'
    total = f"sum by (arm) (flywheel_requests_total{{{exp}}})"
    # The gateway exposes each arm's series at 0 before its first request.
    assert prom.wait_for(total, "arm", {"fixed-a", "fixed-b"}) == {"fixed-a": 0, "fixed-b": 0}
    counts = {"fixed-a": 0, "fixed-b": 0}
    slowest = 0.0
    for i in range(120):  # over ~3 scrapes
        t0 = time.perf_counter()
        rid, arm = chat(gw, f"user-{i}", stream=i % 2 == 0)
        slowest = max(slowest, time.perf_counter() - t0)
        counts[arm] += 1
        rate(gw, rid, SCORE[arm])
        time.sleep(0.02)
    assert min(counts.values()) > 0

    deadline = time.monotonic() + 20
    while prom.by(total, "arm") != {a: float(n) for a, n in counts.items()}:
        assert time.monotonic() < deadline, (prom.by(total, "arm"), counts)
        time.sleep(0.25)

    rates = prom.by(f"sum by (arm) (rate(flywheel_requests_total{{{exp}}}[1m]))", "arm")
    assert set(rates) == set(counts) and all(r > 0 for r in rates.values())
    # Both arms' series started at 0 and are sampled at the same instants, so rate()
    # extrapolates both alike: their ratio is the ratio of the requests each arm got.
    assert rates["fixed-a"] / rates["fixed-b"] == pytest.approx(
        counts["fixed-a"] / counts["fixed-b"], rel=1e-6
    )

    p95 = prom.by(
        "histogram_quantile(0.95, sum by (arm, le) "
        f"(rate(flywheel_request_duration_seconds_bucket{{{exp}}}[1m])))",
        "arm",
    )
    assert set(p95) == set(counts)
    # No request took the gateway longer than the slowest the client saw, so p95 lies at
    # most at the upper bound of that one's bucket.
    bound = min(b for b in LATENCY_BUCKETS if b >= slowest)
    assert all(0 < v <= bound for v in p95.values()), (p95, slowest)

    mean = prom.by(
        f"sum by (arm) (rate(flywheel_feedback_score_sum{{{exp}}}[1m]))"
        f" / sum by (arm) (rate(flywheel_feedback_score_count{{{exp}}}[1m]))",
        "arm",
    )
    assert mean == pytest.approx({"fixed-a": 0.25, "fixed-b": 0.75})

    # The chart's recording rules evaluate on the same data, as the alerts read them.
    recorded = prom.wait_for(f"flywheel:arm_score:mean1h{{{exp}}}", "arm", set(counts))
    assert recorded == pytest.approx({"fixed-a": 0.25, "fixed-b": 0.75})
    control = prom.wait_for("flywheel:control_score:mean1h", "experiment", {EXPERIMENT})
    assert control[EXPERIMENT] == pytest.approx(0.25)  # the control is the first arm
    rules = httpx.get(prom.url + "/api/v1/rules").json()["data"]["groups"]
    assert all(r["health"] == "ok" for g in rules for r in g["rules"]), rules


def test_every_dashboard_query_runs(stack: tuple[GatewayProcess, Prometheus]) -> None:
    _, prom = stack
    for title, expr in dashboard_expressions().items():
        if expr.startswith("label_values("):  # Grafana's own function: its metric is checked
            expr = expr.removeprefix("label_values(").rsplit(",", 1)[0]
        expr = (
            expr.replace("$__rate_interval", "1m")
            .replace("$__interval", "15s")
            .replace("$experiment", ".*")
            .replace("$arm", ".*")
        )
        assert isinstance(prom.query(expr), list), title


@pytest.mark.slow
def test_a_stopped_archiver_shows_its_lag_rising_and_fires_the_alert(
    faulty: FaultyUpstream, tmp_path: Path
) -> None:
    """No archiver runs (``archive.enabled: false`` and no ``retrain archive``): the oldest
    unarchived entry ages on /metrics, whichever of two workers answers; past half of
    ``hot_s`` /readyz says so (still ready: serving is fine) and Prometheus fires
    FlywheelArchiveLagging. One ``retrain archive`` brings the lag to 0 and clears both."""
    need_prometheus()
    hot_s = 16.0
    redis = RedisProcess(tmp_path / "redis")
    redis.start()
    config = fixed_config(
        faulty.base_url,
        redis.url,
        tmp_path,
        interaction_log={"hot_s": hot_s},
        archive={"enabled": False, "url": str(tmp_path / "archive")},
    )
    gw = GatewayProcess(config, tmp_path / "gw", workers=2, ready_path="/readyz")
    prom = Prometheus(tmp_path, f"127.0.0.1:{gw.port}").start()
    firing = 'ALERTS{alertname="FlywheelArchiveLagging", alertstate="firing"}'
    try:
        gw.start(timeout=60)
        text = httpx.get(gw.url + "/metrics").text
        assert 'flywheel_archive_lag_seconds{stream="interactions"} 0.0' in text
        assert f"flywheel_archive_hot_window_seconds {hot_s}" in text
        assert httpx.get(gw.url + "/readyz").json()["checks"]["archive"] == "ok"
        rid, _ = chat(gw, "lag-user")
        rate(gw, rid, "up")
        first = eventually(
            lambda: gw.metric("flywheel_archive_lag_seconds", stream="interactions"),
            "the interaction stream's lag",
        )
        later = eventually(
            lambda: (
                (v := gw.metric("flywheel_archive_lag_seconds", stream="interactions")) > hot_s / 2
                and v
            ),
            "the lag passing half the hot window",
            timeout_s=30,
        )
        assert later > first > 0
        # The rating came after the interaction: its stream's oldest entry is younger by
        # the time between the two writes, so it passes the mark a moment later.
        eventually(
            lambda: gw.metric("flywheel_archive_lag_seconds", stream="feedback") > hot_s / 2,
            "the feedback stream's lag passing half the hot window",
            timeout_s=5,
        )
        ready = httpx.get(gw.url + "/readyz")
        assert ready.status_code == 200, ready.text
        check = ready.json()["checks"]["archive"]
        assert check.startswith("behind:") and "hot_s" in check, check
        fired = prom.wait_for(firing, "stream", {"interactions", "feedback"}, timeout=30)
        assert {"interactions", "feedback"} <= set(fired), fired
        alert = prom.query(firing)[0]["metric"]
        assert alert["severity"] == "critical"
        done = subprocess.run(
            [sys.executable, "-m", "retrain", "archive", "--config", str(gw.config_path)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert gw.metric("flywheel_archive_lag_seconds", stream="interactions") == 0
        assert httpx.get(gw.url + "/readyz").json()["checks"]["archive"] == "ok"
        eventually(lambda: not prom.query(firing), "the alert resolving", timeout_s=30)
    finally:
        prom.stop()
        gw.stop()
        redis.stop()
