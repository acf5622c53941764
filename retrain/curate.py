"""Curation: clean, check, count and de-duplicate training examples.

An :class:`Example` is one training line in OpenAI's format — supervised
(``{"messages": [...]}``) or a preference pair (``{"input": {"messages": [...]},
"preferred_output": [...], "non_preferred_output": [...]}``) — plus what the builder
needs to place it: where it came from, its tags, the group (user or conversation) that
keeps related examples in one split, and the feedback events behind it.

Every check that drops an example names a reason; :class:`Curator` counts them.
"""

from __future__ import annotations

import functools
import hashlib
import re
import unicodedata
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from gateway.core.redact import redact
from gateway.core.text import fold, nfc, words

from .tokens import TokenCounter as TokenCounter  # counts an example's tokens

SFT, DPO = "sft", "dpo"
NUM_PERM = 128  # MinHash permutations: the similarity estimate's error is about 1/sqrt(128)

# What OpenAI's data-validation recipe accepts in a chat fine-tuning line.
ROLES = frozenset({"system", "user", "assistant", "tool", "function"})
MESSAGE_KEYS = frozenset(
    {"role", "content", "name", "function_call", "tool_calls", "tool_call_id", "weight"}
)

_SPACES = re.compile(r"[ \t\f\v]+")
_BLANK_LINES = re.compile(r"\n{3,}")
_ODD_SPACE = re.compile(r"[^\S \n]")  # whitespace other than a space or a newline


@dataclass
class Example:
    kind: str  # SFT or DPO
    line: dict[str, Any]  # the JSONL line, in OpenAI's format
    source: str  # correction, served, teacher, review, pair
    group: str  # user or conversation: never split across train and test
    tags: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)  # feedback stream ids behind it
    response_id: str | None = None
    tokens: int = 0
    split: str | None = None
    _key: tuple[dict[str, Any], str] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    @property
    def key(self) -> str:
        """Content hash of the normalised line: equal keys are exact duplicates. Computed
        once for each line (curation replaces a line, never changes one in place)."""
        if self._key is None or self._key[0] is not self.line:
            self._key = (self.line, content_key(self.line))
        return self._key[1]

    def to_row(self) -> dict[str, Any]:
        """The line plus the builder's metadata (how versions carry examples forward)."""
        return {
            "line": self.line,
            "kind": self.kind,
            "source": self.source,
            "group": self.group,
            "tags": self.tags,
            "events": self.events,
            "response_id": self.response_id,
            "tokens": self.tokens,
            "split": self.split,
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Example:
        return cls(**row)


def content_key(line: dict[str, Any]) -> str:
    """A hash of the line with its strings folded (NFC, case-folded: Vietnamese typed
    with combining marks is the same text as with precomposed letters) and their
    whitespace made single spaces: equal keys are exact duplicates."""
    return hashlib.sha256(orjson.dumps(_folded(line))).hexdigest()[:24]


def near_text(line: dict[str, Any]) -> str:
    """The text for near-duplicate detection (:func:`near_texts`, joined)."""
    return " ".join(near_texts(line))


def near_texts(line: dict[str, Any]) -> list[str]:
    """The strings compared for near-duplicate detection: all of the line's but its
    system messages, and a later turn of a conversation (earlier answers at weight 0)
    from its last question on.

    An app sends one system prompt with every request: hundreds of shared words would
    make distinct questions and answers look like copies of each other. A shared history
    would make every turn look like a copy of the one before.
    """
    messages = line.get("messages")
    if isinstance(messages, list):
        if any(m.get("weight") == 0 for m in messages if isinstance(m, dict)):
            users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
            return _texts(_unprompted(messages[users[-1] if users else 0 :]))
        line = {**line, "messages": _unprompted(messages)}
    inp = line.get("input")
    if isinstance(inp, dict) and isinstance(inp.get("messages"), list):
        line = {**line, "input": {**inp, "messages": _unprompted(inp["messages"])}}
    return _texts(line)


def _unprompted(messages: list[Any]) -> list[Any]:
    return [m for m in messages if not (isinstance(m, dict) and m.get("role") == "system")]


def signature_of(text: str | list[str]) -> Any:
    """The MinHash signature of the text's 3-word shingles (a numpy array)."""
    return _signature(_shingle_hashes(text))


def _signature(hashes: list[int]) -> Any:
    minhash = _minhash()
    minhash.clear()
    minhash.update_batch(hashes)
    return minhash.hashvalues


@functools.cache
def _minhash() -> Any:
    """One MinHash per process, cleared for each text: making one is most of the cost for
    a short text. The shingles arrive hashed, so its own hash function is the identity."""
    from datasketch import MinHash

    return MinHash(num_perm=NUM_PERM, hashfunc=int)


def _texts(value: Any, out: list[str] | None = None) -> list[str]:
    """Every string in ``value``, depth first, appended to ``out``."""
    out = [] if out is None else out
    if isinstance(value, str):
        out.append(value)
    elif isinstance(value, dict | list):
        for v in value.values() if isinstance(value, dict) else value:
            if isinstance(v, str):
                out.append(v)
            else:
                _texts(v, out)
    return out


def _folded(value: Any) -> Any:
    """The value with every string folded (:func:`gateway.core.text.fold`) and its whitespace
    runs made one space, dict keys sorted. (Strings are folded where they are met, not in
    a call of their own: a line holds a few dozen of them, and this runs for every
    example of every build.)"""
    if isinstance(value, dict):
        return {
            k: " ".join(_fold(v).split()) if type(v) is str else _folded(v)
            for k, v in sorted(value.items())
        }
    if isinstance(value, list):
        return [" ".join(_fold(v).split()) if type(v) is str else _folded(v) for v in value]
    if isinstance(value, str):
        return " ".join(_fold(value).split())
    return value


def _fold(text: str) -> str:
    """:func:`gateway.core.text.fold`, with ASCII text (most of it) lower-cased in place."""
    return text.lower() if text.isascii() else fold(text)


def normalise_text(text: str) -> str:
    """NFC (one form for the same letters: Vietnamese arrives both ways; diacritics are
    kept), Unix newlines, no trailing spaces, single spaces, at most one blank line."""
    if _is_normal(text):  # most text already is: a few scans instead of a rewrite
        return text
    text = nfc(text).replace("\r\n", "\n").replace("\r", "\n")
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


def _is_normal(text: str) -> bool:
    """Whether normalise_text would return ``text`` as it is."""
    if text[:1].isspace() or text[-1:].isspace() or "  " in text:
        return False
    if "\n" in text and (" \n" in text or "\n " in text or "\n\n\n" in text):
        return False
    if text.isascii():  # (scans for single characters are quicker than one for a class)
        return not any(c in text for c in "\r\t\f\v\x1c\x1d\x1e\x1f")
    # e.g. a no-break space at the end of a line, or a letter and its combining marks
    return _ODD_SPACE.search(text) is None and unicodedata.is_normalized("NFC", text)


def map_strings(value: Any, fn: Callable[[str], str]) -> Any:
    """Apply ``fn`` to every message content string of a line."""
    if isinstance(value, dict):
        return {
            k: (fn(v) if k == "content" else v) if isinstance(v, str) else map_strings(v, fn)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [v if isinstance(v, str) else map_strings(v, fn) for v in value]
    return value


def format_errors(line: Any) -> list[str]:
    """The problems OpenAI's data-validation recipe reports for one line (empty: valid)."""
    if not isinstance(line, dict):
        return ["data_type"]
    if "input" in line:  # a preference pair
        inp = line.get("input")
        errors = _message_errors(inp.get("messages") if isinstance(inp, dict) else None)
        errors = [e for e in errors if e != "example_missing_assistant_message"]
        for name in ("preferred_output", "non_preferred_output"):
            out = line.get(name)
            if (
                not isinstance(out, list)
                or len(out) != 1
                or not isinstance(out[0], dict)
                or out[0].get("role") != "assistant"
                or not isinstance(out[0].get("content"), str)
                or not out[0]["content"]
            ):
                errors.append(f"invalid_{name}")
        return errors
    return _message_errors(line.get("messages"))


def _message_errors(messages: Any) -> list[str]:
    if not isinstance(messages, list) or not messages:
        return ["missing_messages_list"]
    errors: list[str] = []
    for m in messages:
        if not isinstance(m, dict):
            errors.append("data_type")
            continue
        if "role" not in m or "content" not in m:
            errors.append("message_missing_key")
        if set(m) - MESSAGE_KEYS:
            errors.append("message_unrecognized_key")
        if m.get("role") not in ROLES:
            errors.append("unrecognized_role")
        content = m.get("content")
        parts_ok = isinstance(content, list) and m.get("role") == "user" and bool(content)
        if (content is None and not m.get("tool_calls") and not m.get("function_call")) or (
            content is not None and not isinstance(content, str) and not parts_ok
        ):
            errors.append("missing_content")
        if "weight" in m and (m.get("role") != "assistant" or m["weight"] not in (0, 1)):
            errors.append("invalid_weight")
    if not any(isinstance(m, dict) and m.get("role") == "assistant" for m in messages):
        errors.append("example_missing_assistant_message")
    return sorted(set(errors))


@dataclass
class Curator:
    """Runs the checks in order; what survives is unique, valid and within limits."""

    count_tokens: Callable[[Example], int]
    max_tokens: int
    near_duplicate: float
    redact: bool = False
    # Examples at least this similar share a split, whoever wrote them (see ``links``).
    split_together: float = 0.7
    dropped: Counter[str] = field(default_factory=Counter)
    # Pairs (a new example kept, a kept or new example) at least ``split_together``
    # similar: the builder puts their groups in one split (``dataset.assign_splits``).
    links: list[tuple[Example, Example]] = field(default_factory=list)

    @property
    def candidate_threshold(self) -> float:
        """The similarity the band index is tuned to propose candidates from: below both
        thresholds, as LSH misses some pairs near its own."""
        return max(0.5, min(self.near_duplicate, self.split_together + 0.15) - 0.25)

    def clean(self, examples: list[Example]) -> list[Example]:
        out = []
        for ex in examples:
            fn = (lambda t: redact(normalise_text(t))) if self.redact else normalise_text
            ex.line = map_strings(ex.line, fn)
            errors = format_errors(ex.line)
            if errors:
                self.dropped[f"format:{errors[0]}"] += 1
                continue
            ex.tokens = self.count_tokens(ex)
            if ex.tokens > self.max_tokens:
                self.dropped["too_long"] += 1
                continue
            out.append(ex)
        return out

    def deduplicate(self, kept: list[Example], new: list[Example]) -> list[Example]:
        """``new`` without exact or near duplicates of each other or of ``kept``.

        Supervised examples and preference pairs are compared only with their own kind: a
        pair holds its supervised sibling's text and more, yet is not a copy of it.
        """
        cache: dict[str, Any] = {}  # a string's word hashes: a pair shares its sibling's
        survivors = {
            id(ex)
            for kind in (SFT, DPO)
            for ex in self._deduplicate(
                [e for e in kept if e.kind == kind], [e for e in new if e.kind == kind], cache
            )
        }
        return [ex for ex in new if id(ex) in survivors]

    def _deduplicate(
        self, kept: list[Example], new: list[Example], cache: dict[str, Any]
    ) -> list[Example]:
        from datasketch import MinHashLSH

        if not new:
            return []

        seen = {ex.key for ex in kept}
        # LSH only proposes candidates, and misses some near its threshold: propose
        # generously (a lower threshold, false negatives weighted 9 to 1), then let the
        # estimated similarity decide. datasketch chooses the bands for that threshold.
        lsh = MinHashLSH(threshold=self.candidate_threshold, num_perm=NUM_PERM, weights=(0.1, 0.9))
        # (signed one example at a time: all the shingles at once take gigabytes)
        both = kept + new
        signatures = np.empty((len(both), NUM_PERM), dtype=np.uint64)
        for i, ex in enumerate(both):
            signatures[i] = _signature(_shingles(_text_word_hashes(near_texts(ex.line), cache)))
        index = _BandIndex(signatures, lsh.b, lsh.r)
        for i in range(len(kept)):
            index.add(i)
        out = []
        for i, ex in enumerate(new, start=len(kept)):
            if ex.key in seen:
                self.dropped["duplicate"] += 1
                continue
            # LSH gives candidates; the estimated similarity decides.
            rows, similarity = index.similar(i)
            if similarity.size:
                if similarity.max() >= self.near_duplicate:
                    self.dropped["near_duplicate"] += 1
                    continue
                self.links += [(ex, both[r]) for r in rows[similarity >= self.split_together]]
            seen.add(ex.key)
            index.add(i)
            out.append(ex)
        return out

    def cap_tags(self, kept: list[Example], new: list[Example], share: float) -> list[Example]:
        """At most ``share`` of all examples (and at least one) per first tag.

        With a single tag there is no other topic to protect: nothing is capped.
        """
        tags = {ex.tags[0] for ex in kept + new if ex.tags}
        if len(tags) < 2:
            return new
        total = len(kept) + len(new)
        cap = max(1, int(share * total))
        per_tag = Counter(ex.tags[0] for ex in kept if ex.tags)
        out = []
        for ex in new:
            if ex.tags:
                if per_tag[ex.tags[0]] >= cap:
                    self.dropped["tag_cap"] += 1
                    continue
                per_tag[ex.tags[0]] += 1
            out.append(ex)
        return out


def _shingle_hashes(text: str | list[str], n: int = 3) -> list[int]:
    """32-bit hashes of the ``n``-word shingles of a text (or of strings one after the
    other), over its words as :func:`gateway.core.text.words` reads them: folded, Thai
    segmented, punctuation apart. Splitting on spaces made a Thai paragraph one "word",
    so a one-word change shared no shingle at all."""
    return _shingles(_text_word_hashes([text] if isinstance(text, str) else text, {}), n)


def _word_hashes(text: str) -> Any:
    """The CRC-32 of each word of the text (a numpy array).

    Each word is hashed once (in C) and a shingle's hash is a polynomial of its words'
    hashes, computed for all shingles at once (:func:`_shingles`): a Python-level hash
    call per shingle (datasketch's SHA-1 default) was most of a large build's
    near-duplicate detection. MinHash's random permutations are applied on top, so a
    simple hash is enough here.
    """
    found = words(text)
    # (encoded all at once, each word's bytes split back out: no Python call per word;
    # a word never holds a newline)
    encoded = "\n".join(found).encode().split(b"\n") if found else []
    return np.fromiter(map(zlib.crc32, encoded), dtype=np.uint64, count=len(found))


def _text_word_hashes(texts: list[str], cache: dict[str, Any]) -> list[Any]:
    """The word hashes of strings one after another (arrays, to concatenate).

    Consecutive ASCII strings are read as one (a space between them: the same words)
    and hashed in one call. Other text is remembered in ``cache``: segmenting Thai costs
    ten times splitting English, and a preference pair repeats its sibling's texts.
    """
    parts, plain = [], []
    for text in texts:
        if text.isascii():
            plain.append(text)
            continue
        if plain:
            parts.append(_word_hashes(" ".join(plain)))
            plain = []
        found = cache.get(text)
        if found is None:
            found = cache[text] = _word_hashes(text)
        parts.append(found)
    if plain:
        parts.append(_word_hashes(" ".join(plain)))
    return parts


def _shingles(parts: list[Any], n: int = 3) -> list[int]:
    """The shingle hashes of word hashes (arrays, one text after another)."""
    w = parts[0] if len(parts) == 1 else np.concatenate(parts) if parts else np.zeros(0, np.uint64)
    n = max(1, min(n, len(w)))  # a text of fewer words is one shingle of them all
    count = max(1, len(w) - n + 1)
    h = np.zeros(count, dtype=np.uint64)
    for k in range(n):  # h = w[i]·P^(n-1) + … + w[i+n-1] (mod 2^64), then 32 bits of it
        h = h * np.uint64(_SHINGLE_PRIME) + w[k : count + k]
    hashes: list[int] = ((h ^ (h >> np.uint64(32))) & np.uint64(0xFFFFFFFF)).tolist()
    return hashes


_SHINGLE_PRIME = 1_000_003
_NONE = (np.zeros(0, dtype=np.int64), np.zeros(0))  # no candidates


class _BandIndex:
    """Locality-sensitive hashing over MinHash signatures (one per example, the rows of
    ``signatures``; an example is known by its row number).

    A signature is cut into ``bands`` bands of ``rows`` values (datasketch's b and r);
    signatures that agree on a whole band are candidates, and their estimated Jaccard
    similarity (the share of equal values, as ``MinHash.jaccard``) decides. This is the
    banding of datasketch's ``MinHashLSH`` with the work done in bulk: every band's key is
    computed at once, and only keys that more than one signature has are ever kept in a
    table. In a build of 100,000 mostly distinct examples almost none are, and an
    example's check is then one look at a boolean.
    """

    def __init__(self, signatures: Any, bands: int, rows: int) -> None:
        self.signatures = signatures
        n = len(signatures)
        # A band's key: its values weighted and summed (mod 2^64), the weights odd and
        # different for each band. Signatures with the same key almost always agree on the
        # band; where two that do not agree collide, that is one more candidate to compare.
        weights = np.random.RandomState(NUM_PERM).randint(
            1, 2**62, size=(bands, rows), dtype=np.uint64
        ) * np.uint64(2) + np.uint64(1)
        cut = signatures[:, : bands * rows].reshape(n, bands, rows)
        with np.errstate(over="ignore"):
            self.keys = (cut * weights).sum(axis=2, dtype=np.uint64)
        _, inverse, counts = np.unique(self.keys, return_inverse=True, return_counts=True)
        self.shared = counts[inverse.reshape(n, bands)] > 1  # a flag per example and band
        any_shared: Any = self.shared.any(axis=1)
        self.any_shared: list[bool] = any_shared.tolist()
        self.table: dict[int, list[int]] = {}

    def _keys(self, i: int) -> list[int]:
        keys: list[int] = self.keys[i][self.shared[i]].tolist()
        return keys

    def add(self, i: int) -> None:
        if self.any_shared[i]:
            for key in self._keys(i):
                self.table.setdefault(key, []).append(i)

    def similar(self, i: int) -> tuple[Any, Any]:
        """The candidates added before row ``i`` and their estimated similarity to it
        (two numpy arrays, empty when there are none)."""
        if not self.any_shared[i]:
            return _NONE
        candidates = {c for key in self._keys(i) if key in self.table for c in self.table[key]}
        if not candidates:
            return _NONE
        rows = np.array(sorted(candidates), dtype=np.int64)
        return rows, (self.signatures[rows] == self.signatures[i]).mean(axis=1)
