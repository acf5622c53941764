"""The README's tutorial, exactly as written, on ``gateway up`` with no config file.

The code blocks marked ``<!-- tutorial:python -->`` / ``<!-- tutorial:shell -->`` are
run in order, as a user would paste them, from a fresh directory (so ``./data`` is the
test's own). Two things are adapted, no more: ``.venv/bin/`` becomes this interpreter's
bin directory, and the one value a user copies from the output (the canary's name) is
filled in. Then Ctrl-C stops the stack, and no process it started may be left.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .tutorial_stack import README, quick_start


@pytest.mark.vllm
@pytest.mark.xdist_group("quick-start-ports")  # both tutorials serve on 8000 and 8001
@pytest.mark.timeout(1200)
def test_the_readme_tutorial_turns_the_flywheel_on_the_quick_start_stack(tmp_path: Path) -> None:
    with quick_start(README, tmp_path) as tutorial:
        rated = tutorial.step("rate", 0)
        assert rated.count("rated down, corrected") == 16
        canary, trained = tutorial.trained_canary()

        answers = tutorial.step("answers", 2, CANARY=canary)
        wanted = "Yes: shoes can be returned within 30 days with the receipt."
        assert f"{canary}: {wanted}\n" in answers, answers
        assert f"base: {wanted}\n" not in answers

        tutorial.promoted(canary)
        print("tutorial timings (s):", {k: round(v, 1) for k, v in tutorial.times.items()})
        print(trained)
        print(answers)
