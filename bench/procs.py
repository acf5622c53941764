"""Child processes: start each in its own session, wait until it serves, stop them all.

Every process the benchmark starts goes through :class:`Processes`, which stops them
(SIGTERM to the process group, SIGKILL after a grace period) when its ``with`` block
ends, whether normally, on an error or on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType

CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """The benchmark cannot go on; the message says why."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def ensure_binary(name: str, apt_package: str) -> str:
    """The path of ``name``, apt-installing ``apt_package`` first when missing (as root)."""
    path = shutil.which(name)
    if path:
        return path
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise BenchError(f"{name} not found: install it (apt-get install -y {apt_package})")
    print(f"bench: installing {apt_package} (apt-get) ...", flush=True)
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    if subprocess.run(["apt-get", "install", "-y", "-qq", apt_package], **quiet).returncode:
        subprocess.run(["apt-get", "update", "-qq"], check=True, **quiet)
        subprocess.run(["apt-get", "install", "-y", "-qq", apt_package], check=True, **quiet)
    path = shutil.which(name)
    if not path:
        raise BenchError(f"{name} still not found after installing {apt_package}")
    return path


@dataclass
class Proc:
    """A started child: its ``Popen`` and where its output goes."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_tail(self, n: int = 30) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def cpu_seconds(self) -> float:
        """User + system CPU time of every live process in this child's process group."""
        return group_cpu_seconds(self.pid)

    def cpu_times(self) -> tuple[float, float]:
        """User and system CPU time, apart, of every live process in this child's group."""
        return group_cpu_times(self.pid)


def group_cpu_seconds(pgid: int) -> float:
    return sum(group_cpu_times(pgid))


def group_cpu_times(pgid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of every live process in process group ``pgid``."""
    user = system = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        # fields[0] is the state (field 3); pgrp is field 5, utime 14, stime 15.
        if int(fields[2]) == pgid:
            user += int(fields[11])
            system += int(fields[12])
    return user / CLK_TCK, system / CLK_TCK


class Processes:
    """Starts children in new sessions and stops every one of them on exit."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._procs: list[Proc] = []
        self._old_sigterm: object = None

    def __enter__(self) -> Processes:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._old_sigterm = signal.signal(signal.SIGTERM, _raise_exit)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()
        signal.signal(signal.SIGTERM, self._old_sigterm)  # type: ignore[arg-type]

    def start(
        self,
        name: str,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Proc:
        log_path = self.log_dir / f"{name}.log"
        with open(log_path, "ab") as log:
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                cwd=cwd,
                start_new_session=True,  # its own process group: stopped as a whole
            )
        proc = Proc(name, popen, log_path)
        self._procs.append(proc)
        return proc

    def stop(self, proc: Proc, grace_s: float = 8.0, sig: int = signal.SIGTERM) -> None:
        """Signal the child's process group, wait, then SIGKILL whatever is left."""
        if proc in self._procs:
            self._procs.remove(proc)
        if proc.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.popen.wait(grace_s)
            except subprocess.TimeoutExpired:
                pass
        # The leader may be gone while children of its group live on: kill those too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(2)

    def stop_all(self) -> None:
        for proc in reversed(list(self._procs)):
            self.stop(proc)


def _raise_exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def wait_http(proc: Proc, url: str, timeout_s: float = 60.0) -> None:
    """Wait until ``url`` answers any HTTP status; fail early if the process exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise BenchError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.log_tail()}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answered
        except (urllib.error.URLError, OSError):
            time.sleep(0.1)
    raise BenchError(f"{proc.name} did not answer {url} within {timeout_s:g} s:\n{proc.log_tail()}")


def wait_tcp(proc: Proc, port: int, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise BenchError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.log_tail()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.05)
    raise BenchError(f"{proc.name} did not listen on port {port} within {timeout_s:g} s")
