"""Groups of tests that run on one pytest-xdist worker (``./dev test`` runs two).

The unit of scheduling is a test module: a module's tests run on one worker, in order.
A module with a test marked ``xdist_group(name)`` — by hand, or by ``conftest.py`` for
the tests on the session's vLLM server — runs on the same worker as every other module
of that group, so one worker alone starts that server. pytest-xdist's own
``--dist loadgroup`` reads the marker by renaming each test's node id, which pytest 9.2
no longer allows; here the workers write the scopes of what they collected to a folder
the controller gave them, and the controller's scheduler reads them from there.

Order: the groups first, largest first, then the modules, largest first. A group holds
a server's start-up and its longest tests (the session's vLLM server, the embedding
server, the tutorials' stacks); handed out last, one of them would run alone on one
worker while the other sat idle (xdist orders units by test count only, and the
tutorials' group has two tests that take three minutes).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest

GROUPS_DIR = "flywheel_groups_dir"
_dir = pytest.StashKey[Path]()


def groups_of(items: list[pytest.Item]) -> dict[str, str]:
    """Each test's unit of scheduling: its module, or — where any test of the module is
    in a group — that group, joined with every group it shares a module with. Whole
    modules stay on one worker, in order (module-scoped fixtures are built once, and a
    module's tests may build on each other), and a group is never split."""
    parent: dict[str, str] = {}

    def root(name: str) -> str:
        while parent.setdefault(name, name) != name:
            name = parent[name]
        return name

    module_groups: dict[str, str] = {}
    for item in items:
        module = item.nodeid.split("::", 1)[0]
        for mark in item.iter_markers("xdist_group"):
            group = root(str(mark.args[0] if mark.args else mark.kwargs.get("name", "default")))
            if module in module_groups:
                parent[group] = root(module_groups[module])
            else:
                module_groups[module] = group
    scopes: dict[str, str] = {}
    for item in items:
        module = item.nodeid.split("::", 1)[0]
        grouped = module_groups.get(module)
        scopes[item.nodeid] = f"group:{root(grouped)}" if grouped else module
    return scopes


def handout_order(units: dict[str, dict[str, bool]]) -> list[str]:
    """The order units (scope -> its tests) are handed out: groups before modules, each
    by test count (largest first), then by name."""
    return sorted(units, key=lambda u: (not u.startswith("group:"), -len(units[u]), u))


def publish(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On a worker: write the groups of what it collected where the controller reads them."""
    workerinput: dict[str, Any] | None = getattr(config, "workerinput", None)
    if not workerinput or GROUPS_DIR not in workerinput:
        return
    path = Path(workerinput[GROUPS_DIR]) / f"{workerinput['workerid']}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(groups_of(items)))
    os.replace(tmp, path)  # whole or absent: the controller never reads half a file


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """On the controller, for each worker it starts: where to write the groups."""
    config: pytest.Config = node.config
    if _dir not in config.stash:
        config.stash[_dir] = Path(tempfile.mkdtemp(prefix="flywheel-groups-"))
        config.add_cleanup(lambda: shutil.rmtree(config.stash[_dir], ignore_errors=True))
    node.workerinput[GROUPS_DIR] = str(config.stash[_dir])


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Under ``--dist loadgroup``: xdist's group scheduling, with the groups the workers
    wrote (every worker collects the same tests, so any one file is the whole map)."""
    if config.getoption("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class Scheduler(LoadGroupScheduling):  # type: ignore[misc]
        groups: dict[str, str] | None = None
        reordered = False

        def _assign_work_unit(self, node: Any) -> None:
            # The queue is whole before the first unit leaves it (the collection stays
            # as collected: the workers run tests by their index in it).
            if not self.reordered:
                self.reordered = True
                for scope in handout_order(self.workqueue):
                    self.workqueue.move_to_end(scope)
            super()._assign_work_unit(node)

        def _split_scope(self, nodeid: str) -> str:
            if self.groups is None:
                self.groups = {}
                for path in sorted(config.stash[_dir].glob("*.json")):
                    self.groups.update(json.loads(path.read_text()))
            return self.groups.get(nodeid) or nodeid.split("::", 1)[0]

    return Scheduler(config, log)
