"""The Thai tutorial (docs/thai-vietnamese.md), exactly as written, on ``gateway up`` with
no config file: the README's tutorial in Thai, run and adapted the same way (see
``tests/test_tutorial.py``). The gate must pass on the held-out Thai example, and the
canary must answer the questions it was trained on with their Thai corrections, word
for word, where the base model does not.
"""

from __future__ import annotations

import ast
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from .services import wait_ready
from .test_local_stack import assert_all_gone, descendants
from .test_tutorial import GATEWAY, port_free, run, tutorial_blocks

PAGE = Path(__file__).resolve().parents[1] / "docs" / "thai-vietnamese.md"
ANSWER = re.compile(r"^(\S+) (\S+): (.*)$", re.M)


def correction(item: str) -> str:
    return f"ได้ค่ะ คืน{item}ได้ภายใน 30 วันพร้อมใบเสร็จค่ะ"


@pytest.mark.vllm
@pytest.mark.timeout(1200)
def test_the_thai_tutorial_turns_the_flywheel_on_the_quick_start_stack(tmp_path: Path) -> None:
    assert port_free(8000) and port_free(8001), "the tutorial needs ports 8000 and 8001 free"
    blocks = tutorial_blocks(PAGE)
    env = {**os.environ, "COLUMNS": "200", "PYTHONIOENCODING": "utf-8"}
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
        items = [line.split(":")[0] for line in rated.splitlines()]
        times["rate"] = time.monotonic() - t

        t = time.monotonic()
        trained = run(*blocks[1], tmp_path, env)
        (canary,) = re.findall(r"(default-[0-9a-f]+) is a canary of 'default' at 5%", trained)
        times["retrain run"] = time.monotonic() - t

        printed = run(*blocks[2], tmp_path, {**env, "CANARY": canary})
        answers = {(i, arm): ast.literal_eval(text) for i, arm, text in ANSWER.findall(printed)}
        assert set(answers) == {(i, arm) for i in items for arm in ("base", canary)}, printed
        right = [i for i in items if answers[i, canary] == correction(i)]
        # Ten ratings are trained on; one validates the training, one tests the candidate.
        assert len(right) >= 10, printed
        assert not [i for i in items if answers[i, "base"] == correction(i)]

        last = blocks[3][1].replace("export CANARY=default-…", f"export CANARY={canary}")
        decided = run("shell", last, tmp_path, env)
        assert "Experiment default" in decided and canary in decided  # the report's table
        spec = httpx.get(GATEWAY + "/admin/experiments/default").json()["spec"]
        assert {a["model"]: a["weight"] for a in spec["arms"]}[canary] == 100
        assert f"promoted {canary}" in decided  # the history
        times["loop"] = time.monotonic() - t0 - times["gateway up"]
        print("thai tutorial timings (s):", {k: round(v, 1) for k, v in times.items()})
        print(trained)
        print(printed)
    finally:
        up.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            up.wait(60)
        finally:
            up.kill()
    assert_all_gone(tree)
