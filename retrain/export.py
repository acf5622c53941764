"""``retrain export``: a trained adapter as a directory to serve or ship.

``--merged`` folds the LoRA into its base (PEFT's ``merge_and_unload``) and writes a
plain model directory — weights, config, tokenizer — that vLLM (or transformers) serves
without LoRA support; without it the adapter directory is copied as it is. The adapter
is found from a model name the gateway serves (its ``adapter_path``) or given as a
directory; its base is the one the job trained on, else the adapter's own
``base_model_name_or_path``, else ``retrain.local.base_model`` (``--base`` overrides).
Files are written readable by all (a server may run as another user).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from .errors import UsageError


class ExportError(UsageError):
    """What is missing or wrong; nothing was written (exit 2)."""


def readable_by_all(root: Path) -> None:
    """Files 0644 and directories 0755 under ``root`` (safetensors writes files 0600)."""
    for dirpath, _dirs, filenames in os.walk(root):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), 0o644)


def adapter_base(adapter: Path) -> str | None:
    """The base model the adapter names in its ``adapter_config.json``."""
    try:
        doc: dict[str, Any] = json.loads((adapter / "adapter_config.json").read_text())
    except (OSError, ValueError):
        return None
    base = doc.get("base_model_name_or_path")
    return str(base) if base else None


def merge(adapter: Path, base: str, out: Path) -> Path:
    """Merge ``adapter`` into ``base`` and save the result as a plain model in ``out``."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base, dtype="auto")
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(base).save_pretrained(str(out))
    readable_by_all(out)
    return out


def export(adapter: Path, out: Path, *, merged: bool, base: str | None) -> Path:
    """Write ``adapter`` (merged into ``base`` when ``merged``) to ``out``, a new directory."""
    if not (adapter / "adapter_config.json").is_file():
        raise ExportError(f"{adapter} is not an adapter directory (no adapter_config.json)")
    if out.exists() and any(out.iterdir()):
        raise ExportError(f"--out {out}: not empty; choose a new directory")
    if not merged:
        shutil.copytree(adapter, out, dirs_exist_ok=True)
        readable_by_all(out)
        return out
    base = base or adapter_base(adapter)
    if not base:
        raise ExportError(f"{adapter}: its base model is unknown; name it with --base")
    try:
        return merge(adapter, base, out)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)  # no half-written model left behind
        raise
