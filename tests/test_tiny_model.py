"""The tiny model's build: deterministic, and a tokenizer that reads English, Thai and
Vietnamese at a sensible cost (sentences that are not in its training corpus)."""

from __future__ import annotations

import unicodedata
from pathlib import Path

from flywheel_stack.tiny_model import CORPUS, build_tiny_model

UNSEEN = {
    "en": "My parcel was delivered to the wrong address, what should I do now?",
    "th": "พัสดุของฉันถูกส่งไปผิดที่อยู่ ต้องทำอย่างไรดีคะ",
    "vi": "Bưu kiện của tôi bị giao nhầm địa chỉ, tôi phải làm gì bây giờ?",
}


def test_the_same_seed_builds_byte_identical_files(tmp_path: Path) -> None:
    a, b = build_tiny_model(tmp_path / "a"), build_tiny_model(tmp_path / "b")
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    assert all((a / n).read_bytes() == (b / n).read_bytes() for n in names)
    assert sum((a / n).stat().st_size for n in names) < 3_000_000


def test_thai_and_vietnamese_cost_about_what_english_costs(tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    assert all(unicodedata.is_normalized("NFC", line) for line in CORPUS)
    for lang, text in UNSEEN.items():
        assert text not in CORPUS
        ids = tok(text)["input_ids"]
        assert tok.decode(ids) == text
        assert len(ids) / len(text) <= 0.65, (lang, len(ids), len(text))
    # NFD (Vietnamese as some keyboards send it) still round-trips, byte by byte.
    nfd = unicodedata.normalize("NFD", UNSEEN["vi"])
    assert tok.decode(tok(nfd)["input_ids"]) == nfd
