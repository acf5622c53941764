"""What the tutorial tests share: a page's code blocks, run as a user pastes them, on the
quick-start stack (``gateway up`` with no config file, in a fresh directory).

The code blocks marked ``<!-- tutorial:python -->`` / ``<!-- tutorial:shell -->`` are
run in order. Two things are adapted, no more: ``.venv/bin/`` becomes this interpreter's
bin directory, and the one value a user copies from the output (the canary's name) is
filled in. Then Ctrl-C stops the stack, and no process it started may be left.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from .helpers.processes import assert_all_gone, descendants
from .services import wait_ready

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"<!-- tutorial:(python|shell) -->\n```(?:python|sh)\n(.*?)```", re.S)
GATEWAY = "http://127.0.0.1:8000"


def tutorial_blocks(page: Path = README) -> list[tuple[str, str]]:
    blocks = [(kind, code) for kind, code in BLOCK.findall(page.read_text())]
    assert [k for k, _ in blocks] == ["python", "shell", "python", "shell"], blocks
    bindir = str(Path(sys.executable).parent) + "/"
    return [(kind, code.replace(".venv/bin/", bindir)) for kind, code in blocks]


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def run(kind: str, code: str, cwd: Path, env: dict[str, str]) -> str:
    shell = ["bash", "-euo", "pipefail", "-c", code]
    argv = [sys.executable, "-c", code] if kind == "python" else shell
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (
        f"{kind} block failed ({done.returncode}):\n{code}\n"
        f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    )
    return done.stdout


@dataclass
class Tutorial:
    """A page's blocks on a running quick-start stack, and how long each step took."""

    blocks: list[tuple[str, str]]
    cwd: Path
    env: dict[str, str]
    times: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    def step(self, name: str, index: int, **env: str) -> str:
        """Run block ``index`` (timed as ``name``) and return what it printed."""
        t = time.monotonic()
        out = run(*self.blocks[index], self.cwd, {**self.env, **env})
        self.times[name] = time.monotonic() - t
        return out

    def trained_canary(self) -> tuple[str, str]:
        """The ``retrain run`` block: the canary it made, and what it printed."""
        trained = self.step("retrain run", 1)
        (canary,) = re.findall(r"(default-[0-9a-f]+) is a canary of 'default' at 5%", trained)
        return canary, trained

    def promoted(self, canary: str) -> None:
        """The last block, with the canary's name filled in: the canary is promoted, and
        the report and the history say so."""
        last = self.blocks[3][1].replace("export CANARY=default-…", f"export CANARY={canary}")
        decided = run("shell", last, self.cwd, self.env)
        assert "Experiment default" in decided and canary in decided  # the report's table
        spec = httpx.get(GATEWAY + "/admin/experiments/default").json()["spec"]
        assert {a["model"]: a["weight"] for a in spec["arms"]}[canary] == 100
        assert f"promoted {canary}" in decided  # the history
        self.times["loop"] = time.monotonic() - self.started - self.times["gateway up"]


@contextmanager
def quick_start(page: Path, cwd: Path, **env: str) -> Iterator[Tutorial]:
    """``gateway up`` in ``cwd``, ready; then Ctrl-C, and every process it started gone."""
    assert port_free(8000) and port_free(8001), "the tutorial needs ports 8000 and 8001 free"
    full = {**os.environ, "COLUMNS": "200", **env}
    full.pop("FLYWHEEL_CONFIG", None)
    log = cwd / "gateway-up.log"
    tutorial = Tutorial(tutorial_blocks(page), cwd, full)
    with open(log, "ab") as out:
        up = subprocess.Popen(
            [sys.executable, "-m", "gateway", "up"],
            cwd=cwd,
            env=full,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    tree: set[int] = set()
    try:
        assert wait_ready(up, GATEWAY + "/readyz", log, 600), "gateway up never got ready"
        tutorial.times["gateway up"] = time.monotonic() - tutorial.started
        tree = descendants(up.pid)
        yield tutorial
    finally:
        up.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            up.wait(60)
        finally:
            up.kill()
    assert_all_gone(tree)
