"""The evaluation gate: is the candidate better than the control, and no worse anywhere
it must not be? (``retrain run``'s "evaluate" step, and ``retrain eval`` alone.)

Every example's conversation goes through the gateway to both models (by name,
temperature 0, ``max_tokens`` from the expected answer's tokens as the models count them, see
``text_metrics.answer_budget``) and each answer is scored against the expected answer:
chrF, ROUGE-L, exact match and, where the expected answer is JSON, whether the answer
is valid JSON (``text_metrics``: every score reads Thai and Vietnamese too). The
evidence, each source reported per example and in aggregate; the candidate passes only
when every configured source passes
(``retrain.eval``):

1. **test split** (the dataset's held-out ``test.jsonl``): the mean gain of the
   candidate's score (``metric``) over the control's, with a paired bootstrap interval
   (``uncertainty``); it passes when the interval's *lower bound* reaches ``margin``.
   With fewer than ``min_examples`` examples there is no decision: the outcome is
   ``collect-more`` (exit 7), with the number missing, and no model is asked anything.
2. **golden set** (``golden``, optional, OpenAI chat JSONL): a regression guard; the
   candidate's mean gain may not fall below ``-golden_tolerance``. The point estimate
   is compared (its interval is reported): a guard blocks a drop it sees, significant
   or not.
3. **LLM judge** (``judge``, optional): pairwise, both orders, on every example of both
   sources (``judge.py``); ``judge_rule`` ``not-worse`` needs the win rate's upper bound
   to reach 0.5, ``better`` its lower bound to exceed 0.5.

Where expected answers are JSON, a source also fails when the candidate's valid-JSON
rate trails the control's by more than ``json_tolerance``.

Language guardrail: per model, the share of answers written in the language of the
question (``gateway.core.text.language`` of the last user message and of the answer; an
example where either cannot be told does not count for that model). A source fails
when the candidate's share trails the control's by more than ``language_tolerance``: a
Thai fine-tune that starts answering in English is refused. Each row has its
``language`` (the question's and each answer's).

The result (:func:`gate`) is one JSON-serialisable dict, stored as the job's
``evaluation``: ``outcome`` (``passed``, ``rejected`` or ``collect-more``), ``passed``,
``reason``, ``rule`` (the combined rule in words), ``missing``, ``config``,
``tokenizer`` and ``tokens_exact`` (what counted the answer budgets), one summary
per source (``test``, ``golden``, ``judge``; None when not used) and ``rows`` (one per
example: source, prompt, expected, max_tokens, each model's answer and scores, the gain,
the judge's verdicts, and ``expected_tokens``: what the budget was counted on).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.core.documents import Evaluation
from gateway.core.text import language

from . import judge as judging
from . import tokens as tokenizers
from .config import Eval
from .errors import InvalidInput, UsageError
from .text_metrics import METRICS, answer_budget, score
from .uncertainty import Interval, paired_bootstrap

# Exit codes of ``retrain eval`` (``retrain run`` uses the same two for its gate).
PASSED, REJECTED, COLLECT_MORE = 0, 6, 7
OUTCOME_CODES = {"passed": PASSED, "rejected": REJECTED, "collect-more": COLLECT_MORE}

Ask = Callable[[str, list[dict[str, Any]], int], str]
METRIC_NAMES = {"chrf": "chrF", "rouge_l": "ROUGE-L", "exact": "exact match"}


@dataclass(frozen=True)
class Case:
    """One example: the conversation so far and the answer expected next."""

    messages: list[dict[str, Any]]
    expected: str


def read_cases(path: Path) -> list[Case]:
    """OpenAI chat-format JSONL: each line's last message is the expected answer."""
    cases = []
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidInput.unreadable(path, exc) from None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            messages = json.loads(line)["messages"]
            *conversation, answer = messages
            if answer["role"] != "assistant" or not conversation:
                raise ValueError("the last message must be the assistant's, after another")
            cases.append(Case(conversation, str(answer["content"])))
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidInput(f"{path}:{number}: not a chat example ({exc})") from None
    return cases


def test_cases(dataset_path: Path) -> list[Case]:
    """The dataset version's held-out test split (none: an empty list)."""
    path = dataset_path / "test.jsonl"
    return read_cases(path) if path.exists() else []


def test_count(dataset_path: Path) -> int:
    """How many test examples a dataset version has (its manifest, else its file)."""
    manifest = dataset_path / "manifest.json"
    if manifest.exists():
        return int(json.loads(manifest.read_text())["counts"].get("test", 0))
    return len(test_cases(dataset_path))


def missing_examples(dataset_path: Path, cfg: Eval) -> int:
    """How many more test examples the gate needs to decide (0: enough). Call it before
    training: a dataset too small to evaluate is not worth a training run."""
    return max(0, cfg.min_examples - test_count(dataset_path))


def golden_problem(cfg: Eval) -> str | None:
    """What is wrong with the configured golden set (None: nothing, or none configured).
    Call it before training, like :func:`missing_examples`."""
    if cfg.golden is None:
        return None
    try:
        cases = read_cases(cfg.golden)
    except (OSError, ValueError) as exc:
        return f"retrain.eval.golden: {exc}"
    return None if cases else f"retrain.eval.golden: {cfg.golden}: no examples"


def collect_more_reason(have: int, cfg: Eval) -> str:
    missing = max(0, cfg.min_examples - have)
    return (
        f"collect more: {have} held-out test examples, the gate needs at least "
        f"{cfg.min_examples} (retrain.eval.min_examples): {missing} missing"
    )


def rule_text(cfg: Eval, *, test: bool, golden: bool) -> str:
    """The combined rule, in words, as configured."""
    metric, conf = METRIC_NAMES[cfg.metric], f"{cfg.confidence:.0%}"
    parts = []
    if test:
        parts.append(
            f"test split (at least {cfg.min_examples} examples): the {conf} "
            f"paired bootstrap lower bound of the mean {metric} gain >= "
            f"{cfg.margin:g}"
        )
    if golden:
        parts.append(f"golden set: mean {metric} gain >= -{cfg.golden_tolerance:g}")
    parts.append(
        f"where answers are JSON: a valid-JSON rate at most {cfg.json_tolerance:g} "
        "below the control's"
    )
    parts.append(
        "a share of answers in the language of the question at most "
        f"{cfg.language_tolerance:g} below the control's"
    )
    if cfg.judge:
        bound = "upper bound >= 0.5" if cfg.judge_rule == "not-worse" else "lower bound > 0.5"
        parts.append(f"judge {cfg.judge} (both orders): win rate {conf} {bound}")
    return "; and ".join(parts)


def gate(
    cases: list[Case] | None,
    golden: list[Case] | None,
    ask: Ask,
    control: str,
    candidate: str,
    cfg: Eval,
    tokens: tokenizers.Counter | None = None,
) -> Evaluation:
    """Decide whether ``candidate`` may replace ``control`` (see the module docstring).

    ``cases``: the test split (None: not a source, e.g. ``retrain eval`` without a
    dataset); ``golden``: the golden set (None: none); ``ask(model, messages,
    max_tokens)`` returns one greedy answer through the gateway; ``tokens`` counts the
    expected answers for their budgets (the models' tokenizer: ``tokens.for_models``;
    None: the estimate, named as such in the result).
    """
    counter = tokens or tokenizers.estimate("no tokenizer given for the compared models")
    if cases is None and not golden:
        raise UsageError("nothing to evaluate on: neither a test split nor a golden set")
    result: Evaluation = {
        "control": control,
        "candidate": candidate,
        "cases": len(cases) if cases is not None else 0,
        "golden_cases": len(golden or []),
        "rule": rule_text(cfg, test=cases is not None, golden=bool(golden)),
        "config": cfg.model_dump(mode="json"),
        "tokenizer": counter.name,
        "tokens_exact": counter.exact,
        "missing": 0,
        "test": None,
        "golden": None,
        "judge": None,
        "rows": [],
        "outcome": "rejected",
        "passed": False,
        "reason": "",
    }
    if cases is not None and len(cases) < cfg.min_examples:
        result["missing"] = cfg.min_examples - len(cases)
        result["outcome"] = "collect-more"
        result["reason"] = collect_more_reason(len(cases), cfg)
        return result

    work = [("test", c) for c in cases or []] + [("golden", c) for c in golden or []]

    def one(item: tuple[str, Case]) -> dict[str, Any]:
        return _example(item[0], item[1], ask, control, candidate, cfg, counter)

    with ThreadPoolExecutor(max_workers=cfg.concurrency) as pool:
        rows = list(pool.map(one, work))
    result["rows"] = rows

    reasons: list[tuple[bool, str]] = []
    if cases is not None:
        test = _summary([r for r in rows if r["source"] == "test"], cfg, guard=False)
        result["test"] = test
        reasons.append((test["passed"], test["reason"]))
    if golden:
        held = _summary([r for r in rows if r["source"] == "golden"], cfg, guard=True)
        result["golden"] = held
        reasons.append((held["passed"], held["reason"]))
    if cfg.judge:
        verdicts = [r["judge"] for r in rows]
        judged = judging.summarise(verdicts, cfg.judge, cfg.judge_rule, cfg.confidence)
        result["judge"] = judged
        reasons.append((judged["passed"], judged["reason"]))
    passed = all(ok for ok, _ in reasons)
    shown = [t for ok, t in reasons if not ok] + [t for ok, t in reasons if ok]  # failed first
    result["outcome"] = "passed" if passed else "rejected"
    result["passed"] = passed
    result["reason"] = "; ".join(shown)
    return result


def gate_dataset(
    dataset_path: Path | None,
    ask: Ask,
    control: str,
    candidate: str,
    cfg: Eval,
    golden_path: Path | None = None,
    tokens: tokenizers.Counter | None = None,
) -> Evaluation:
    """:func:`gate` on a dataset version's test split and the golden set
    (``golden_path``, else ``cfg.golden``)."""
    cases = test_cases(dataset_path) if dataset_path is not None else None
    path = golden_path or cfg.golden
    golden = read_cases(path) if path is not None else None
    if path is not None and not golden:
        raise InvalidInput(f"{path}: the golden set has no examples")
    return gate(cases, golden, ask, control, candidate, cfg, tokens)


def _prompt(messages: list[dict[str, Any]]) -> str:
    content = messages[-1].get("content") if messages else ""
    return content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)


def _example(
    source: str,
    case: Case,
    ask: Ask,
    control: str,
    candidate: str,
    cfg: Eval,
    tokens: tokenizers.Counter,
) -> dict[str, Any]:
    expected_tokens = tokens.text(case.expected)
    budget = answer_budget(
        case.expected,
        cfg.answer_factor,
        cfg.answer_slack,
        cfg.max_tokens,
        lambda _: expected_tokens,
    )
    row: dict[str, Any] = {
        "source": source,
        "prompt": _prompt(case.messages),
        "expected": case.expected,
        "expected_tokens": expected_tokens,
        "max_tokens": budget,
    }
    answers = {}
    for who, model in (("control", control), ("candidate", candidate)):
        answers[who] = ask(model, case.messages, budget)
        row[who] = {"answer": answers[who], **score(answers[who], case.expected)}
    row["gain"] = round(float(row["candidate"][cfg.metric]) - float(row["control"][cfg.metric]), 4)
    row["language"] = _languages(case.messages, answers)
    if cfg.judge:
        row["judge"] = judging.judge_pair(
            ask,
            cfg.judge,
            case.messages,
            case.expected,
            answers["candidate"],
            answers["control"],
            cfg.judge_max_tokens,
            lang=row["language"]["question"],
        )
    return row


def _mean(values: list[float]) -> float:
    return round(sum(values) / len(values), 4) if values else 0.0


def _summary(rows: list[dict[str, Any]], cfg: Eval, *, guard: bool) -> dict[str, Any]:
    """One source's aggregate and verdict; ``guard``: the golden set's no-worse rule,
    else the test split's lower-bound-over-the-margin rule."""
    metric, conf = METRIC_NAMES[cfg.metric], f"{cfg.confidence:.0%}"
    summary: dict[str, Any] = {"n": len(rows), "metric": cfg.metric}
    for who in ("control", "candidate"):
        for name in METRICS:
            summary[f"{who}_{name}"] = _mean([float(r[who][name]) for r in rows])
    boot = paired_bootstrap(
        [float(r["gain"]) for r in rows],
        samples=cfg.bootstrap_samples,
        seed=cfg.seed,
        confidence=cfg.confidence,
    )
    summary["gain"] = boot.as_dict()
    gain = Interval(**summary["gain"])  # the rounded numbers: what is shown is what is compared
    ctl, cand = summary[f"control_{cfg.metric}"], summary[f"candidate_{cfg.metric}"]
    interval = f"{conf} CI {gain.low:+.3f} to {gain.high:+.3f}"
    if guard:
        ok = gain.estimate >= -cfg.golden_tolerance
        reason = (
            f"golden set: {metric} {cand:.3f} vs control {ctl:.3f} on {len(rows)} "
            f"examples: gain {gain.estimate:+.3f} ({interval}) "
            f"{'>=' if ok else '<'} the tolerance -{cfg.golden_tolerance:g}"
        )
    else:
        ok = gain.low >= cfg.margin
        reason = (
            f"{metric} {cand:.3f} vs control {ctl:.3f} on {len(rows)} test examples: "
            f"gain {gain.estimate:+.3f}, {interval}: lower bound "
            f"{'>=' if ok else '<'} the margin {cfg.margin:g}"
        )
    json_rows = [r for r in rows if "valid_json" in r["control"]]
    if json_rows:
        rates = {
            who: _mean([float(r[who]["valid_json"]) for r in json_rows])
            for who in ("control", "candidate")
        }
        json_ok = rates["candidate"] >= rates["control"] - cfg.json_tolerance
        summary.update(
            json_examples=len(json_rows),
            control_valid_json=rates["control"],
            candidate_valid_json=rates["candidate"],
        )
        reason += (
            f"; valid JSON {rates['candidate']:.0%} vs control {rates['control']:.0%} "
            f"of {len(json_rows)}{'' if json_ok else ': worse than the tolerance'}"
        )
        ok = ok and json_ok
    same = _same_language(rows, cfg)
    if same is not None:
        summary.update(same[0])
        reason += same[1]
        ok = ok and same[2]
    summary.update(passed=ok, reason=reason)
    return summary


def _languages(messages: list[dict[str, Any]], answers: dict[str, str]) -> dict[str, str | None]:
    """The language of the question (the last user message) and of each answer."""
    return {
        "question": judging.question_language(messages),
        **{who: language(answer) for who, answer in answers.items()},
    }


def _same_language(
    rows: list[dict[str, Any]], cfg: Eval
) -> tuple[dict[str, Any], str, bool] | None:
    """The language guardrail over ``rows``: the summary's fields, the reason's words,
    and whether it holds (None: no row where the languages can be told)."""
    shares: dict[str, float] = {}
    counted: dict[str, int] = {}
    for who in ("control", "candidate"):
        known = [
            r["language"][who] == r["language"]["question"]
            for r in rows
            if r["language"]["question"] is not None and r["language"][who] is not None
        ]
        counted[who] = len(known)
        if known:
            shares[who] = _mean([float(k) for k in known])
    if len(shares) < 2:
        return None
    drop = round(shares["control"] - shares["candidate"], 4)
    ok = drop <= cfg.language_tolerance
    fields = {
        "language_examples": {"control": counted["control"], "candidate": counted["candidate"]},
        "control_same_language": shares["control"],
        "candidate_same_language": shares["candidate"],
    }
    reason = (
        f"; answers in the question's language {shares['candidate']:.0%} vs control "
        f"{shares['control']:.0%} of {counted['candidate']}"
        f"{'' if ok else f': more than {cfg.language_tolerance:g} below the control'}"
    )
    return fields, reason, ok
