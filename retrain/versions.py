"""Dataset versions on disk: each named by its content, written atomically, and the
``latest`` pointer of an experiment's datasets (``retrain.dataset_dir/<experiment>/``).

``retrain build`` writes the next version; ``retrain forget`` writes a successor without a
forgotten user's examples. Both read the latest version and count a version's examples the
same way, from here.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import redis

from gateway.core import keys
from gateway.core.documents import Manifest

from .config import RetrainSettings
from .curate import DPO, SFT, Example


@dataclass
class Version:
    """A written dataset version: its manifest and example rows."""

    id: str
    path: Path
    manifest: Manifest
    examples: list[Example]


def latest_version(root: Path) -> Version | None:
    pointer = root / "latest"
    if not pointer.exists():
        return None
    vid = pointer.read_text().strip()
    path = root / vid
    manifest = orjson.loads((path / "manifest.json").read_bytes())
    with open(path / "examples.jsonl", "rb") as f:
        examples = [Example.from_row(orjson.loads(line)) for line in f if line.strip()]
    return Version(vid, path, manifest, examples)


def tally(
    examples: list[Example],
) -> tuple[dict[str, int], dict[str, int], dict[str, dict[str, int]]]:
    """A version's example counts, tokens and sources per file (the manifest's)."""
    counts: Counter[str] = Counter()
    tokens: Counter[str] = Counter()
    by_source: dict[str, Counter[str]] = defaultdict(Counter)
    for ex in examples:
        name = "preference" if ex.kind == DPO else (ex.split or "train")
        if ex.kind == DPO and ex.split != "train":
            name = f"preference_{ex.split}"  # kept out of training: held-out groups
        counts[name] += 1
        tokens[name] += ex.tokens
        by_source[name][ex.source] += 1
    return dict(counts), dict(tokens), {k: dict(v) for k, v in by_source.items()}


def dataset_id(examples: list[Example]) -> str:
    digest = hashlib.sha256()
    for key, split in sorted((ex.key, ex.split or "") for ex in examples):
        digest.update(f"{key}:{split}\n".encode())
    return "ds-" + digest.hexdigest()[:12]


def _write_jsonl(path: Path, rows: Iterator[dict[str, Any]]) -> None:
    with open(path, "wb") as f:
        for row in rows:
            f.write(orjson.dumps(row) + b"\n")
        f.flush()
        os.fsync(f.fileno())


def write_version(root: Path, vid: str, examples: list[Example], manifest: Manifest) -> Path:
    """All files into a temp dir, fsynced, renamed into place; then ``latest`` moves."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / vid
    tmp = Path(tempfile.mkdtemp(prefix=f".{vid}-", dir=root))
    sft = [ex for ex in examples if ex.kind == SFT]
    for split in ("train", "validation", "test"):
        _write_jsonl(tmp / f"{split}.jsonl", (ex.line for ex in sft if ex.split == split))
    pairs = [ex for ex in examples if ex.kind == DPO and ex.split == "train"]
    if pairs:
        _write_jsonl(tmp / "preference.jsonl", (ex.line for ex in pairs))
    held = [ex for ex in examples if ex.kind == DPO and ex.split == "validation"]
    if held:  # DPO's validation loss (local) and validation_file (OpenAI)
        _write_jsonl(tmp / "preference_validation.jsonl", (ex.line for ex in held))
    _write_jsonl(tmp / "examples.jsonl", (ex.to_row() for ex in examples))
    (tmp / "manifest.json").write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
    os.rename(tmp, final)
    pointer = root / "latest.tmp"
    pointer.write_text(vid + "\n")
    os.replace(pointer, root / "latest")
    return final


def experiment_tenant(
    client: redis.Redis, ks: keys.Keyspace, settings: RetrainSettings, experiment: str
) -> str | None:
    """The tenant an experiment belongs to (None: shared), from the live state or the config."""
    raw = client.hget(ks.experiments, experiment)
    if raw is not None:
        tenant = (orjson.loads(raw).get("spec") or {}).get("tenant")
        return str(tenant) if tenant else None
    spec = settings.experiments.get(experiment)
    return spec.tenant if spec is not None else None
