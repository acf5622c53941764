"""The docs: the configuration reference matches the code, the site builds with no broken
link, and the README stays a newcomer's page."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from devtools import architecture
from retrain.config import RetrainSettings
from retrain.config_reference import render, rows

REPO = Path(__file__).resolve().parents[1]


def test_the_configuration_reference_is_generated_from_the_settings() -> None:
    page = (REPO / "docs" / "configuration-reference.md").read_text()
    assert page == render(), (
        "docs/configuration-reference.md is stale: run "
        "`python -m retrain.config_reference > docs/configuration-reference.md`"
    )
    assert "| `interaction_log.batch_size` | int | `2048` |" in page  # a default, from code


def test_the_architecture_page_is_generated_from_the_modules() -> None:
    page = (REPO / "docs" / "architecture.md").read_text()
    assert page == architecture.render(), (
        "docs/architecture.md is stale: run "
        "`python -m devtools.architecture > docs/architecture.md`"
    )
    for part in ("core", "serving", "control", "admin", "console", "ops"):
        assert f"### `gateway/{part}/`" in page
    assert "- `keys.py` — Every Redis key name Flywheel uses" in page  # a docstring, from code


def test_the_docs_site_builds_strictly(tmp_path: Path) -> None:
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    assert (tmp_path / "configuration-reference" / "index.html").is_file()


def test_the_readme_is_short_and_links_only_to_pages_that_exist() -> None:
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 300
    for page in (
        "api",
        "experiments",
        "retrain",
        "configuration",
        "operations",
        "guarantees",
        "performance",
        "architecture",
    ):
        assert f"](docs/{page}.md)" in readme
        assert (REPO / "docs" / f"{page}.md").is_file()


def test_every_key_of_the_settings_is_described() -> None:
    undescribed = [path for path, _, _, description in rows(RetrainSettings) if not description]
    assert not undescribed, f"settings without a description=: {undescribed}"


def test_the_reference_lists_every_key_of_the_settings() -> None:
    keys = [path for path, *_ in rows(RetrainSettings)]
    assert "retrain.local.r" in keys and "upstreams.NAME.max_lora_rank" in keys
    assert len(keys) == len(set(keys))
