"""Whatever a command starts, it stops: the embedded Redis and every child process, on
SIGTERM, Ctrl-C (SIGINT), errors and even ``kill -9`` of the owner."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from flywheel_stack import free_port

from .helpers.processes import alive, assert_all_gone, descendants
from .services import wait_ready


def redis_servers_in(directory: Path) -> list[int]:
    """Running redis-servers whose working directory (their --dir) is ``directory``."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            if (
                entry.isdigit()
                and b"redis-server" in Path(f"/proc/{entry}/cmdline").read_bytes()
                and Path(f"/proc/{entry}/cwd").resolve() == directory.resolve()
                and alive(int(entry))
            ):
                found.append(int(entry))
        except OSError:
            continue
    return found


def embedded_pid(data_dir: Path) -> int:
    info = orjson.loads((data_dir / "redis" / "server.json").read_bytes())
    return int(info["pid"])


def serve(tmp_path: Path, *args: str) -> tuple[subprocess.Popen[bytes], str, Path]:
    """``gateway serve`` with embedded Redis and no upstream to speak of, until healthy."""
    config = tmp_path / "flywheel.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(tmp_path / "data"),
                "upstreams": {
                    "local": {"kind": "vllm", "base_url": f"http://127.0.0.1:{free_port()}/v1"}
                },
                "models": {"base": {"upstream": "local", "model": "base"}},
            }
        )
    )
    port = free_port()
    log = tmp_path / "gateway.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway",
                "serve",
                "--config",
                str(config),
                "--port",
                str(port),
                *args,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    assert wait_ready(proc, f"http://127.0.0.1:{port}/healthz", log, 60)
    return proc, f"http://127.0.0.1:{port}", config


@pytest.mark.parametrize(
    ("workers", "sig"),
    [(1, signal.SIGTERM), (1, signal.SIGINT), (2, signal.SIGTERM), (2, signal.SIGINT)],
)
@pytest.mark.slow
def test_gateway_serve_stops_its_embedded_redis_and_workers(
    tmp_path: Path, workers: int, sig: signal.Signals
) -> None:
    proc, url, _ = serve(tmp_path, "--workers", str(workers))
    try:
        redis_pid = embedded_pid(tmp_path / "data")
        tree = descendants(proc.pid)
        assert redis_pid in tree and len(tree) >= 1 + (workers if workers > 1 else 0)
        assert httpx.get(url + "/readyz").json()["checks"]["redis"] == "ok"
        proc.send_signal(sig)
        assert proc.wait(30) in (0, -sig, 128 + sig)
    finally:
        proc.kill()
        proc.wait()
    assert_all_gone(tree)
    assert not (tmp_path / "data" / "redis" / "server.json").exists()


@pytest.mark.slow
def test_a_gateway_killed_with_sigkill_takes_its_embedded_redis_with_it(tmp_path: Path) -> None:
    proc, _, _ = serve(tmp_path)
    redis_pid = embedded_pid(tmp_path / "data")
    proc.kill()
    proc.wait()
    assert_all_gone({redis_pid})

    again, url, _ = serve(tmp_path)  # the next start replaces the stale server file
    try:
        assert embedded_pid(tmp_path / "data") != redis_pid
        assert httpx.get(url + "/readyz").json()["checks"]["redis"] == "ok"
    finally:
        again.terminate()
        again.wait(30)


@pytest.mark.slow
def test_retrain_stops_the_embedded_redis_it_started_and_leaves_the_gateways(
    tmp_path: Path,
) -> None:
    proc, url, config = serve(tmp_path)
    redis_pid = embedded_pid(tmp_path / "data")
    try:  # beside a running gateway: retrain uses its Redis and leaves it running
        jobs = subprocess.run(
            [sys.executable, "-m", "retrain", "jobs", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert jobs.returncode == 0, jobs.stderr
        assert alive(redis_pid)
        assert httpx.get(url + "/readyz").json()["checks"]["redis"] == "ok"
    finally:
        proc.terminate()
        proc.wait(30)
    assert_all_gone({redis_pid})

    # Alone, retrain starts the embedded Redis itself, and stops it when it is done.
    build = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "retrain",
            "build",
            "--experiment",
            "default",
            "--config",
            str(config),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = build.communicate(timeout=120)
    assert build.returncode == 4, out + err  # nothing rated yet: below the minimum
    assert not (tmp_path / "data" / "redis" / "server.json").exists()
    assert not redis_servers_in(tmp_path / "data" / "redis")


def config_show(cwd: Path, *args: str) -> dict[str, Any]:
    """``retrain config show`` run in ``cwd`` (no config file unless ``args`` name one):
    the effective config."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLYWHEEL_")}
    done = subprocess.run(
        [sys.executable, "-m", "retrain", "config", "show", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    doc: dict[str, Any] = yaml.safe_load(done.stdout)
    return doc


def test_retrain_finds_an_announced_stack_and_ignores_one_whose_process_died(
    tmp_path: Path,
) -> None:
    """What ``gateway up`` leaves in ``data_dir/stack.json`` (written by its own code, in a
    process that then dies by ``kill -9``): retrain's built-in config follows it while
    that process lives, a config naming its own gateway keeps it, and once the process
    is gone the built-in ports are back."""
    from flywheel_stack.discovery import STACK_FILE

    assert config_show(tmp_path)["retrain"]["gateway_url"] == "http://127.0.0.1:8000"
    named = {
        "upstreams": {"gpu": {"kind": "vllm", "base_url": "http://vllm.internal:8001/v1"}},
        "models": {"base": {"upstream": "gpu", "model": "base"}},
        "retrain": {"gateway_url": "http://gateway.internal:8000"},
    }
    (tmp_path / "named.yaml").write_text(yaml.safe_dump(named))
    unnamed = {**named, "retrain": {"min_examples": 3}}
    (tmp_path / "unnamed.yaml").write_text(yaml.safe_dump(unnamed))
    code = (
        "import time\n"
        "from pathlib import Path\n"
        "from flywheel_stack.discovery import announced\n"
        "with announced(Path('data'), gateway_url='http://127.0.0.1:18123',"
        " vllm_base_url='http://127.0.0.1:18124/v1'):\n"
        "    print('up', flush=True)\n"
        "    time.sleep(600)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"up\n"
        found = config_show(tmp_path)
        assert found["retrain"]["gateway_url"] == "http://127.0.0.1:18123"
        assert found["upstreams"]["local"]["base_url"] == "http://127.0.0.1:18124/v1"
        kept = config_show(tmp_path, "--config", "named.yaml")
        assert kept["retrain"]["gateway_url"] == "http://gateway.internal:8000"
        # a config naming no gateway gets the stack's; its own upstreams stay its own
        filled = config_show(tmp_path, "--config", "unnamed.yaml")
        assert filled["retrain"]["gateway_url"] == "http://127.0.0.1:18123"
        assert filled["upstreams"]["gpu"]["base_url"] == "http://vllm.internal:8001/v1"
    finally:
        holder.kill()
        holder.wait(10)
        if holder.stdout is not None:
            holder.stdout.close()
    assert (tmp_path / "data" / STACK_FILE).exists()  # kill -9 left it behind
    gone = config_show(tmp_path)
    assert gone["retrain"]["gateway_url"] == "http://127.0.0.1:8000"
    assert gone["upstreams"]["local"]["base_url"] == "http://127.0.0.1:8001/v1"


RETURNS = ["shoes", "shirts", "jackets", "bags", "hats", "socks"]
RETURNS += ["belts", "scarves", "gloves", "watches", "boots", "coats"]
RETURNS += ["sandals", "jeans", "dresses", "sweaters"]  # as the tutorial: two held out


@pytest.mark.vllm
@pytest.mark.timeout(1200)
def test_retrain_run_finds_gateway_up_on_other_ports_with_no_config(tmp_path: Path) -> None:
    """``gateway up --port P --vllm-port Q`` and ``retrain run`` in the same directory, no
    config file: retrain finds the gateway and vLLM (not 8000/8001), trains and registers
    a canary; Ctrl-C removes the announcement and every process."""
    from flywheel_stack.discovery import STACK_FILE

    port, vllm_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLYWHEEL_")}
    log = tmp_path / "gateway-up.log"
    with open(log, "ab") as out:
        up = subprocess.Popen(
            [sys.executable, "-m", "gateway", "up", "--port", str(port)]
            + ["--vllm-port", str(vllm_port)],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    gateway = f"http://127.0.0.1:{port}"
    tree: set[int] = set()
    try:
        assert wait_ready(up, gateway + "/readyz", log, 600), "gateway up never got ready"
        tree = descendants(up.pid)
        announced = orjson.loads((tmp_path / "data" / STACK_FILE).read_bytes())
        assert announced["gateway_url"] == gateway
        assert announced["vllm_base_url"] == f"http://127.0.0.1:{vllm_port}/v1"
        with httpx.Client(base_url=gateway, timeout=120) as c:
            for i, item in enumerate(RETURNS):
                body = {
                    "model": "default",
                    "user": f"customer-{i}",
                    "max_tokens": 16,
                    "messages": [{"role": "user", "content": f"Can I return {item}?"}],
                }
                reply = c.post("/v1/chat/completions", json=body)
                assert reply.status_code == 200, reply.text
                fix = f"Yes: {item} can be returned within 30 days with the receipt."
                rating = {"response_id": reply.json()["id"], "rating": "down", "correction": fix}
                rated = c.post("/v1/feedback", json=rating)
                assert rated.status_code == 201, rated.text
        run = subprocess.run(
            [sys.executable, "-m", "retrain", "run", "--experiment", "default"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert run.returncode == 0, f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}"
        (canary,) = re.findall(r"(default-[0-9a-f]+) is a canary of 'default' at 5%", run.stdout)
        spec = httpx.get(gateway + "/admin/experiments/default").json()["spec"]
        assert canary in {a["model"] for a in spec["arms"]}
    finally:
        up.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            up.wait(60)
        finally:
            up.kill()
    assert_all_gone(tree)
    assert not (tmp_path / "data" / STACK_FILE).exists()
