"""The chart's alert rules: valid for promtool, their unit tests pass, and every metric
they read is one the gateway exports."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from .ops_catalogue import ALERTS, CHART, alert_expressions, catalogue, metric_names, recorded

PROMTOOL = shutil.which("promtool")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    if PROMTOOL is None:
        reason = "promtool is not installed (apt-get install prometheus)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}: CI must run the rule tests", pytrace=False)
        pytest.skip(reason)
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=120)


def test_promtool_checks_the_rules() -> None:
    done = promtool("check", "rules", str(ALERTS))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


@pytest.mark.slow
def test_promtool_unit_tests_of_the_alerts_pass() -> None:
    done = promtool("test", "rules", str(CHART / "ci" / "alerts-test.yaml"))
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_names_metrics_of_the_catalogue() -> None:
    known = set(catalogue()) | recorded()
    alerts = alert_expressions()
    assert {
        "FlywheelUpstreamDown",
        "FlywheelHighErrorRatio",
        "FlywheelHighLatencyP95",
        "FlywheelCanaryScoreBelowControl",
        "FlywheelRetrainFailing",
        "FlywheelRetrainStale",
        "FlywheelInteractionLogDropping",
    } <= set(alerts)
    for name, expr in alerts.items():
        used = metric_names(expr)
        assert used, name
        assert used <= known, (name, used - known)


def test_the_catalogue_follows_prometheus_naming() -> None:
    names = catalogue()
    for name, kind in names.items():
        assert name.startswith("flywheel_"), name
        if kind == "counter":
            assert name.endswith(("_total", "_created")), name
    assert {
        "flywheel_requests_total",
        "flywheel_upstream_request_duration_seconds_bucket",
        "flywheel_feedback_score_sum",
        "flywheel_retrain_last_run_timestamp_seconds",
        "flywheel_retrain_dataset_examples",
        "flywheel_retrain_job_status",
        "flywheel_experiment_weight",
        "flywheel_upstream_replicas",
    } <= set(names)


def test_the_docs_document_every_metric() -> None:
    """The Metrics table of docs/operations.md and the registry list the same metrics."""
    page = (CHART.parent.parent / "docs" / "operations.md").read_text()
    table = page.split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    documented = {
        name
        for row in table.splitlines()
        if row.startswith("| `")
        for name in re.findall(r"`(flywheel_[a-z0-9_]+)`", row.split("|")[1])
    }
    exposed = set()
    for name, kind in catalogue().items():
        if kind == "counter" and name.endswith("_total"):
            exposed.add(name)
        elif kind in ("histogram", "summary") and name.endswith("_count"):
            exposed.add(name.removesuffix("_count"))
        elif kind == "gauge":
            exposed.add(name)
    assert documented == exposed, (
        f"not in docs/operations.md: {sorted(exposed - documented)}; "
        f"not exported: {sorted(documented - exposed)}"
    )
