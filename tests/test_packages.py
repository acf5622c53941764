"""The two paths stay apart and the gateway's parts keep their layers: the online package
imports nothing of the offline one, serving loads no training library, the shared kernel
imports neither path, and the operators' surfaces are reached only from the composition
root."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from devtools.architecture import imports_of, part

REPO = Path(__file__).resolve().parents[1]


def imported(package: str) -> set[str]:
    names: set[str] = set()
    for path in (REPO / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
    return names


def violations(package: str, allowed: Callable[[str, str], bool]) -> list[str]:
    return sorted(
        f"{module} imports {target}"
        for module, targets in imports_of(package).items()
        for target in targets
        if part(module) != part(target) and not allowed(module, target)
    )


def test_the_core_imports_neither_path_nor_any_other_part_of_the_gateway() -> None:
    assert violations("gateway/core", lambda m, t: False) == []


def test_retrain_imports_only_the_core_and_the_stored_data_operations_of_the_gateway() -> None:
    allowed = ("gateway.core", "gateway.ops", "flywheel_stack")
    assert violations("retrain", lambda m, t: part(t) in allowed) == []


def test_the_operations_on_stored_data_import_only_the_core() -> None:
    assert violations("gateway/ops", lambda m, t: part(t) == "gateway.core") == []


def test_serving_reads_the_live_state_and_never_imports_a_control_writer() -> None:
    writers = {"experiments", "registry", "decisions", "decider", "adapters", "apikeys"}
    assert [
        v
        for v in violations("gateway/serving", lambda m, t: part(t) != "gateway.admin")
        if v.rpartition(".")[2] in writers
    ] == []
    assert (
        violations(
            "gateway/serving", lambda m, t: part(t) not in {"gateway.admin", "gateway.console"}
        )
        == []
    )


def test_only_the_composition_root_reaches_the_admin_api_and_the_console() -> None:
    roots = {"gateway.app", "gateway.cli", "gateway.openapi", "gateway.__main__"}
    surfaces = {"gateway.admin", "gateway.console"}
    found = violations("gateway", lambda m, t: part(t) not in surfaces or m in roots)
    assert [v for v in found if not v.startswith(("gateway.admin", "gateway.console"))] == []


def test_the_gateway_package_does_not_import_retrain_or_training_libraries() -> None:
    assert not imported("gateway") & {"retrain", "torch", "peft", "trl", "transformers"}


def test_serving_loads_no_training_library() -> None:
    probe = (
        "import sys, gateway.app, gateway.cli; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'retrain', 'torch', 'peft', 'trl', 'transformers', 'vllm'}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_each_package_owns_the_schema_of_its_config_sections() -> None:
    """One config file; the gateway's schema knows of the retrain section only the key it
    reads (the console lists dataset versions), the retrain package owns the rest."""
    from gateway.core.config import RetrainSection, Settings
    from retrain.config import RetrainConfig, RetrainSettings

    assert set(RetrainSection.model_fields) == {"dataset_dir"}
    assert set(RetrainConfig.model_fields) > {"dataset_dir", "local", "openai", "eval"}
    assert set(RetrainSettings.model_fields) == set(Settings.model_fields)
    gateway_config = (REPO / "gateway" / "core" / "config.py").read_text()
    assert "class LocalTraining" not in gateway_config and "class Eval" not in gateway_config


def cycles(package: str) -> list[list[str]]:
    """The import cycles among a package's modules (a local import counts: it is a
    dependency all the same), each as the modules around it, the first one again last."""
    graph = {
        module: {t for t in targets if part(t) == part(module) and t != module}
        for module, targets in imports_of(package).items()
    }
    found: list[list[str]] = []
    done: set[str] = set()

    def walk(module: str, path: list[str]) -> None:
        if module in path:
            found.append(path[path.index(module) :] + [module])
            return
        if module in done:
            return
        for target in sorted(graph.get(module, ())):
            walk(target, [*path, module])
        done.add(module)

    for module in sorted(graph):
        walk(module, [])
    return found


def test_retrain_has_no_import_cycles() -> None:
    """Each module of the offline path can be read (and changed) before the ones that
    import it: shared pieces live in their own module, as dataset versions do in
    ``retrain.versions`` (read by both ``build`` and ``forget``)."""
    assert [" → ".join(c) for c in cycles("retrain")] == []


def test_no_test_module_imports_another() -> None:
    """What test modules share lives in helper modules (``tests/helpers/`` and the other
    modules not named ``test_*``): a test module is collected, never imported."""
    found = []
    for path in sorted((REPO / "tests").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                modules = [node.module or ""] + [a.name for a in node.names if not node.module]
            elif isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            else:
                continue
            if any(m.rpartition(".")[2].startswith("test_") for m in modules):
                found.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert found == []
