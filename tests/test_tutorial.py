"""The README's tutorial, exactly as written, on ``gateway up`` with no config file.

The code blocks marked ``<!-- tutorial:python -->`` / ``<!-- tutorial:shell -->`` are
run in order, as a user would paste them, from a fresh directory (so ``./data`` is the
test's own). Two things are adapted, no more: ``.venv/bin/`` becomes this interpreter's
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
from pathlib import Path

import httpx
import pytest

from .services import wait_ready
from .test_local_stack import assert_all_gone, descendants

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


@pytest.mark.vllm
@pytest.mark.timeout(1200)
def test_the_readme_tutorial_turns_the_flywheel_on_the_quick_start_stack(tmp_path: Path) -> None:
    assert port_free(8000) and port_free(8001), "the tutorial needs ports 8000 and 8001 free"
    blocks = tutorial_blocks()
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("FLYWHEEL_CONFIG", None)
    log = tmp_path / "gateway-up.log"
    t0 = time.monotonic()
    with open(log, "ab") as out:
        up = subprocess.Popen(
            [sys.executable, "-m", "gateway", "up"],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    tree: set[int] = set()
    try:
        assert wait_ready(up, GATEWAY + "/readyz", log, 600), "gateway up never got ready"
        times = {"gateway up": time.monotonic() - t0}
        tree = descendants(up.pid)

        t = time.monotonic()
        rated = run(*blocks[0], tmp_path, env)
        assert rated.count("rated down, corrected") == 12
        times["rate"] = time.monotonic() - t

        t = time.monotonic()
        trained = run(*blocks[1], tmp_path, env)
        (canary,) = re.findall(r"(default-[0-9a-f]+) is a canary of 'default' at 5%", trained)
        times["retrain run"] = time.monotonic() - t

        answers = run(*blocks[2], tmp_path, {**env, "CANARY": canary})
        wanted = "Yes: shoes can be returned within 30 days with the receipt."
        assert f"{canary}: {wanted}\n" in answers, answers
        assert f"base: {wanted}\n" not in answers

        last = blocks[3][1].replace("export CANARY=default-…", f"export CANARY={canary}")
        decided = run("shell", last, tmp_path, env)
        assert "Experiment default" in decided and canary in decided  # the report's table
        spec = httpx.get(GATEWAY + "/admin/experiments/default").json()["spec"]
        assert {a["model"]: a["weight"] for a in spec["arms"]}[canary] == 100
        assert f"promoted {canary}" in decided  # the history
        times["loop"] = time.monotonic() - t0 - times["gateway up"]
        print("tutorial timings (s):", {k: round(v, 1) for k, v in times.items()})
        print(trained)
        print(answers)
    finally:
        up.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            up.wait(60)
        finally:
            up.kill()
    assert_all_gone(tree)
