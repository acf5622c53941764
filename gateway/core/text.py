"""Text as Flywheel compares it: Unicode NFC, words from a segmenter where the script
writes no spaces, and a language guess.

Every place that keys, compares or counts text goes through here — the evaluation
gate's metrics, near-duplicate detection and its shingles, the dataset's content keys,
the language guardrail — so that English, Thai and Vietnamese are read the same way:

* :func:`nfc` — one Unicode form. Vietnamese arrives in NFC and in NFD (a base letter
  followed by combining marks); both become NFC, diacritics kept. Text without
  diacritics stays different text.
* :func:`fold` — NFC, then case-folded: what "the same text" means for keys and matches.
* :func:`words` — the text's words, folded. Runs of Thai script go through a dictionary
  segmenter (nlpO3, the Rust engine of PyThaiNLP, with PyThaiNLP's word list; PyThaiNLP's
  own ``newmm`` where nlpO3 is missing); Lao, Khmer, Myanmar and CJK runs, which have no
  segmenter here, count one character as one word; every other script splits on
  whitespace and punctuation. Vietnamese syllables are words (compounds are not joined:
  a metric over syllables is what the gate needs). Punctuation marks are words of their
  own, so "days." and "days" share the word "days".
* :func:`language` — an ISO 639-1 code (``"th"``, ``"vi"``, ``"en"``, …) or None when
  the text is too short or too mixed to tell (Lingua, restricted to :data:`LANGUAGES`).

Importing this module loads nothing: the segmenter's dictionary and the language
models load on first use, once per process.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Callable
from typing import Any

import regex

# Scripts written without spaces between words. Thai has a segmenter; the others are
# cut into characters (a word per character), which keeps them comparable at all.
_NO_SPACE = r"\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}\p{Han}\p{Hiragana}\p{Katakana}"
_LETTER = rf"[[\p{{L}}\p{{M}}\p{{N}}_]--[{_NO_SPACE}]]"  # of a script with spaces
# One token: a Thai run (segmented afterwards), a character of another script without
# spaces, a word (letters, marks, digits and joiners of scripts with spaces: "30วัน" is
# the word "30" and a Thai run), or one punctuation mark.
_TOKEN = regex.compile(
    r"\p{Thai}+|[\p{Lao}\p{Khmer}\p{Myanmar}\p{Han}\p{Hiragana}\p{Katakana}]"
    rf"|{_LETTER}+(?:['’]{_LETTER}+)*|[^\s\p{{L}}\p{{M}}\p{{N}}_]",
    regex.V1,
)
_THAI = regex.compile(r"\p{Thai}")
# The same tokens for folded ASCII text (Unicode's White_Space in ASCII is these six).
# Tokens are found in one C call (findall), not a Python step per token (7× slower).
_ASCII_TOKEN = re.compile(r"[a-z0-9_]+(?:'[a-z0-9_]+)*|[^ \t\n\v\f\ra-z0-9_]")

# The languages :func:`language` chooses among, by ISO 639-1 code, with their English
# names (Lingua's, in capitals). Flywheel's users write these; a text in another
# language is guessed as the nearest of them or not at all.
LANGUAGES = {
    "en": "English",
    "th": "Thai",
    "vi": "Vietnamese",
    "zh": "Chinese",
    "ja": "Japanese",
    "ko": "Korean",
    "id": "Indonesian",
    "ms": "Malay",
}


def nfc(text: str) -> str:
    """``text`` in Unicode NFC (returned as it is when it already is, which is cheap)."""
    if text.isascii() or unicodedata.is_normalized("NFC", text):
        return text
    return unicodedata.normalize("NFC", text)


def fold(text: str) -> str:
    """NFC and case-folded: equal folds are the same text to a key or a match."""
    return nfc(text).casefold()


def words(text: str) -> list[str]:
    """The folded words of ``text`` in order (see the module docstring)."""
    folded = fold(text)
    if folded.isascii():
        found: list[str] = _ASCII_TOKEN.findall(folded)
        return found
    tokens: list[str] = _TOKEN.findall(folded)
    if _THAI.search(folded) is None:
        return tokens
    out: list[str] = []
    segment = _thai_segmenter()
    for token in tokens:
        if _THAI.match(token) is not None:
            out.extend(segment(token))
        else:
            out.append(token)
    return out


@functools.cache
def _thai_segmenter() -> Callable[[str], list[str]]:
    """A function from a run of Thai script to its words: nlpO3 with PyThaiNLP's word
    list (about 20 µs for a sentence), else PyThaiNLP's newmm (about 8× slower)."""
    from importlib.resources import files

    dictionary = files("pythainlp") / "corpus" / "words_th.txt"
    try:
        import nlpo3
    except ImportError:  # pragma: no cover - nlpo3 is a dependency; newmm is the fallback
        from pythainlp.tokenize import word_tokenize

        return lambda run: word_tokenize(run, engine="newmm", keep_whitespace=False)
    nlpo3.load_dict(str(dictionary), "flywheel-th")
    segment = nlpo3.segment
    return lambda run: segment(run, "flywheel-th")


def language(text: str) -> str | None:
    """The ISO 639-1 code of the language ``text`` is written in, or None when it cannot
    be told (too short, only digits and marks, or no language clearly ahead)."""
    letters = sum(ch.isalpha() for ch in text[:400])
    if letters < 2:
        return None
    detector = _detector()
    found: Any = detector.detect_language_of(nfc(text))
    return None if found is None else str(found.iso_code_639_1.name).lower()


@functools.cache
def _detector() -> Any:
    from lingua import Language, LanguageDetectorBuilder

    chosen = [getattr(Language, name.upper()) for name in LANGUAGES.values()]
    return (
        LanguageDetectorBuilder.from_languages(*chosen).with_minimum_relative_distance(0.1).build()
    )


def same_language(question: str, answer: str) -> bool | None:
    """Whether ``answer`` is in the language of ``question`` (None: either cannot be
    told, so the pair says nothing)."""
    asked, answered = language(question), language(answer)
    if asked is None or answered is None:
        return None
    return asked == answered
