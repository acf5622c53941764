"""Near-duplicate removal, no server: the builder's bulk band index keeps exactly what
datasketch's own ``MinHashLSH`` keeps, on text with many near copies."""

from __future__ import annotations

import random

import pytest
from datasketch import MinHash, MinHashLSH

from retrain.curate import (
    NUM_PERM,
    SFT,
    Curator,
    Example,
    TokenCounter,
    _shingle_hashes,
    near_text,
)

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
    lsh = MinHashLSH(threshold=max(0.5, threshold - 0.25), num_perm=NUM_PERM, weights=(0.1, 0.9))
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
