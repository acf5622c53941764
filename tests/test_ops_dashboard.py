"""The Grafana dashboard shipped in the chart: valid JSON, the panels an operator needs,
and only metrics the gateway exports (tests/test_ops_prometheus.py runs each query)."""

from __future__ import annotations

from .ops_catalogue import catalogue, dashboard, dashboard_expressions, metric_names, recorded


def test_dashboard_is_valid_and_has_the_panels_operators_need() -> None:
    doc = dashboard()
    assert doc["uid"] and doc["title"] == "Flywheel"
    titles = {p["title"] for p in doc["panels"]}
    assert {
        "Requests per second by arm",
        "Latency p50 / p95 by arm",
        "Error ratio (5xx) by experiment",
        "Mean score by arm (1 h window)",
        "Arm weights (canary share)",
        "Replicas by circuit state",
        "Last retrain run",
    } <= titles
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    for panel in doc["panels"]:
        if panel["type"] != "row":
            assert panel["targets"] and panel["datasource"]["uid"] == "${datasource}"


def test_every_dashboard_query_names_metrics_of_the_catalogue() -> None:
    known = set(catalogue()) | recorded()
    for title, expr in dashboard_expressions().items():
        used = metric_names(expr)
        assert used, title
        assert used <= known, (title, used - known)
