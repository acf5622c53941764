"""The evaluation gate: control vs candidate on the dataset's held-out test split.

Each test example's conversation is sent through the gateway to both models (by name,
temperature 0), and each answer is scored against the example's expected answer (the
correction, or the well-rated answer): exact match after normalising whitespace and
case, and ROUGE-L F1 over words. The candidate passes when its mean ROUGE-L beats the
control's by at least ``margin``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _words(text: str) -> list[str]:
    return text.lower().split()


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1: the longest common subsequence of words, as precision and recall."""
    a, b = _words(candidate), _words(reference)
    if not a or not b:
        return float(a == b)
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(a), lcs / len(b)
    return 2 * precision * recall / (precision + recall)


def exact(candidate: str, reference: str) -> bool:
    return _words(candidate) == _words(reference)


def test_cases(dataset_path: Path) -> list[tuple[list[dict[str, Any]], str]]:
    """(conversation, expected answer) for each supervised test example."""
    path = dataset_path / "test.jsonl"
    if not path.exists():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [(line["messages"][:-1], line["messages"][-1]["content"]) for line in lines]


def evaluate(
    cases: list[tuple[list[dict[str, Any]], str]],
    ask: Callable[[str, list[dict[str, Any]]], str],
    control: str,
    candidate: str,
    margin: float,
) -> dict[str, Any]:
    """Score both models on the cases; ``ask(model, messages)`` returns an answer."""
    rows = []
    for messages, expected in cases:
        row: dict[str, Any] = {"prompt": messages[-1].get("content"), "expected": expected}
        for who, model in (("control", control), ("candidate", candidate)):
            answer = ask(model, messages)
            row[who] = {"answer": answer, "rouge_l": round(rouge_l(answer, expected), 4),
                        "exact": exact(answer, expected)}  # fmt: skip
        rows.append(row)
    summary: dict[str, Any] = {"cases": len(rows), "control": control, "candidate": candidate,
                               "margin": margin}  # fmt: skip
    for who in ("control", "candidate"):
        n = len(rows) or 1
        summary[who + "_rouge_l"] = round(sum(r[who]["rouge_l"] for r in rows) / n, 4)
        summary[who + "_exact"] = round(sum(r[who]["exact"] for r in rows) / n, 4)
    gain = summary["candidate_rouge_l"] - summary["control_rouge_l"]
    summary["passed"] = bool(rows) and gain >= margin
    if not rows:
        summary["reason"] = "the dataset has no test examples: nothing to evaluate on"
    else:
        scores = (
            f"ROUGE-L {summary['candidate_rouge_l']:.3f} vs control "
            f"{summary['control_rouge_l']:.3f}: {gain:+.3f}"
        )
        verdict = ">=" if summary["passed"] else "<"
        summary["reason"] = f"{scores} {verdict} the margin {margin:g}"
    summary["rows"] = rows
    return summary


def missing_examples(dataset_path: Path, cfg: Any) -> int:
    """How many more held-out test examples the gate needs (0: enough to evaluate)."""
    return max(0, 1 - len(test_cases(dataset_path)))
