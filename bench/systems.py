"""The systems under test, each started as its own process against one fixed upstream.

* ``direct``  — the upstream itself: the baseline every "added" latency is measured from
* ``floor``   — a bare ASGI proxy with one pooled aiohttp session (``bench/floor.py``)
* ``gateway`` — Flywheel, as a user runs it: ``python -m gateway serve --config FILE``,
  with API-key auth, an A/B experiment, the interaction log to a real Redis and metrics
* ``litellm`` — LiteLLM proxy (``bench/install-peers``), two deployments of one model name
* ``portkey`` — Portkey gateway (Node, ``bench/install-peers``), a load-balance config
  over two targets
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .procs import BenchError, Proc, Processes, ensure_binary, free_port, wait_http, wait_tcp

REPO = Path(__file__).resolve().parent.parent
API_KEY = "sk-bench-0123456789"
# The brief's ``bench-secret`` is too short: the gateway needs an id secret of ≥ 16 bytes.
ID_SECRET = "bench-secret-0123456789"
CHAT_PATH = "/v1/chat/completions"


@dataclass
class System:
    """Where to send requests and how; ``proc`` is None for the upstream itself."""

    name: str
    base_url: str  # up to and excluding /v1
    model: str
    slow_model: str
    headers: dict[str, str] = field(default_factory=dict)
    slow_headers: dict[str, str] | None = None  # when the slow stream needs other headers
    proc: Proc | None = None
    description: str = ""

    @property
    def url(self) -> str:
        return self.base_url + CHAT_PATH

    def headers_for(self, slow: bool) -> dict[str, str]:
        return (self.slow_headers or self.headers) if slow else self.headers


# -- the upstream, Redis, the floor --------------------------------------------------------


def start_upstream(procs: Processes, slow_interval_ms: float, slow_chunks: int) -> System:
    port = free_port()
    proc = procs.start(
        "upstream",
        [
            sys.executable,
            "-m",
            "bench.upstream",
            f"--port={port}",
            f"--slow-interval-ms={slow_interval_ms:g}",
            f"--slow-chunks={slow_chunks}",
        ],
        cwd=REPO,
    )
    wait_http(proc, f"http://127.0.0.1:{port}/v1/models", timeout_s=20)
    return System(
        "direct",
        f"http://127.0.0.1:{port}",
        model="a",
        slow_model="slow-a",
        proc=proc,
        description="the fixed upstream itself (uvloop + httptools, one process)",
    )


@dataclass
class Redis:
    proc: Proc
    port: int

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"


def start_redis(procs: Processes, name: str = "redis") -> Redis:
    binary = ensure_binary("redis-server", "redis-server")
    port = free_port()
    proc = procs.start(
        name,
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
    )
    wait_tcp(proc, port)
    return Redis(proc, port)


@dataclass
class RedisCluster:
    procs: list[Proc]
    ports: list[int]

    def url(self) -> str:
        """One node: a cluster client finds the others from it."""
        return f"redis://127.0.0.1:{self.ports[0]}"


def start_redis_cluster(procs: Processes, masters: int = 3) -> RedisCluster:
    """A Redis Cluster of ``masters`` nodes (no replicas, no persistence) on fresh ports,
    its 16384 slots assigned by ``redis-cli --cluster create``."""
    import redis

    binary = ensure_binary("redis-server", "redis-server")
    cli = ensure_binary("redis-cli", "redis-tools")
    nodes, ports = [], []
    for k in range(masters):
        port, bus = free_port(), free_port()
        node_dir = procs.log_dir / f"cluster-{k}"
        node_dir.mkdir(parents=True, exist_ok=True)
        argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        argv += ["--appendonly", "no", "--cluster-enabled", "yes", "--cluster-port", str(bus)]
        argv += ["--cluster-config-file", "nodes.conf", "--dir", str(node_dir)]
        proc = procs.start(f"redis-cluster-{k}", argv)
        wait_tcp(proc, port)
        nodes.append(proc)
        ports.append(port)
    created = subprocess.run(
        [cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports), "--cluster-yes"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if "All 16384 slots covered" not in created.stdout:
        raise BenchError(f"redis-cli --cluster create failed:\n{created.stdout}")
    deadline = time.monotonic() + 30
    for port in ports:
        node = redis.Redis(port=port)
        while node.cluster("info").get("cluster_state") != "ok":
            if time.monotonic() > deadline:
                raise BenchError(f"cluster node {port} never reported cluster_state:ok")
            time.sleep(0.1)
        node.close()
    return RedisCluster(nodes, ports)


@dataclass
class ObjectStore:
    """An S3-compatible server (moto, in memory) and the s3fs options that reach it."""

    proc: Proc
    port: int

    def storage_options(self) -> dict[str, Any]:
        return {
            "endpoint_url": f"http://127.0.0.1:{self.port}",
            "key": "flywheel-bench",
            "secret": "flywheel-bench-secret",
        }


def start_s3(procs: Processes, bucket: str) -> ObjectStore:
    """``moto_server`` with ``bucket`` made (the dev extra installs moto[server], s3fs)."""
    try:
        import moto.server  # noqa: F401
        import s3fs
    except ImportError as exc:
        raise BenchError(f"{exc.name} is missing: pip install 'moto[server]' s3fs") from None
    port = free_port()
    proc = procs.start(
        "moto", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    )
    wait_http(proc, f"http://127.0.0.1:{port}/moto-api/")
    store = ObjectStore(proc, port)
    s3fs.S3FileSystem(skip_instance_cache=True, **store.storage_options()).mkdir(bucket)
    return store


def start_floor(
    procs: Processes, upstream: System, python: list[str] | None = None, wait_s: float = 30
) -> System:
    """``python -m bench.floor``; ``python`` replaces the interpreter (``python -m cProfile``)."""
    port = free_port()
    python = python or [sys.executable]
    argv = [*python, "-m", "bench.floor", f"--port={port}", f"--upstream={upstream.base_url}"]
    proc = procs.start("floor", argv, cwd=REPO)
    base = f"http://127.0.0.1:{port}"
    wait_http(proc, base + "/v1/models", timeout_s=wait_s)
    return System(
        "floor",
        base,
        model="a",
        slow_model="slow-a",
        proc=proc,
        description="bare ASGI callable under uvicorn, one pooled aiohttp session",
    )


# -- Flywheel --------------------------------------------------------------------------------


def gateway_config(redis_url: str, upstream: System, data_dir: Path, arms: int = 2) -> dict:
    """The YAML document ``gateway serve`` is started with (``arms`` arms in ``ab``)."""
    if arms == 2:
        models = {
            "a": {"upstream": "fixed", "model": "a"},
            "b": {"upstream": "fixed", "model": "b"},
        }
    else:
        models = {f"m{i:03d}": {"upstream": "fixed", "model": "a"} for i in range(arms)}
    models["slow-a"] = {"upstream": "fixed", "model": "slow-a"}
    models["slow-b"] = {"upstream": "fixed", "model": "slow-b"}
    arm_names = [m for m in models if not m.startswith("slow-")]
    return {
        "redis_url": redis_url,
        "data_dir": str(data_dir),
        "id_secret": ID_SECRET,
        "auth": {"api_keys": [{"key": API_KEY, "name": "bench"}]},
        "upstreams": {
            "fixed": {"kind": "vllm", "base_url": upstream.base_url + "/v1", "timeout_s": 30}
        },
        "models": models,
        "experiments": {
            "ab": {"arms": [{"model": m, "weight": 100 / len(arm_names)} for m in arm_names]},
            "slow-ab": {
                "arms": [{"model": "slow-a", "weight": 50}, {"model": "slow-b", "weight": 50}]
            },
        },
        # The request path only: with one worker the archiver is that worker's background
        # task, and its first pass (50,000 records, ~60 µs each: bench/archiver.py) would
        # land inside whichever 10-second window reaches the batch (measured: streams at
        # 4.8x the floor's CPU with it, 2.2x without). Deployed, it runs every
        # archive.max_wait_s, or in its own process under --workers N.
        "archive": {"enabled": False},
    }


def start_gateway(
    procs: Processes,
    upstream: System,
    redis_url: str,
    work_dir: Path,
    *,
    arms: int = 2,
    name: str = "gateway",
    python: list[str] | None = None,
    serve: list[str] | None = None,
    extra: list[str] | None = None,
    wait_s: float = 60,
) -> System:
    """``python -m gateway serve --config FILE --port P``.

    ``python`` replaces the interpreter (``python -m cProfile -o FILE``); ``serve`` replaces
    ``python -m gateway serve`` (``bench/whatif.py``); ``extra`` is appended.
    """
    config_path = work_dir / f"{name}.yaml"
    doc = gateway_config(redis_url, upstream, work_dir / f"{name}-data", arms)
    config_path.write_text(yaml.safe_dump(doc, sort_keys=False))
    port = free_port()
    serve = serve or [*(python or [sys.executable]), "-m", "gateway", "serve"]
    argv = [*serve, "--config", str(config_path), "--port", str(port)]
    proc = procs.start(name, [*argv, *(extra or [])], cwd=REPO)
    base = f"http://127.0.0.1:{port}"
    wait_http(proc, base + "/healthz", timeout_s=wait_s)
    return System(
        name,
        base,
        model="ab",
        slow_model="slow-ab",
        headers={"Authorization": f"Bearer {API_KEY}"},
        proc=proc,
        description=f"Flywheel: auth, A/B over {arms} arms, interaction log to Redis, metrics",
    )


# -- peers -----------------------------------------------------------------------------------


def _peer_root() -> Path:
    return Path.home() / ".cache" / "flywheel-bench"


def litellm_binary() -> Path | None:
    venv = Path(os.environ.get("BENCH_PEERS_VENV") or _peer_root() / "bench-venv")
    path = venv / "bin" / "litellm"
    return path if path.exists() else None


def portkey_entry() -> Path | None:
    root = Path(os.environ.get("BENCH_PEERS_DIR") or _peer_root() / "bench-peers")
    path = root / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"
    return path if path.exists() and shutil.which("node") else None


def start_litellm(procs: Processes, upstream: System, work_dir: Path) -> System:
    binary = litellm_binary()
    if binary is None:
        raise BenchError("LiteLLM is not installed (bench/install-peers)")
    api_base = upstream.base_url + "/v1"

    def deployment(name: str, model: str) -> dict:
        params = {"model": f"openai/{model}", "api_base": api_base, "api_key": "sk-upstream"}
        return {"model_name": name, "litellm_params": params}

    doc = {
        "model_list": [
            deployment("ab", "a"),
            deployment("ab", "b"),
            deployment("slow-ab", "slow-a"),
            deployment("slow-ab", "slow-b"),
        ],
        "general_settings": {"master_key": API_KEY},
        "litellm_settings": {"drop_params": True},
    }
    config_path = work_dir / "litellm.yaml"
    config_path.write_text(yaml.safe_dump(doc, sort_keys=False))
    port = free_port()
    env = {
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no fetch from the internet at start-up
        "LITELLM_LOG": "ERROR",
        "LITELLM_TELEMETRY": "False",
    }
    argv = [str(binary), "--config", str(config_path), "--host", "127.0.0.1", "--port"]
    proc = procs.start("litellm", [*argv, str(port), "--num_workers", "1"], env=env)
    base = f"http://127.0.0.1:{port}"
    wait_http(proc, base + "/health/liveliness", timeout_s=120)
    return System(
        "litellm",
        base,
        model="ab",
        slow_model="slow-ab",
        headers={"Authorization": f"Bearer {API_KEY}"},
        proc=proc,
        description=f"LiteLLM proxy {_litellm_version(binary)}: master key, 2 deployments",
    )


def _litellm_version(binary: Path) -> str:
    python = binary.parent / "python"
    out = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


def _portkey_config(upstream: System, models: tuple[str, str]) -> str:
    target = {"provider": "openai", "api_key": "sk-upstream", "weight": 0.5}
    return json.dumps(
        {
            "strategy": {"mode": "loadbalance"},
            "targets": [
                {
                    **target,
                    "custom_host": upstream.base_url + "/v1",
                    "override_params": {"model": m},
                }
                for m in models
            ],
        },
        separators=(",", ":"),
    )


def start_portkey(procs: Processes, upstream: System) -> System:
    entry = portkey_entry()
    if entry is None:
        raise BenchError("Portkey is not installed (bench/install-peers)")
    port = free_port()
    proc = procs.start(
        "portkey",
        ["node", str(entry), f"--port={port}", "--headless"],
        env={"NODE_ENV": "production"},
        cwd=entry.parent,
    )
    base = f"http://127.0.0.1:{port}"
    wait_http(proc, base + "/", timeout_s=60)
    version = json.loads((entry.parent.parent / "package.json").read_text())["version"]
    return System(
        "portkey",
        base,
        model="ab",
        slow_model="slow-ab",
        headers={"x-portkey-config": _portkey_config(upstream, ("a", "b"))},
        slow_headers={"x-portkey-config": _portkey_config(upstream, ("slow-a", "slow-b"))},
        proc=proc,
        description=f"Portkey gateway {version} (Node): load-balance config over 2 targets",
    )
