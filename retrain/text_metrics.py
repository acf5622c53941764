"""Per-answer scores against an expected answer, and how long an answer may be.

Every score reads text through :mod:`gateway.core.text`: Unicode NFC first, so Vietnamese in
NFD scores as the same text in NFC, and words from a segmenter, so Thai (written
without spaces between words) has words at all.

* ``chrf``: chrF (character n-grams up to 6, recall weighted twice, as sacreBLEU
  computes it), from 0 to 1 — the default, because it needs no word boundaries: a
  one-word change costs about as much in Thai as in English.
* ``rouge_l``: ROUGE-L F1 over the segmented, case-folded words (the longest common
  subsequence as precision and recall).
* ``exact``: the same words in the same order (whitespace, case and Unicode form
  ignored), or for a JSON expected answer the same JSON document.
* ``valid_json``: for expected answers that are JSON (an object or an array), whether
  the answer parses as JSON too.
* ``answer_budget``: the ``max_tokens`` an answer gets: the expected answer's tokens
  (counted by the compared models' tokenizer) times a factor plus a slack, capped — so
  a long expected answer is not cut short and a short one does not let a rambling model
  run on.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable
from typing import Any

from gateway.core.text import nfc, words

CHARS_PER_TOKEN = 3.0  # conservative for BPE tokenizers (English averages ~4)
METRICS = ("chrf", "rouge_l", "exact")  # what :func:`score` reports for every answer


def chrf(candidate: str, reference: str) -> float:
    """chrF of ``candidate`` against ``reference`` in NFC, from 0 to 1 (two empty texts: 1)."""
    a, b = nfc(candidate), nfc(reference)
    if not a.strip() or not b.strip():
        return float(a.strip() == b.strip())
    return float(_chrf().sentence_score(a, [b]).score) / 100


@functools.cache
def _chrf() -> Any:
    from sacrebleu.metrics.chrf import CHRF

    return CHRF()


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1: the longest common subsequence of words, as precision and recall."""
    a, b = words(candidate), words(reference)
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
    """The same words in order; for a JSON reference, the same JSON document."""
    if words(candidate) == words(reference):
        return True
    expected = _json_document(reference)
    return expected is not None and _json_document(candidate) == expected


def _json_document(text: str) -> Any:
    """The JSON object or array ``text`` holds (a fenced code block allowed), or None."""
    body = text.strip()
    if body.startswith("```"):
        body = body.strip("`").removeprefix("json").strip()
    if not body.startswith(("{", "[")):
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None


def is_json(text: str) -> bool:
    """Whether ``text`` is a JSON object or array (what a JSON answer is)."""
    return _json_document(text) is not None


def estimate_tokens(text: str) -> int:
    """A tokenizer-free estimate that errs long: characters / 3, at least one per word."""
    return max(math.ceil(len(text) / CHARS_PER_TOKEN), len(text.split()))


def answer_budget(
    expected: str,
    factor: float,
    slack: int,
    cap: int,
    count: Callable[[str], int] = estimate_tokens,
) -> int:
    """``max_tokens`` for an answer expected to look like ``expected``, whose tokens
    ``count`` counts (the compared models' tokenizer: ``retrain.tokens``)."""
    return max(1, min(cap, math.ceil(count(expected) * factor) + slack))


def score(answer: str, expected: str) -> dict[str, Any]:
    """The scores of one answer: ``chrf``, ``rouge_l``, ``exact`` and, where the expected
    answer is JSON, ``valid_json``."""
    row: dict[str, Any] = {
        "chrf": round(chrf(answer, expected), 4),
        "rouge_l": round(rouge_l(answer, expected), 4),
        "exact": exact(answer, expected),
    }
    if is_json(expected):
        row["valid_json"] = is_json(answer)
    return row
