"""A small dataset version on disk, for the training providers."""

from __future__ import annotations

import json
from pathlib import Path

from .flywheel import correction

ITEMS = ["shoes", "shirts", "jackets", "bags", "hats", "belts", "socks", "scarves"]


def write_dataset(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)

    def sft(item: str) -> str:
        return json.dumps(
            {
                "messages": [
                    {"role": "user", "content": f"Can I return {item}?"},
                    {"role": "assistant", "content": correction(item)},
                ]
            }
        )

    def pair(item: str) -> str:
        return json.dumps(
            {
                "input": {"messages": [{"role": "user", "content": f"Return {item}?"}]},
                "preferred_output": [{"role": "assistant", "content": correction(item)}],
                "non_preferred_output": [{"role": "assistant", "content": "No."}],
            }
        )

    (root / "train.jsonl").write_text("\n".join(sft(i) for i in ITEMS[:6]) + "\n")
    (root / "validation.jsonl").write_text("\n".join(sft(i) for i in ITEMS[6:]) + "\n")
    (root / "preference.jsonl").write_text("\n".join(pair(i) for i in ITEMS[:4]) + "\n")
    return root
