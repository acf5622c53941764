"""The evaluation gate's statistics and scores, without a server: the paired bootstrap,
the Wilson interval, the text metrics, the answer budget, the judge's verdicts."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from scipy.stats import binomtest, t

from gateway.core.config import DEFAULT_CONFIG, ConfigError, build_settings
from retrain import evaluate
from retrain.config import Eval, RetrainSettings
from retrain.judge import judge_pair, parse, summarise
from retrain.text_metrics import answer_budget, exact, is_json, rouge_l, score
from retrain.uncertainty import paired_bootstrap, t_quantile, wilson


def test_the_bootstrap_interval_is_the_same_for_the_same_seed_and_moves_with_another() -> None:
    rng = random.Random(7)
    diffs = [rng.gauss(0.05, 0.3) for _ in range(60)]
    first = paired_bootstrap(diffs, samples=2000, seed=3, confidence=0.95)
    again = paired_bootstrap(diffs, samples=2000, seed=3, confidence=0.95)
    other = paired_bootstrap(diffs, samples=2000, seed=4, confidence=0.95)
    assert first == again
    assert (other.low, other.high) != (first.low, first.high)
    assert other.estimate == first.estimate  # the point estimate is the sample mean
    assert first.low < first.estimate < first.high


def test_a_consistent_gain_gives_an_interval_that_excludes_zero() -> None:
    rng = random.Random(1)
    diffs = [0.2 + rng.uniform(-0.1, 0.1) for _ in range(40)]
    ci = paired_bootstrap(diffs, samples=2000, seed=0, confidence=0.95)
    assert 0 < ci.low < ci.estimate < ci.high


def test_a_gain_made_of_noise_gives_an_interval_that_includes_zero() -> None:
    rng = random.Random(2)
    diffs = [rng.choice((-0.6, 0.6)) for _ in range(40)]  # mean near 0, large spread
    ci = paired_bootstrap(diffs, samples=2000, seed=0, confidence=0.95)
    assert ci.low < 0 < ci.high


def test_the_bootstrap_interval_widens_with_the_confidence_and_narrows_with_more_examples() -> None:
    rng = random.Random(5)
    diffs = [rng.gauss(0.1, 0.4) for _ in range(400)]
    narrow = paired_bootstrap(diffs, samples=2000, seed=0, confidence=0.8)
    wide = paired_bootstrap(diffs, samples=2000, seed=0, confidence=0.99)
    few = paired_bootstrap(diffs[:25], samples=2000, seed=0, confidence=0.95)
    many = paired_bootstrap(diffs, samples=2000, seed=0, confidence=0.95)
    assert wide.low < narrow.low and wide.high > narrow.high
    assert many.high - many.low < few.high - few.low


def test_small_samples_get_a_wider_interval_than_the_plain_percentile_one() -> None:
    diffs = [0.3, -0.1, 0.5, 0.0, 0.2, 0.4, -0.2, 0.1, 0.3, 0.0]
    ci = paired_bootstrap(diffs, samples=4000, seed=0, confidence=0.95)
    rng = random.Random(0)
    plain = sorted(sum(rng.choices(diffs, k=10)) / 10 for _ in range(4000))
    assert ci.low < plain[100] and ci.high > plain[3899]
    # ... by sqrt(n / (n - 1)) * t / z: about the t interval's width for n = 10
    assert ci.high - ci.low > plain[3899] - plain[100]


@pytest.mark.parametrize("df", [6, 9, 29, 200])
@pytest.mark.parametrize("p", [0.9, 0.975, 0.995])
def test_the_t_quantile_agrees_with_scipy(p: float, df: int) -> None:
    assert t_quantile(p, df) == pytest.approx(t.ppf(p, df), rel=3e-3)


@pytest.mark.parametrize(("successes", "n"), [(8, 10), (0, 12), (30, 30), (17, 41), (3, 200)])
def test_the_wilson_interval_agrees_with_scipy(successes: int, n: int) -> None:
    ours = wilson(successes, n, 0.95)
    theirs = binomtest(successes, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert ours.estimate == pytest.approx(successes / n)
    assert ours.low == pytest.approx(theirs.low, abs=1e-9)
    assert ours.high == pytest.approx(theirs.high, abs=1e-9)


def test_the_wilson_interval_of_no_examples_is_everything() -> None:
    ci = wilson(0, 0, 0.95)
    assert (ci.low, ci.high) == (0.0, 1.0)


def test_rouge_l_and_exact_match_score_words_in_order() -> None:
    assert rouge_l("the cat sat", "the cat sat") == 1.0
    assert rouge_l("sat the cat", "the cat sat") == pytest.approx(2 / 3)
    assert rouge_l("dog", "the cat sat") == 0.0
    assert exact("The  cat\nsat", "the cat sat") and not exact("the cat", "the cat sat")


def test_json_answers_are_checked_for_validity_and_compared_as_documents() -> None:
    expected = '{"status": "shipped", "days": 2}'
    assert is_json(expected) and not is_json("shipped") and not is_json('{"status": ')
    row = score('{"days":2,"status":"shipped"}', expected)
    assert row["exact"] is True and row["valid_json"] is True
    assert set(row) == {"chrf", "rouge_l", "exact", "valid_json"}
    assert score('{"status": "shipped"', expected)["valid_json"] is False
    assert "valid_json" not in score("anything", "plain text")
    assert is_json('```json\n{"a": 1}\n```')


def test_the_answer_budget_follows_the_expected_length_up_to_the_cap() -> None:
    short = answer_budget("Yes.", factor=1.5, slack=16, cap=512)
    sentence = "word " * 100
    long = answer_budget(sentence, factor=1.5, slack=16, cap=512)
    assert short < 64 < long  # the old fixed limit cut long answers and padded short ones
    assert long >= 1.5 * 100 + 16
    assert answer_budget(sentence * 20, factor=1.5, slack=16, cap=512) == 512


@pytest.mark.parametrize(
    ("reply", "verdict"),
    [
        ("A", "A"),
        ("b.", "B"),
        ("**TIE**", "TIE"),
        ("A\nbecause it is right", "A"),
        ("Answer A", "invalid"),
        ("", "invalid"),
    ],
)
def test_the_judges_reply_is_read_from_its_first_word(reply: str, verdict: str) -> None:
    assert parse(reply) == verdict


def test_both_orders_decide_the_verdict_and_a_position_bias_cancels_out() -> None:
    asked: list[str] = []

    def always_first(model: str, messages: list[dict[str, object]], max_tokens: int) -> str:
        asked.append(str(messages[-1]["content"]))
        return "A"

    got = judge_pair(
        always_first,
        "j",
        [{"role": "user", "content": "q"}],
        "ref",
        "CANDIDATE-ANSWER",
        "CONTROL-ANSWER",
        8,
        lang=None,
    )
    assert got == {"candidate_first": "candidate", "control_first": "control", "verdict": "tie"}
    first, second = asked
    assert first.index("CANDIDATE-ANSWER") < first.index("CONTROL-ANSWER")
    assert second.index("CONTROL-ANSWER") < second.index("CANDIDATE-ANSWER")

    summary = summarise([got] * 20, "j", "not-worse", 0.95)
    assert summary["inconsistent"] == 20 and summary["win_rate"]["estimate"] == 0.5
    assert summary["passed"]
    assert not summarise([got] * 20, "j", "better", 0.95)["passed"]


def test_missing_examples_counts_the_test_split_against_the_minimum(tmp_path: Path) -> None:
    cfg = Eval(min_examples=30)
    assert evaluate.missing_examples(tmp_path, cfg) == 30  # no test split at all
    line = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    (tmp_path / "test.jsonl").write_text((json.dumps(line) + "\n") * 12)
    assert evaluate.missing_examples(tmp_path, cfg) == 18
    (tmp_path / "manifest.json").write_text(json.dumps({"counts": {"train": 400, "test": 45}}))
    assert evaluate.missing_examples(tmp_path, cfg) == 0


def test_one_held_out_example_is_never_enough_to_judge_whatever_the_config_says() -> None:
    """One example's bootstrap interval has zero width (it is the example, every time):
    the gate needs two, so n = 1 is 'collect more' (exit 7), never a pass; the built-in
    config asks for two, and a config that asks for fewer is refused naming the key."""
    answers = {"control": "No.", "candidate": "Yes: shoes can be returned within 30 days."}
    one = [
        evaluate.Case([{"role": "user", "content": "Can I return shoes?"}], answers["candidate"])
    ]
    boot = paired_bootstrap([0.909], samples=500, seed=0, confidence=0.95)
    assert boot.low == boot.high  # why: [0.909, 0.909] would clear any margin
    ask_count = []

    def ask(model: str, messages: list[dict[str, object]], max_tokens: int) -> str:
        ask_count.append(model)
        return answers[model]

    builtin = build_settings(DEFAULT_CONFIG, schema=RetrainSettings).retrain.eval
    assert builtin.min_examples == 2
    result = evaluate.gate(one, None, ask, "control", "candidate", builtin)
    assert result["outcome"] == "collect-more" and not result["passed"]
    assert evaluate.OUTCOME_CODES[result["outcome"]] == 7 and result["missing"] == 1
    assert result["reason"].startswith("collect more: 1 held-out test examples, the gate needs")
    assert ask_count == []  # nothing was asked: no decision is taken on one example
    two = one + [
        evaluate.Case([{"role": "user", "content": "Can I return hats?"}], answers["candidate"])
    ]
    assert (
        evaluate.gate(two, None, ask, "control", "candidate", builtin)["outcome"] != "collect-more"
    )
    for low in (1, 0):
        with pytest.raises(ConfigError, match=r"retrain\.eval\.min_examples"):
            build_settings(
                {**DEFAULT_CONFIG, "retrain": {"eval": {"min_examples": low}}},
                schema=RetrainSettings,
            )


def test_a_golden_line_that_is_not_a_chat_example_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "golden.jsonl"
    good = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    path.write_text(json.dumps(good) + "\n" + json.dumps({"messages": [good["messages"][0]]}))
    with pytest.raises(ValueError, match=r"golden.jsonl:2: not a chat example"):
        evaluate.read_cases(path)


def test_a_golden_set_that_cannot_be_used_is_found_before_training(tmp_path: Path) -> None:
    assert evaluate.golden_problem(Eval()) is None  # none configured
    missing = evaluate.golden_problem(Eval(golden=tmp_path / "nope.jsonl"))
    assert missing is not None and missing.startswith("retrain.eval.golden:")
    assert "nope.jsonl" in missing
    (tmp_path / "empty.jsonl").write_text("\n")
    assert "no examples" in str(evaluate.golden_problem(Eval(golden=tmp_path / "empty.jsonl")))
    (tmp_path / "bad.jsonl").write_text("{}\n")
    assert "bad.jsonl:1" in str(evaluate.golden_problem(Eval(golden=tmp_path / "bad.jsonl")))


def test_the_old_eval_keys_still_work_and_both_spellings_are_refused() -> None:
    old = build_settings(
        {**DEFAULT_CONFIG, "retrain": {"eval_margin": 0.05, "eval_max_tokens": 64}},
        RetrainSettings,
    )
    assert old.retrain.eval.margin == 0.05 and old.retrain.eval.max_tokens == 64
    with pytest.raises(ConfigError, match=r"retrain\.eval_margin is retrain\.eval\.margin"):
        build_settings(
            {**DEFAULT_CONFIG, "retrain": {"eval_margin": 0.05, "eval": {"margin": 0.1}}},
            RetrainSettings,
        )
    with pytest.raises(ConfigError, match=r"retrain\.eval\.confidence"):
        build_settings(
            {**DEFAULT_CONFIG, "retrain": {"eval": {"confidence": 1.5}}}, RetrainSettings
        )


def test_every_eval_setting_is_described() -> None:
    missing = [name for name, field in Eval.model_fields.items() if not field.description]
    assert missing == []


def test_a_gain_interval_of_a_few_examples_stays_within_the_metrics_range() -> None:
    """Two examples and the t-widening make the raw interval wider than any gain can be:
    what is shown and compared stays within [-1, 1]."""
    ci = paired_bootstrap([0.9, 0.2], samples=2000, seed=0, confidence=0.95)
    assert -1.0 <= ci.low <= ci.estimate <= ci.high <= 1.0
    assert ci.high == 1.0  # clipped, not shifted: the estimate is the same
    assert ci.estimate == pytest.approx(0.55)
