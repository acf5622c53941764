"""The two paths stay apart: the online package imports nothing of the offline one, and
serving loads no training library."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

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
    gateway_config = (REPO / "gateway" / "config.py").read_text()
    assert "class LocalTraining" not in gateway_config and "class Eval" not in gateway_config
