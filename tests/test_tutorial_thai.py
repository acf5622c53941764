"""The Thai tutorial (docs/thai-vietnamese.md), exactly as written, on ``gateway up`` with
no config file: the README's tutorial in Thai, run and adapted the same way (see
``tests/test_tutorial.py``). The gate must pass on the two held-out Thai examples, and the
canary must answer the questions it was trained on with their Thai corrections, word
for word, where the base model does not.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from .tutorial_stack import quick_start

PAGE = Path(__file__).resolve().parents[1] / "docs" / "thai-vietnamese.md"
ANSWER = re.compile(r"^(\S+) (\S+): (.*)$", re.M)


def correction(item: str) -> str:
    return f"ได้ค่ะ คืน{item}ได้ภายใน 30 วันพร้อมใบเสร็จค่ะ"


@pytest.mark.vllm
@pytest.mark.xdist_group("quick-start-ports")  # both tutorials serve on 8000 and 8001
@pytest.mark.timeout(1200)
def test_the_thai_tutorial_turns_the_flywheel_on_the_quick_start_stack(tmp_path: Path) -> None:
    with quick_start(PAGE, tmp_path, PYTHONIOENCODING="utf-8") as tutorial:
        rated = tutorial.step("rate", 0)
        assert rated.count("rated down, corrected") == 16
        items = [line.split(":")[0] for line in rated.splitlines()]
        canary, trained = tutorial.trained_canary()

        printed = tutorial.step("answers", 2, CANARY=canary)
        answers = {(i, arm): ast.literal_eval(text) for i, arm, text in ANSWER.findall(printed)}
        assert set(answers) == {(i, arm) for i in items for arm in ("base", canary)}, printed
        right = [i for i in items if answers[i, canary] == correction(i)]
        # Thirteen ratings are trained on; one validates the training, two test the candidate.
        assert len(right) >= 13, printed
        assert not [i for i in items if answers[i, "base"] == correction(i)]

        tutorial.promoted(canary)
        times = {k: round(v, 1) for k, v in tutorial.times.items()}
        print("thai tutorial timings (s):", times)
        print(trained)
        print(printed)
