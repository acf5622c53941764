"""``./dev test`` runs on two workers; a group of tests stays on one of them."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_a_group_runs_on_one_worker_and_the_rest_spreads(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text(
        "from tests.workers import publish, pytest_configure_node, pytest_xdist_make_scheduler\n"
        "def pytest_collection_modifyitems(config, items):\n"
        "    publish(config, items)\n"
    )
    tests = ["import pytest, time"]
    for i in range(4):
        tests += ['@pytest.mark.xdist_group("server")', f"def test_grouped_{i}(): time.sleep(0.2)"]
    tests += [f"def test_free_{i}(): time.sleep(0.2)" for i in range(8)]
    (tmp_path / "test_sample.py").write_text("\n".join(tests) + "\n")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-n",
            "2",
            "--dist",
            "loadgroup",
            "-v",
            "-p",
            "no:cacheprovider",
            "-o",
            "addopts=",
            "test_sample.py",
        ],
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    ran = re.findall(r"\[(gw\d)\] \[\s*\d+%\] PASSED test_sample.py::(test_\w+)", run.stdout)
    assert len(ran) == 12, run.stdout
    grouped = {worker for worker, test in ran if test.startswith("test_grouped")}
    assert len(grouped) == 1, ran  # the whole group on one worker
    assert {worker for worker, _ in ran} == {"gw0", "gw1"}, ran  # and both workers busy
