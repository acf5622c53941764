"""Whatever a command starts, it stops: the embedded Redis and every child process, on
SIGTERM, Ctrl-C (SIGINT), errors and even ``kill -9`` of the owner."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson
import pytest
import yaml

from flywheel_stack import free_port

from .services import wait_ready


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` now (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def assert_all_gone(pids: set[int], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = {p: Path(f"/proc/{p}/cmdline").read_bytes() for p in pids if alive(p)}
    assert not left, f"processes outlived their command: {left}"


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
