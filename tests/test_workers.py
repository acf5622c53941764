"""``./dev test`` runs on two workers: a module, and a group of modules, on one of them."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_modules_and_groups_run_whole_on_one_worker_and_the_rest_spreads(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text(
        "from tests.workers import publish, pytest_configure_node, pytest_xdist_make_scheduler\n"
        "def pytest_collection_modifyitems(config, items):\n"
        "    publish(config, items)\n"
    )
    for name in ("a", "b"):  # two modules of one group (a server both need)
        grouped = ["import pytest, time"]
        for i in range(3):
            grouped += [
                '@pytest.mark.xdist_group("server")',
                f"def test_grouped_{i}(): time.sleep(0.2)",
            ]
        (tmp_path / f"test_{name}.py").write_text("\n".join(grouped) + "\n")
    for name in ("c", "d", "e", "f"):  # four free modules
        free = ["import time"] + [f"def test_free_{i}(): time.sleep(0.2)" for i in range(2)]
        (tmp_path / f"test_{name}.py").write_text("\n".join(free) + "\n")
    (tmp_path / "test_z.py").write_text(  # a group of one test, collected last
        'import pytest, time\n@pytest.mark.xdist_group("stack")\ndef test_long(): time.sleep(0.2)\n'
    )
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
        ],
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    ran = re.findall(r"\[(gw\d)\] \[\s*\d+%\] PASSED (test_\w)\.py::(test_\w+)", run.stdout)
    assert len(ran) == 15, run.stdout
    where: dict[str, set[str]] = {}
    for worker, module, _ in ran:
        where.setdefault(module, set()).add(worker)
    assert all(len(workers) == 1 for workers in where.values()), where  # a module: one worker
    assert where["test_a"] == where["test_b"], where  # the group's modules: the same one
    assert set().union(*where.values()) == {"gw0", "gw1"}, where  # and both workers busy
    # The groups go first, the small one too: the modules fill in around them.
    first = {worker: module for worker, module, _ in reversed(ran)}
    assert sorted(first.values())[1] == "test_z", first
    assert sorted(first.values())[0] in {"test_a", "test_b"}, first
