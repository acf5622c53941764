"""The metrics catalogue as Prometheus sees it, read from the gateway's own registry, and
the metric names that PromQL expressions (alerts, the dashboard) use."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from gateway.serving.metrics import JOB_STATUSES, Metrics, ScrapeState

CHART = Path(__file__).resolve().parent.parent / "helm" / "flywheel"
ALERTS = CHART / "files" / "alerts.yaml"
DASHBOARD = CHART / "files" / "dashboard.json"

_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("_sum", "_count", "_created"),
    "gauge": ("",),
}
_METRIC = re.compile(r"\b(flywheel[a-zA-Z0-9_:]*)")


def catalogue() -> dict[str, str]:
    """Every series name the gateway exposes → its family's type."""
    m = Metrics()
    m.scrape.state = ScrapeState(  # one of each, so every scrape-time family has a sample
        weights={("e", "a"): 1.0},
        controls={"e": "a"},
        replicas={("u", "closed"): 1},
        retrain={
            "e": {
                "finished": 1.0,
                "last_success": 1.0,
                "outcome": "canary",
                "examples": {"train": 1},
                "job_status": JOB_STATUSES[0],
            }
        },
        archive_lag={"interactions": 1.0},
        hot_s=86_400.0,
    )
    out = {}
    for family in m.registry.collect():
        for suffix in _SUFFIXES[family.type]:
            out[family.name + suffix] = family.type
    return out


def recorded() -> set[str]:
    """The names of the recording rules in the chart's alert rules."""
    doc = yaml.safe_load(ALERTS.read_text())
    return {r["record"] for g in doc["groups"] for r in g["rules"] if "record" in r}


def alert_expressions() -> dict[str, str]:
    doc = yaml.safe_load(ALERTS.read_text())
    return {r.get("alert") or r["record"]: r["expr"] for g in doc["groups"] for r in g["rules"]}


def dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return doc


def dashboard_expressions() -> dict[str, str]:
    """Panel title (and query ref) → PromQL, and the template variables' queries."""
    doc = dashboard()
    out = {}
    for panel in doc["panels"]:
        for target in panel.get("targets", []):
            out[f"{panel['title']} [{target.get('refId', '')}]"] = target["expr"]
    for var in doc.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            q = var["query"]
            out[f"variable {var['name']}"] = q["query"] if isinstance(q, dict) else q
    return out


def metric_names(expr: str) -> set[str]:
    return set(_METRIC.findall(expr))
