"""How Flywheel judges text in English, Thai and Vietnamese, side by side.

    python -m bench.languages

Prints one table, each Thai and Vietnamese cell beside its English one, measured with
the project's own functions (near-duplicate detection and the split have their own
bench: ``python -m bench.curate_languages``):

* the gate's metrics (chrF, the default, and ROUGE-L over segmented words) for one word
  changed, a Thai polite particle added and a Thai sentence with its one space removed,
  and for NFD against NFC text;
* the whole gate (:func:`retrain.evaluate.gate`, built-in settings, 10 examples) for a
  right candidate in other words than the reference against a wrong control, and the
  golden guard for a candidate that says 3 days where the reference says 30;
* token counts of a 177-character answer by o200k, cl100k and the tiny local model, and
  the gate's answer budget for it;
* redaction of a phone number written against Thai or Vietnamese letters.
"""

from __future__ import annotations

import tempfile
import unicodedata
from pathlib import Path
from typing import Any

from gateway.core.redact import redact
from retrain import evaluate
from retrain.config import Eval
from retrain.text_metrics import answer_budget, chrf, rouge_l
from tests.multilingual import ANSWERS
from tests.support_desk import RETURNS

LANGS = ("en", "th", "vi")
ONE_WORD = {  # a sentence and the same with one word changed (receipt → invoice)
    "en": (
        "Yes: shoes can be returned within 30 days with the receipt.",
        "Yes: shoes can be returned within 30 days with the invoice.",
    ),
    "th": (
        "ได้ค่ะ คุณสามารถคืนรองเท้าได้ภายใน 30 วันพร้อมใบเสร็จ",
        "ได้ค่ะ คุณสามารถคืนรองเท้าได้ภายใน 30 วันพร้อมใบกำกับภาษี",
    ),
    "vi": (
        "Vâng, bạn có thể trả lại giày trong vòng 30 ngày kèm hóa đơn.",
        "Vâng, bạn có thể trả lại giày trong vòng 30 ngày kèm biên lai.",
    ),
}
PHONES = {"en": "call me at 081-234-5678today", "th": "โทร081-234-5678ค่ะ", "vi": "gọi0912345678nhé"}


def _row(what: str, cells: dict[str, str]) -> str:
    return f"| {what} | " + " | ".join(cells.get(lang, "—") for lang in LANGS) + " |"


def metrics() -> list[str]:
    rows = []
    for name, fn in (("chrF", chrf), ("ROUGE-L", rouge_l)):
        cells = {lang: f"{fn(b, a):.3f}" for lang, (a, b) in ONE_WORD.items()}
        rows.append(_row(f"{name}, one word changed", cells))
    thai = ONE_WORD["th"][0]
    for name, fn in (("chrF", chrf), ("ROUGE-L", rouge_l)):
        added, joined = fn(thai + "ค่ะ", thai), fn(thai.replace(" ", ""), thai)
        rows.append(
            _row(
                f"{name}, particle ค่ะ added / the one space removed",
                {"th": f"{added:.3f} / {joined:.3f}"},
            )
        )
    vi = ONE_WORD["vi"][0]
    nfd = unicodedata.normalize("NFD", vi)
    rows.append(
        _row("NFD vs NFC: chrF / ROUGE-L", {"vi": f"{chrf(nfd, vi):.3f} / {rouge_l(nfd, vi):.3f}"})
    )
    return rows


def _gate(lang: str, control: int, candidate: int, golden: bool) -> dict[str, Any]:
    """The gate on the returns desk: answers by index into each item's answers."""
    desk = {q: answers for q, *answers in RETURNS[lang]}
    models = {"control": control, "candidate": candidate}

    def ask(model: str, messages: list[dict[str, Any]], max_tokens: int) -> str:
        return desk[str(messages[-1]["content"])][models[model]]

    cases = [evaluate.Case([{"role": "user", "content": q}], a[0]) for q, a in desk.items()]
    cfg = Eval(min_examples=len(cases))
    if golden:
        return evaluate.gate(None, cases, ask, "control", "candidate", cfg)
    return evaluate.gate(cases, None, ask, "control", "candidate", cfg)


def gate() -> list[str]:
    right, guard = {}, {}
    for lang in LANGS:
        ev = _gate(lang, control=1, candidate=2, golden=False)  # wrong vs right in other words
        right[lang] = f"gain {ev['test']['gain']['estimate']:+.3f}, {ev['outcome']}"
        ev = _gate(lang, control=2, candidate=3, golden=True)  # right vs a wrong fact
        guard[lang] = f"gain {ev['golden']['gain']['estimate']:+.3f}, {ev['outcome']}"
    return [
        _row("gate: a right candidate (in other words) against a wrong control", right),
        _row("golden guard: a wrong fact (3 days for 30) against a right control", guard),
    ]


def tokens() -> list[str]:
    from bpe_openai import get_encoding
    from tokenizers import Tokenizer

    from flywheel_stack.tiny_model import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        tiny = Tokenizer.from_file(str(build_tiny_model(Path(tmp) / "tiny") / "tokenizer.json"))
        counts = {}
        for lang in LANGS:
            text = ANSWERS[lang]
            o200k = len(get_encoding("o200k_base").encode(text))
            cl100k = len(get_encoding("cl100k_base").encode(text))
            local = len(tiny.encode(text).ids)
            budget = answer_budget(text, 1.5, 16, 512, count=lambda t: len(tiny.encode(t).ids))
            counts[lang] = f"{len(text)} chars: {o200k} / {cl100k} / {local}, budget {budget}"
    return [
        _row(
            "an answer: tokens by o200k / cl100k / the tiny model, the tiny model's budget", counts
        )
    ]


def redaction() -> list[str]:
    return [
        _row(
            "a phone number against letters, redacted",
            {lang: f"{text} → {redact(text)}" for lang, text in PHONES.items()},
        )
    ]


def main() -> None:
    print("| what | English | Thai | Vietnamese |")
    print("| --- | --- | --- | --- |")
    for row in metrics() + gate() + tokens() + redaction():
        print(row)


if __name__ == "__main__":
    main()
