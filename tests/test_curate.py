"""Curation, no server: the builder's bulk band index keeps exactly what datasketch's own
``MinHashLSH`` keeps, on text with many near copies; and English, Thai and Vietnamese
support-desk text (``tests/support_desk.py``) is deduplicated, keyed and split alike."""

from __future__ import annotations

import random
import unicodedata
from typing import Any

import pytest
from datasketch import MinHash, MinHashLSH
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.core.text import words
from retrain.config import RetrainConfig
from retrain.curate import (
    NUM_PERM,
    SFT,
    Curator,
    Example,
    TokenCounter,
    _shingle_hashes,
    near_text,
    signature_of,
)
from retrain.dataset import assign_splits
from tests.support_desk import PAIRS, REPLACEMENTS

WORDS = [f"w{i}" for i in range(3000)]


def examples(seed: int, n: int) -> list[Example]:
    """``n`` answers made from 300 texts, each with up to six of its words replaced."""
    rng = random.Random(seed)
    bases = [[rng.choice(WORDS) for _ in range(rng.randint(3, 80))] for _ in range(300)]
    out = []
    for i in range(n):
        words = list(rng.choice(bases))
        for _ in range(rng.randint(0, 6)):
            words[rng.randrange(len(words))] = rng.choice(WORDS)
        messages = [
            {"role": "user", "content": "Tell me more"},
            {"role": "assistant", "content": " ".join(words)},
        ]
        out.append(Example(SFT, {"messages": messages}, "served", f"u{i}"))
    return out


def datasketch_kept(kept: list[Example], new: list[Example], threshold: float) -> list[int]:
    """What survives when each example is checked with ``MinHashLSH.query`` and
    ``MinHash.jaccard``, and inserted if it survives: the indexes into ``new``."""
    bands = Curator(TokenCounter(None, "o200k_base"), 100_000, threshold).candidate_threshold
    lsh = MinHashLSH(threshold=bands, num_perm=NUM_PERM, weights=(0.1, 0.9))
    signed: dict[str, MinHash] = {}

    def sign(name: str, ex: Example) -> MinHash:
        mh = MinHash(num_perm=NUM_PERM, hashfunc=int)
        mh.update_batch(_shingle_hashes(near_text(ex.line)))
        signed[name] = mh
        return mh

    for i, ex in enumerate(kept):
        lsh.insert(f"k{i}", sign(f"k{i}", ex))
    seen = {ex.key for ex in kept}
    survivors = []
    for i, ex in enumerate(new):
        mh = sign(f"n{i}", ex)
        if ex.key in seen or any(mh.jaccard(signed[c]) >= threshold for c in lsh.query(mh)):
            continue
        seen.add(ex.key)
        lsh.insert(f"n{i}", mh)
        survivors.append(i)
    return survivors


@pytest.mark.parametrize(("seed", "threshold"), [(0, 0.85), (1, 0.6), (2, 0.95)])
def test_the_band_index_keeps_what_datasketchs_lsh_keeps(seed: int, threshold: float) -> None:
    data = examples(seed, 3000)
    kept, new = data[:300], data[300:]
    curator = Curator(TokenCounter(None, "o200k_base"), 100_000, threshold)
    survivors = curator.deduplicate(kept, new)
    position = {id(ex): i for i, ex in enumerate(new)}
    assert [position[id(ex)] for ex in survivors] == datasketch_kept(kept, new, threshold)
    # the data has both kinds of copy, so the comparison says something
    assert curator.dropped["duplicate"] > 0 and curator.dropped["near_duplicate"] > 0
    assert len(new) - len(survivors) == curator.dropped.total()


# -- English, Thai and Vietnamese ---------------------------------------------------------

LANGS = ("en", "th", "vi")
PROPS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def curator() -> Curator:
    """The builder's curator with the default thresholds."""
    cfg = RetrainConfig()
    return Curator(
        TokenCounter(None, cfg.tiktoken_encoding),
        cfg.max_tokens,
        cfg.near_duplicate,
        split_together=cfg.split_together,
    )


def chat(question: str, answer: str, system: str | None = None) -> dict[str, Any]:
    messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return {"messages": ([{"role": "system", "content": system}] if system else []) + messages}


def example(line: dict[str, Any], group: str, tags: list[str] | None = None) -> Example:
    return Example(SFT, line, "served", group, tags=tags or ["support"])


def long_answer(lang: str, i: int) -> str:
    """An answer of two paragraphs (100 to 160 words), as a support reply often is."""
    pairs = PAIRS[lang]
    return f"{pairs[i][1]} {pairs[(i + 1) % len(pairs)][1]}"


def change_words(text: str, lang: str, picks: list[int]) -> str:
    """``text`` with one word for each pick replaced by another word of ``lang`` (the
    words as a reader sees them: Thai segmented, as written, not case-folded)."""
    for pick in picks:
        found = [w for w in dict.fromkeys(words(text)) if any(c.isalpha() for c in w)]
        found = [w for w in found if w in text]
        old = found[pick % len(found)]
        new = next(r for r in REPLACEMENTS[lang][pick % 3 :] if r != old)
        at = text.index(old)
        text = text[:at] + new + text[at + len(old) :]
    return text


@PROPS
@given(lang=st.sampled_from(LANGS), i=st.integers(0, 9), pick=st.integers(0, 10_000))
def test_a_one_word_change_is_a_near_duplicate_in_every_language(
    lang: str, i: int, pick: int
) -> None:
    question, answer = PAIRS[lang][i][0], long_answer(lang, i)
    changed = change_words(answer, lang, [pick])
    assert changed != answer
    first, second = (
        example(chat(question, answer), "user:a"),
        example(chat(question, changed), "user:b"),
    )
    cur = curator()
    assert cur.deduplicate([], [first, second]) == [first]
    assert cur.dropped == {"near_duplicate": 1}


def test_thai_is_compared_by_its_words() -> None:
    """Thai separates phrases, not words: one changed word differs in a few words of
    the comparison, not in a whole phrase."""
    answer = PAIRS["th"][0][1]
    changed = answer.replace("อีเมล", "โทรศัพท์", 1)
    before, after = _shingle_hashes(answer), _shingle_hashes(changed)
    assert len(set(before) - set(after)) <= 3


@PROPS
@given(i=st.integers(0, 9), forms=st.lists(st.sampled_from(["NFC", "NFD"]), min_size=2, max_size=2))
def test_vietnamese_typed_either_way_is_one_text(i: int, forms: list[str]) -> None:
    question, answer = PAIRS["vi"][i]
    typed = [
        example(chat(unicodedata.normalize(f, question), unicodedata.normalize(g, answer)), "u")
        for f, g in (forms, forms[::-1])
    ]
    cur = curator()
    cleaned = cur.clean(typed)
    assert [ex.line for ex in cleaned] == [chat(question, answer)] * 2  # written in NFC
    assert cleaned[0].key == cleaned[1].key
    assert cur.deduplicate([], cleaned) == cleaned[:1]
    assert cur.dropped == {"duplicate": 1}


def test_vietnamese_without_its_diacritics_is_other_text() -> None:
    question, answer = PAIRS["vi"][1]
    bare = "".join(
        c for c in unicodedata.normalize("NFD", answer) if not unicodedata.combining(c)
    ).replace("đ", "d")
    assert bare != answer
    cur = curator()
    both = cur.clean([example(chat(question, answer), "u"), example(chat(question, bare), "u")])
    assert both[1].line["messages"][1]["content"] == bare
    assert both[0].key != both[1].key


@PROPS
@given(length=st.integers(50, 600), seed=st.integers(0, 1000), lang=st.sampled_from(LANGS))
def test_a_shared_system_prompt_never_makes_distinct_examples_duplicates(
    length: int, seed: int, lang: str
) -> None:
    vocabulary = sorted({w for _, a in PAIRS["en"] for w in a.split()})
    system = " ".join(random.Random(seed).choices(vocabulary, k=length))
    short = [  # a question and the first sentence of its answer: little of their own
        example(chat(q, a.split(". ")[0], system), f"user:{n}")
        for n, (q, a) in enumerate(PAIRS[lang])
    ]
    cur = curator()
    assert cur.deduplicate([], short) == short


@PROPS
@given(order=st.permutations(range(30)), cut=st.integers(0, 30))
def test_distinct_examples_are_not_dropped(order: list[int], cut: int) -> None:
    everything = [
        example(chat(q, long_answer(lang, i)), f"user:{lang}{i}")
        for lang in LANGS
        for i, (q, _) in enumerate(PAIRS[lang])
    ]
    shuffled = [everything[n] for n in order]
    cur = curator()
    kept, new = cur.clean(shuffled[:cut]), cur.clean(shuffled[cut:])
    assert cur.deduplicate(kept, new) == new


def near_identical_pairs(lang: str, n: int, seed: int) -> list[tuple[Example, Example]]:
    """``n`` answers, each sent by two users, the second with three words changed (most
    are similar enough to share a split, not enough to be dropped)."""
    rng = random.Random(seed)
    # sentences (Thai: phrases) of the answers, about 60 words of them to an answer
    phrases = [p for _, a in PAIRS[lang] for p in a.split(". " if lang != "th" else " ")]
    count = 6 if lang == "th" else 3
    out = []
    for k in range(n):
        question = rng.choice(PAIRS[lang])[0]
        answer = " ".join(rng.sample(phrases, count)) + f" {k}"
        other = change_words(answer, lang, [rng.randrange(10_000) for _ in range(3)])
        out.append(
            (
                example(chat(question, answer), f"user:a{k}"),
                example(chat(question, other), f"user:b{k}"),
            )
        )
    return out


def similarity(a: Example, b: Example) -> float:
    return float((signature_of(near_text(a.line)) == signature_of(near_text(b.line))).mean())


@settings(PROPS, max_examples=6)
@given(lang=st.sampled_from(LANGS), seed=st.integers(0, 1000))
def test_near_identical_examples_of_two_users_share_a_split(lang: str, seed: int) -> None:
    twins = near_identical_pairs(lang, 40, seed)
    cfg = RetrainConfig()
    cur = curator()
    new = [ex for pair in twins for ex in pair]
    kept = {id(ex) for ex in cur.deduplicate([], new)}
    assign_splits([], new, cfg, cur.links)
    near = [
        (a, b)
        for a, b in twins
        if id(a) in kept and id(b) in kept and similarity(a, b) >= cfg.split_together
    ]
    assert len(near) >= 10  # (enough pairs that, split at random, some would straddle)
    assert all(a.split == b.split for a, b in near)


def test_a_near_copy_of_a_placed_example_joins_its_split() -> None:
    """A later version's near copy, from a new user, goes where the original went: the
    original's group keeps its split, and the copy is not trained on if it is held out."""
    cfg = RetrainConfig()
    twins = near_identical_pairs("th", 60, 7)
    first = [a for a, _ in twins]
    cur = curator()
    first = cur.deduplicate([], cur.clean(first))
    assign_splits([], first, cfg, cur.links)
    assert {ex.split for ex in first} == {"train", "validation", "test"}
    cur = curator()
    later = cur.deduplicate(first, cur.clean([b for _, b in twins]))
    assign_splits(first, later, cfg, cur.links)
    originals = {b.group: a for a, b in twins}
    joined = [ex for ex in later if similarity(ex, originals[ex.group]) >= cfg.split_together]
    assert len(joined) >= 10
    assert all(ex.split == originals[ex.group].split for ex in joined)
