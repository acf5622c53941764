"""Curation in English, Thai and Vietnamese: what near-duplicate detection, content keys
and the split make of the support-desk texts in ``tests/support_desk.py``.

    python -m bench.curate_languages

Prints, with the builder's own functions and default thresholds:

* the MinHash similarity of an example to itself with one word of its answer changed
  (every word of every answer in turn, each replacement; the mean, the least, and the
  share at or above ``near_duplicate``), per language, for an answer of one paragraph
  and of two;
* a Vietnamese example typed in NFD (letters and combining marks) against NFC: their
  similarity, whether their content keys and written text are equal;
* how many of 10 distinct pairs are kept when all share a long system prompt (random
  words of the English answers), the pairs whole and cut to their first sentence;
* of 150 near-identical Thai pairs from two users each (two words of the answer
  changed), how many land in different splits, and in train and test; and of those at
  least ``split_together`` similar.
"""

from __future__ import annotations

import random
import statistics
import unicodedata
from typing import Any

from gateway.core.text import nfc, words
from retrain.config import RetrainConfig
from retrain.curate import SFT, Curator, Example, TokenCounter, near_text, signature_of
from retrain.dataset import assign_splits
from tests.support_desk import PAIRS, REPLACEMENTS


def line(question: str, answer: str, system: str | None = None) -> dict[str, Any]:
    messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    if system:
        messages.insert(0, {"role": "system", "content": system})
    return {"messages": messages}


def similarity(a: dict[str, Any], b: dict[str, Any]) -> float:
    return float((signature_of(near_text(a)) == signature_of(near_text(b))).mean())


def changed(text: str, word: str, new: str) -> str | None:
    """``text`` with the first occurrence of ``word`` (as written) replaced by ``new``."""
    text = nfc(text)
    at = text.find(word)
    return None if at < 0 or word == new else text[:at] + new + text[at + len(word) :]


def is_word(word: str) -> bool:
    return any(c.isalpha() for c in word)  # (a Thai word's vowel marks are not letters)


def one_word_changes(lang: str, paragraphs: int) -> tuple[list[float], list[int]]:
    """Similarities of every one-word change, and the examples' lengths in words."""
    sims, lengths = [], []
    pairs = PAIRS[lang]
    for i, (question, _) in enumerate(pairs):
        answer = " ".join(pairs[(i + k) % len(pairs)][1] for k in range(paragraphs))
        lengths.append(len(words(near_text(line(question, answer)))))
        for word in dict.fromkeys(words(answer)):
            for new in REPLACEMENTS[lang] if is_word(word) else ():
                other = changed(answer, word, new)
                if other is not None:
                    sims.append(similarity(line(question, answer), line(question, other)))
    return sims, lengths


def curator(**kwargs: Any) -> Curator:
    return Curator(TokenCounter(None, "o200k_base"), 100_000, 0.85, **kwargs)


def kept_with_system_prompt(length: int, short: bool) -> int:
    vocabulary = sorted({w for _, a in PAIRS["en"] for w in a.split()})
    system = " ".join(random.Random(length).choices(vocabulary, k=length))
    new = [
        Example(SFT, line(q, a.split(". ")[0] if short else a, system), "served", f"user:{i}")
        for i, (q, a) in enumerate(PAIRS["en"])
    ]
    return len(curator().deduplicate([], new))


def straddling(n: int = 150) -> dict[str, int]:
    """Near-identical Thai pairs from two users each: how many are both kept, in
    different splits, one in train and one in test; and the same of those at least
    ``split_together`` similar."""
    rng = random.Random(3)
    phrases = [p for q, a in PAIRS["th"] for p in a.split()]
    new, twins = [], []
    for i in range(n):
        question = rng.choice(PAIRS["th"])[0]
        answer = " ".join(rng.sample(phrases, 6)) + f" หมายเลขเรื่อง {i}"
        other = answer
        for _ in range(2):
            word = rng.choice([w for w in words(other) if is_word(w) and len(w) > 1])
            other = changed(other, word, rng.choice(REPLACEMENTS["th"])) or other
        a = Example(SFT, line(question, answer), "served", f"user:a{i}", tags=["support"])
        b = Example(SFT, line(question, other), "served", f"user:b{i}", tags=["support"])
        new += [a, b]
        twins.append((a, b))
    cur = curator()
    survivors = {id(ex) for ex in cur.deduplicate([], new)}
    assign_splits([], new, RetrainConfig(), cur.links)
    both = [(a, b) for a, b in twins if id(a) in survivors and id(b) in survivors]
    near = [(a, b) for a, b in both if similarity(a.line, b.line) >= RetrainConfig().split_together]
    return {
        "kept both": len(both),
        "in different splits": sum(a.split != b.split for a, b in both),
        "in train and test": sum({a.split, b.split} == {"train", "test"} for a, b in both),
        "of them similar enough to split together": len(near),
        "those in different splits": sum(a.split != b.split for a, b in near),
    }


def main() -> None:
    near = RetrainConfig().near_duplicate
    print("| one word of the answer changed | words | mean similarity | least | caught |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for paragraphs in (1, 2):
        for lang in ("en", "th", "vi"):
            sims, lengths = one_word_changes(lang, paragraphs)
            caught = sum(s >= near for s in sims)
            print(
                f"| {lang}, {paragraphs} paragraph{'s' * (paragraphs > 1)} "
                f"| {min(lengths)}–{max(lengths)} | {statistics.mean(sims):.2f} "
                f"| {min(sims):.2f} | {caught} of {len(sims)} |"
            )
    q, a = PAIRS["vi"][0]
    composed = line(q, a)
    decomposed = line(unicodedata.normalize("NFD", q), unicodedata.normalize("NFD", a))
    cleaned = [Example(SFT, x, "served", "user:v") for x in (composed, decomposed)]
    curator().clean(cleaned)
    print(
        f"\nVietnamese NFC vs NFD: similarity {similarity(composed, decomposed):.3f}; "
        f"same content key: {cleaned[0].key == cleaned[1].key}; "
        f"same written text: {cleaned[0].line == cleaned[1].line}"
    )
    for length in (252, 504):
        whole, short = kept_with_system_prompt(length, False), kept_with_system_prompt(length, True)
        print(
            f"10 distinct pairs, a {length}-word system prompt: {whole} kept; "
            f"cut to their first sentence: {short} kept"
        )
    counts = ", ".join(f"{k} {v}" for k, v in straddling().items())
    print(f"150 near-identical Thai pairs from two users: {counts}")


if __name__ == "__main__":
    main()
