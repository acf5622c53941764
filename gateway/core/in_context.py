"""In-context examples: a model that is a base model plus ``k`` examples put in front of
the conversation (a registered model's ``in_context``).

The examples are fixed when the model is registered (or the config loaded): a list of
``{user, assistant}`` pairs, or a JSONL file in OpenAI chat format (a distillation
dataset's ``train.jsonl``), of which each line gives one pair: its last assistant
message with text and the last user message before it. :class:`Shots` chooses, for a
request, the first ``k`` or the ``k`` most similar to its last user message by the
overlap of character 3-grams of the folded text (:func:`gateway.core.text.fold`:
NFC, case-folded, runs of white space as one space), which needs no word boundaries —
Thai, written without spaces, compares as well as English, and Vietnamese in NFD as
in NFC.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from gateway.core import text
from gateway.core.records import last_user_text, text_of

MAX_EXAMPLES = 500
"""The most examples a model holds: a file's first ones are read."""
MAX_TEXT = 4000
"""The longest question or answer of an example, in characters: ``k`` long examples would
crowd a context window; a file's longer ones are left out."""
MAX_FILE_BYTES = 64 * 1024 * 1024
_SPACE = re.compile(r"\s+")


def grams(value: str, n: int = 3) -> frozenset[str]:
    """The character ``n``-grams of the folded text (the whole text when shorter)."""
    folded = _SPACE.sub(" ", text.fold(value)).strip()
    if len(folded) <= n:
        return frozenset([folded]) if folded else frozenset()
    return frozenset(folded[i : i + n] for i in range(len(folded) - n + 1))


def similarity(a: frozenset[str], b: frozenset[str]) -> float:
    """Dice's coefficient of two sets of n-grams, in [0, 1]."""
    if not a or not b:
        return 0.0
    return 2 * len(a & b) / (len(a) + len(b))


def pair_of(messages: Any) -> tuple[str, str] | None:
    """(user, assistant) of one chat-format conversation: its last assistant message with
    text and the last user message before it; None when it has none (a tool call)."""
    if not isinstance(messages, list):
        return None
    for i in range(len(messages) - 1, 0, -1):
        m = messages[i]
        if not isinstance(m, dict) or m.get("role") != "assistant":
            continue
        answer = text_of(m.get("content"))
        if not answer:
            return None
        for q in reversed(messages[:i]):
            if isinstance(q, dict) and q.get("role") == "user":
                question = text_of(q.get("content"))
                return (question, answer) if question else None
        return None
    return None


def read_examples(path: str) -> list[dict[str, str]]:
    """The ``{user, assistant}`` pairs of a JSONL file in OpenAI chat format (its first
    :data:`MAX_EXAMPLES`); lines whose answer is no text (a tool call), and examples longer
    than :data:`MAX_TEXT`, are left out.
    Raises ValueError naming the file (and line) when it cannot be used."""
    p = Path(path)
    try:
        if p.stat().st_size > MAX_FILE_BYTES:
            raise ValueError(f"'{path:.256}' is larger than {MAX_FILE_BYTES >> 20} MiB")
        raw = p.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read '{path:.256}': {exc.strerror or exc}") from None
    out: list[dict[str, str]] = []
    for n, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            doc = orjson.loads(line)
        except orjson.JSONDecodeError:
            raise ValueError(f"'{path:.256}' line {n}: not JSON") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("messages"), list):
            raise ValueError(f"'{path:.256}' line {n}: no 'messages' list (OpenAI chat format)")
        pair = pair_of(doc["messages"])
        if pair is not None and max(len(pair[0]), len(pair[1])) <= MAX_TEXT:
            out.append({"user": pair[0], "assistant": pair[1]})
            if len(out) == MAX_EXAMPLES:
                break
    if not out:
        raise ValueError(
            f"'{path:.256}' holds no example with a text answer of at most {MAX_TEXT} characters"
        )
    return out


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: never field by field
class Shots:
    """A model's examples and how many go in front of a request."""

    examples: tuple[tuple[str, str], ...]
    k: int
    similar: bool = True
    _grams: tuple[frozenset[str], ...] = field(default=(), repr=False)

    @classmethod
    def of(cls, examples: list[tuple[str, str]], k: int, similar: bool) -> Shots:
        pairs = tuple(examples)
        found = tuple(grams(u) for u, _ in pairs) if similar else ()
        return cls(pairs, k, similar, found)

    def choose(self, query: str) -> list[tuple[str, str]]:
        """The examples for a request whose last user message is ``query``: the first
        ``k``, or the ``k`` most similar (ties: the earlier example), the most similar
        last — nearest the conversation."""
        if not self.similar or not query or len(self.examples) <= self.k:
            return list(self.examples[: self.k])
        q = grams(query)
        scores = [similarity(q, g) for g in self._grams]
        best = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[: self.k]
        return [self.examples[i] for i in reversed(best)]

    def messages(self, messages: list[Any]) -> tuple[list[Any], int]:
        """``messages`` with the chosen examples as user/assistant turns after the
        leading system (or developer) messages; and how many were put in."""
        chosen = self.choose(last_user_text(messages))
        at = 0
        while (
            at < len(messages)
            and isinstance(messages[at], dict)
            and messages[at].get("role") in ("system", "developer")
        ):
            at += 1
        turns: list[Any] = []
        for user, assistant in chosen:
            turns += [
                {"role": "user", "content": user},
                {"role": "assistant", "content": assistant},
            ]
        return [*messages[:at], *turns, *messages[at:]], len(chosen)
