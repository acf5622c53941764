"""The Helm chart, rendered by Helm's own library (no binary, no cluster): it lints, every
manifest is valid Kubernetes, a typo in values is refused, the gateway accepts the config
it renders, and checkov finds nothing unjustified."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from helm_python.chart import Chart, lint
from helm_python.errors import HelmRenderError, HelmValuesError

from gateway.core.config import Settings

from .ops_catalogue import ALERTS, CHART, DASHBOARD

KUBE_VERSION = "1.30.0"
VALUES = {
    "default": {},
    "production": yaml.safe_load((CHART / "ci" / "production-values.yaml").read_text()),
    "cluster": {
        "redis": {
            "enabled": False,
            "external": {"url": "redis://redis-0.example:6379", "cluster": True},
        }
    },
}
REPO = CHART.parent.parent


@cache
def rendered(which: str) -> tuple[dict[str, Any], ...]:
    """Every object of the chart rendered with one of VALUES, as the release ``fw`` in ``ml``."""
    out = Chart.load(CHART).render(VALUES[which], name="fw", namespace="ml")
    docs = []
    for path, text in sorted(out.items()):
        if path.endswith(".yaml"):
            docs += [d for d in yaml.safe_load_all(text) if d]
    return tuple(docs)


def find(which: str, kind: str, suffix: str = "") -> list[dict[str, Any]]:
    return [
        d for d in rendered(which) if d["kind"] == kind and d["metadata"]["name"].endswith(suffix)
    ]


def training_jobs(which: str) -> list[dict[str, Any]]:
    """The CronJobs that run ``retrain run`` (not the archiver's)."""
    return [j for j in find(which, "CronJob") if container(j)["args"][:2] == ["retrain", "run"]]


def one(which: str, kind: str, suffix: str = "") -> dict[str, Any]:
    found = find(which, kind, suffix)
    assert len(found) == 1, (kind, suffix, [d["metadata"]["name"] for d in found])
    return found[0]


def container(workload: dict[str, Any]) -> dict[str, Any]:
    spec = workload["spec"]
    if workload["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    c: dict[str, Any] = spec["template"]["spec"]["containers"][0]
    return c


@pytest.mark.parametrize("which", VALUES)
def test_chart_lints_without_errors(which: str) -> None:
    report = lint(CHART, VALUES[which], namespace="ml", kube_version=f"v{KUBE_VERSION}")
    problems = [m for m in report["messages"] if m["severity"] >= 2]  # warnings and errors
    assert not problems and not report["errors"], report


@pytest.mark.parametrize("which", VALUES)
def test_every_manifest_is_valid_kubernetes(which: str) -> None:
    kinds = set()
    for doc in rendered(which):
        kinds.add(doc["kind"])
        assert doc["metadata"]["namespace"] in ("ml", "monitoring"), doc["metadata"]
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):  # CRDs: checked below
            assert doc["kind"] in ("ServiceMonitor", "PrometheusRule") and doc["spec"]
            continue
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
    assert {
        "Deployment",
        "StatefulSet" if which == "default" else "Deployment",
        "CronJob",
        "Service",
        "ConfigMap",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "NetworkPolicy",
    } <= kinds
    if which == "production":
        assert {"Ingress", "ServiceMonitor", "PrometheusRule"} <= kinds
        assert "Secret" not in kinds and "StatefulSet" not in kinds  # existing Secret, Redis


@pytest.mark.parametrize(
    "values",
    [
        {"gateway": {"replica": 3}},  # replicas
        {"vllm": {"gpu": 1}},  # gpus
        {"redis": {"persistence": {"sise": "1Gi"}}},
        {"config": {"experiment": {}}},  # the gateway's own top-level key is experiments
        {"gateway": {"workers": "two"}},
        {"retrain": {"experiments": ["bad name"]}},
        {"forget": {"cronJob": {"schedul": "0 * * * *"}}},
    ],
)
def test_a_typo_in_values_is_refused(values: dict[str, Any]) -> None:
    with pytest.raises(HelmValuesError, match="schema"):
        Chart.load(CHART).render(values, name="fw")


def test_the_schema_knows_every_top_level_key_of_the_gateway_config() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert set(schema["properties"]["config"]["properties"]) == set(Settings.model_fields)


@pytest.mark.parametrize("which", VALUES)
def test_the_gateway_accepts_the_config_the_chart_renders(which: str, tmp_path: Path) -> None:
    """``gateway check-config`` and ``retrain check-config`` with the ConfigMap's file and
    the pod's environment."""
    config = one(which, "ConfigMap", "-config")["data"]["flywheel.yaml"]
    path = tmp_path / "flywheel.yaml"
    path.write_text(config)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLYWHEEL_")}
    for var in container(one(which, "Deployment", "-gateway"))["env"]:
        env[var["name"]] = var.get("value", f"secret-of-{var['name'].lower()}-0123456789")
    env["FLYWHEEL_CONFIG"] = str(path)  # where the pod mounts it: /etc/flywheel
    experiments = 3 if which == "production" else 1
    for command in ("gateway", "retrain"):  # the retrain CronJobs read the same file
        done = subprocess.run(
            [sys.executable, "-m", command, "check-config"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert f"{experiments} experiments" in done.stdout, done.stdout


@pytest.mark.parametrize("which", VALUES)
def test_workloads_follow_the_operations_contract(which: str) -> None:
    gw = one(which, "Deployment", "-gateway")
    c = container(gw)
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["resources"]["requests"] and c["resources"]["limits"]
    assert "--workers" in c["args"]
    assert {"name": "PROMETHEUS_MULTIPROC_DIR", "value": "/tmp/flywheel-metrics"} in c["env"]
    for workload in find(which, "Deployment") + find(which, "StatefulSet") + find(which, "CronJob"):
        spec = workload["spec"]
        if workload["kind"] == "CronJob":
            spec = spec["jobTemplate"]["spec"]
        pod = spec["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, workload["metadata"]["name"]
        sc = container(workload)["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert (
        one(which, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]["name"]
        == (gw["metadata"]["name"])
    )
    assert one(which, "PodDisruptionBudget")["spec"]["minAvailable"] >= 1

    vllm = container(one(which, "Deployment", "-vllm"))
    assert "--enable-lora" in vllm["args"]
    assert {"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"} in vllm["env"]
    assert vllm["resources"]["limits"]["nvidia.com/gpu"] >= 1
    shared = {m["mountPath"] for m in vllm["volumeMounts"] if m["name"] == "shared"}
    archive_jobs = VALUES[which].get("archive", {}).get("cronJob", {}).get("enabled", False)
    upkeep = {
        "-archive": ["retrain", "archive", "--compact"],
        "-forget": ["retrain", "forget", "--pending"],
    }
    for job in find(which, "CronJob"):
        assert job["spec"]["concurrencyPolicy"] == "Forbid"
        mounts = container(job)["volumeMounts"]
        assert shared == {m["mountPath"] for m in mounts if m["name"] == "shared"}
        suffix = "-" + job["metadata"]["name"].rsplit("-", 1)[-1]
        if suffix in upkeep:
            assert container(job)["args"] == upkeep[suffix]
        else:
            assert container(job)["args"][:3] == ["retrain", "run", "--experiment"]
    # the datasets of forgotten users are rewritten on a schedule unless turned off
    assert len(find(which, "CronJob", "-forget")) == 1
    assert (
        len(find(which, "CronJob"))
        == len(VALUES[which].get("retrain", {}).get("experiments", ["default"]))
        + int(archive_jobs)
        + 1
    )
    # the archive (on the shared volume by default) is written and read by the gateway
    gw_mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert gw_mounts.get("shared") in shared

    if which == "default":
        redis = one(which, "StatefulSet", "-redis")
        assert "--appendonly" in container(redis)["args"]
        assert redis["spec"]["volumeClaimTemplates"]
        assert one(which, "Secret")["type"] == "Opaque"


def test_a_redis_cluster_reaches_the_gateway_and_retrain_as_redis_cluster() -> None:
    for workload in [one("cluster", "Deployment", "-gateway"), *find("cluster", "CronJob")]:
        env = {v["name"]: v.get("value") for v in container(workload)["env"]}
        assert env["FLYWHEEL_REDIS_CLUSTER"] == "true"
        assert env["FLYWHEEL_REDIS_URL"] == "redis://redis-0.example:6379"
    assert not find("cluster", "StatefulSet", "-redis")
    for which in ("default", "production"):
        env = {v["name"] for v in container(one(which, "Deployment", "-gateway"))["env"]}
        assert "FLYWHEEL_REDIS_CLUSTER" not in env
    with pytest.raises(HelmRenderError, match="redis.external.cluster needs redis.enabled: false"):
        Chart.load(CHART).render({"redis": {"external": {"cluster": True}}}, name="fw")


def test_a_retrain_job_with_several_gpus_trains_in_one_process_per_gpu() -> None:
    for job in training_jobs("production"):  # gpus: 2
        c = container(job)
        assert c["args"][4:] == ["--processes", "2"]
        assert c["resources"]["limits"]["nvidia.com/gpu"] == 2
        assert c["resources"]["requests"]["nvidia.com/gpu"] == 2
        assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]
        volumes = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["volumes"]
        (shm,) = [v for v in volumes if v["name"] == "dshm"]
        assert shm["emptyDir"]["medium"] == "Memory"
    for job in training_jobs("default"):  # gpus: 0, on CPU
        c = container(job)
        assert "--processes" not in c["args"] and "nvidia.com/gpu" not in c["resources"]["limits"]
        assert all(m["name"] != "dshm" for m in c["volumeMounts"])


def test_multi_node_training_is_an_optional_pytorchjob_of_valid_pods() -> None:
    assert not [d for d in rendered("production") if d["kind"] == "PyTorchJob"]  # off by default
    values = {
        **VALUES["production"],
        "retrain": {
            **VALUES["production"]["retrain"],
            "pytorchJob": {"enabled": True, "experiment": "support-bot", "nodes": 3},
        },
    }
    out = Chart.load(CHART).render(values, name="fw", namespace="ml")
    docs = [d for p, t in out.items() if p.endswith(".yaml") for d in yaml.safe_load_all(t) if d]
    (job,) = [d for d in docs if d["kind"] == "PyTorchJob"]
    assert job["apiVersion"] == "kubeflow.org/v1" and job["metadata"]["namespace"] == "ml"
    assert job["spec"]["nprocPerNode"] == "8"
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert replicas["Master"]["replicas"] == 1 and replicas["Worker"]["replicas"] == 2
    launch_dirs = set()
    for role, replica in replicas.items():
        # Each pod, checked against the Kubernetes schema as a Job's pod template.
        as_job = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": f"check-{role.lower()}", "namespace": "ml"},
            "spec": {"template": replica["template"]},
        }
        kubernetes_validate.validate(as_job, KUBE_VERSION, strict=True)
        (c,) = replica["template"]["spec"]["containers"]
        assert c["name"] == "pytorch" and c["ports"][0]["name"] == "pytorchjob-port"
        assert c["resources"]["limits"]["nvidia.com/gpu"] == 8
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        env = {e["name"]: e.get("value") for e in c["env"]}
        launch_dirs.add(env["FLYWHEEL_LAUNCH_DIR"])
        if role == "Master":
            assert c["args"] == [
                "retrain",
                "run",
                "--experiment",
                "support-bot",
                "--processes",
                "8",
            ]
        else:
            assert c["args"] == ["retrain", "join-training"]
    (launch_dir,) = launch_dirs  # the Master writes where the Workers wait
    assert launch_dir.startswith("/shared/adapters/")
    with pytest.raises(HelmValuesError, match="schema"):
        Chart.load(CHART).render({"retrain": {"pytorchJob": {"nodes": 1}}}, name="fw")


def test_rules_and_dashboard_ship_as_the_tested_files() -> None:
    rule = one("production", "PrometheusRule")
    assert rule["spec"] == yaml.safe_load(ALERTS.read_text())
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    monitors = find("production", "ServiceMonitor")
    assert {m["metadata"]["name"] for m in monitors} == {"fw-flywheel-gateway", "fw-flywheel-vllm"}
    for which in VALUES:
        board = one(which, "ConfigMap", "-dashboard")
        assert board["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert json.loads(board["data"]["flywheel.json"]) == json.loads(DASHBOARD.read_text())


def checkov_binary() -> str:
    for candidate in (
        os.environ.get("CHECKOV"),
        str(REPO / ".venv-tools" / "bin" / "checkov"),
        shutil.which("checkov"),
    ):
        if candidate and Path(candidate).is_file():
            return candidate
    reason = "checkov is not installed (.ci/run puts it in .venv-tools)"
    if os.environ.get("CI"):
        pytest.fail(f"{reason}: CI must run it", pytrace=False)
    pytest.skip(reason)


@pytest.mark.slow
def test_checkov_finds_no_unjustified_issue(tmp_path: Path) -> None:
    checkov = checkov_binary()
    for which in VALUES:
        out = Chart.load(CHART).render(VALUES[which], name="fw", namespace="ml")
        for path, text in out.items():
            if path.endswith(".yaml") and text.strip():
                target = tmp_path / which / Path(path).name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text)
    done = subprocess.run(
        [
            checkov,
            "-d",
            str(tmp_path),
            "--framework",
            "kubernetes",
            "--compact",
            "--skip-download",
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = json.loads(done.stdout)
    reports = report if isinstance(report, list) else [report]
    failed = [
        f"{f['check_id']} {f['resource']}: {f['check_name']}"
        for r in reports
        for f in r["results"]["failed_checks"]
    ]
    assert not failed, "\n".join(failed)
    # The exceptions, each justified where it is made (templates/_helpers.tpl):
    # pull policy, keys in the environment, images pinned by tag where no digest is given.
    skipped = [s for r in reports for s in r["results"]["skipped_checks"]]
    assert {s["check_id"] for s in skipped} <= {"CKV_K8S_15", "CKV_K8S_35", "CKV_K8S_43"}
    assert all(len(s["check_result"]["suppress_comment"]) > 40 for s in skipped)
    assert sum(r["summary"]["passed"] for r in reports) > 500
