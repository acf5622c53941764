"""The app as a library (``create_app``) and as ``gateway serve`` runs it: start-up that
fails cleans up, header limits hold in both, and process-wide settings stay with ``serve``."""

from __future__ import annotations

import gc
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from flywheel_stack import free_port
from gateway.app import create_app
from gateway.core import keys
from gateway.core.config import build_settings
from tests.conftest import API_KEY, ID_SECRET
from tests.services import GatewayProcess, RedisProcess

KS = keys.PLAIN_KEYSPACE  # these tests run on one Redis

AUTH = {"Authorization": f"Bearer {API_KEY}"}
DB = 7  # a database of the session's Redis of its own: these tests write broken state


def config(redis_url: str, **extra: object) -> dict[str, object]:
    return {
        "redis_url": redis_url,
        "id_secret": ID_SECRET,
        "auth": {"api_keys": [{"key": API_KEY, "name": "tests"}]},
        "upstreams": {"up": {"kind": "vllm", "base_url": f"http://127.0.0.1:{free_port()}/v1"}},
        "models": {"base": {"upstream": "up", "model": "base"}},
        **extra,
    }


@pytest.fixture
def own_db(redis_server: RedisProcess) -> Iterator[tuple[str, redis.Redis]]:
    url = redis_server.url.rsplit("/", 1)[0] + f"/{DB}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url, client
    client.flushdb()
    client.close()


def test_a_failed_start_up_closes_what_it_had_opened(
    own_db: tuple[str, redis.Redis], tmp_path: Path
) -> None:
    url, client = own_db
    # A stored experiment state that is not JSON: loading the live state fails after the
    # Redis pool and the upstream HTTP session are open.
    client.hset(KS.experiments, "ab", "not json")
    gw = GatewayProcess(config(url), tmp_path / "gw")  # writes the config; not started
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--config", str(gw.config_path)]
        + ["--port", str(gw.port)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    log = done.stdout + done.stderr
    assert "Application startup failed" in log
    assert "JSONDecodeError" in log  # what went wrong, with its traceback
    assert "Unclosed client session" not in log
    assert "Unclosed connector" not in log


@pytest.mark.parametrize(
    "headers",
    [{"x-big": "a" * 40_000}, {f"x-h{i}": "v" for i in range(150)}],
    ids=["40 KB header", "150 headers"],
)
def test_an_app_made_by_create_app_alone_refuses_oversized_headers(
    headers: dict[str, str],
) -> None:
    app = create_app(build_settings(config("redis://127.0.0.1:1/0")))
    client = TestClient(app)  # no lifespan: the limit needs nothing opened
    refused = client.get("/healthz", headers=headers)
    assert refused.status_code == 431
    err = refused.json()["error"]
    assert err["code"] == "request_header_fields_too_large"
    assert set(err) == {"message", "type", "param", "code"}
    assert client.get("/healthz").status_code == 200


def test_create_app_leaves_the_collector_and_signals_to_the_process(
    own_db: tuple[str, redis.Redis],
) -> None:
    url, _ = own_db
    thresholds, sigterm = gc.get_threshold(), signal.getsignal(signal.SIGTERM)
    frozen = gc.get_freeze_count()
    with TestClient(create_app(build_settings(config(url)))) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        models = client.get("/v1/models", headers=AUTH).json()
        assert [m["id"] for m in models["data"]] == ["base"]
        assert gc.get_threshold() == thresholds
        assert gc.get_freeze_count() == frozen
        assert signal.getsignal(signal.SIGTERM) == sigterm
