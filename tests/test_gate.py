"""The evaluation gate through a real gateway: the candidate and control answers, and a
judge's verdicts, come from a scripted upstream (``tests/scripted_upstream.py``), so each
test decides exactly where a candidate is better or worse, and the gate has to see it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from gateway.core import keys
from retrain import evaluate
from retrain.config import Eval
from retrain.evaluate import Case
from retrain.jobs import JobStore

from .gate_stack import Served, served_gate
from .scripted_upstream import Script, ScriptedUpstream
from .services import RedisProcess
from .support_desk import RETURNS as LANGUAGES

EVAL_DB = 11  # the gate's jobs stay out of the other tests' database

TEST = [
    (f"Where does order {i} ship from?", f"order {i} ships from warehouse {i % 3} on day {i % 7}")
    for i in range(30)
]
GOLDEN = [
    (f"How long can item {i} be refunded?", f"item {i} can be refunded within 30 days")
    for i in range(10)
]
LONG = " ".join(f"step {i} is done." for i in range(60))  # 240 words
PROCEDURES = [(f"Explain procedure {i}", LONG if i % 2 else "Done.") for i in range(10)]
JSONS = [
    (f"Status of order {i}, as JSON?", json.dumps({"order": i, "status": "shipped"}))
    for i in range(12)
]
SPOKEN = {q: answers for v in LANGUAGES.values() for q, *answers in v}
# Per language: (question, the expected answer, a weaker answer in the same language, an
# answer in another language).
LANG = {
    "th": [
        (
            f"คำสั่งซื้อหมายเลข {i} จะถูกส่งจากคลังสินค้าไหนคะ",
            f"คำสั่งซื้อหมายเลข {i} จะจัดส่งจากคลังสินค้าที่กรุงเทพฯ ภายในสามวันค่ะ",
            f"คำสั่งซื้อหมายเลข {i} จะจัดส่งเร็วๆ นี้ค่ะ",
            f"Order {i} ships from the Bangkok warehouse within three days.",
        )
        for i in range(10)
    ],
    "vi": [
        (
            f"Đơn hàng số {i} được gửi từ kho nào vậy?",
            f"Đơn hàng số {i} được gửi từ kho Hà Nội trong vòng ba ngày.",
            f"Đơn hàng số {i} sẽ được gửi sớm.",
            f"Order {i} ships from the Hanoi warehouse within three days.",
        )
        for i in range(10)
    ],
    "en": [
        (
            f"Which warehouse does parcel {i} leave from?",
            f"Parcel {i} leaves the Singapore warehouse within two days.",
            f"Parcel {i} leaves soon.",
            f"Bưu kiện {i} rời kho Singapore trong vòng hai ngày.",
        )
        for i in range(10)
    ],
}
LANG_ANSWERS = {q: (weaker, other) for rows in LANG.values() for q, _, weaker, other in rows}
EXPECTED = (
    dict(TEST + GOLDEN + PROCEDURES + JSONS)
    | {q: a[0] for q, a in SPOKEN.items()}
    | {q: a for rows in LANG.values() for q, a, _, _ in rows}
)
INDEX = {q: i for i, (q, _) in enumerate(TEST)}
JUDGE_PROMPT = re.compile(
    r"Reference answer[^\n]*\n(.*)\n\nAnswer A:\n(.*)\n\nAnswer B:\n(.*)\n\nWhich", re.S
)


def nfd(text: str) -> str:
    return unicodedata.normalize("NFD", text)


def nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def question(messages: list[dict[str, Any]]) -> str:
    return nfc(str(messages[-1]["content"]))


def control(messages: list[dict[str, Any]]) -> str:
    """Half right on the test split ("order 3 ships soon") and on JSON questions (valid
    JSON, a wrong status); right on the golden set; wrong on the three-language desk."""
    q = question(messages)
    if q in SPOKEN:
        return SPOKEN[q][1]  # wrong
    if q in INDEX:
        return " ".join(EXPECTED[q].split()[:3]) + " soon"
    if q in dict(JSONS):
        return EXPECTED[q].replace("shipped", "unknown")
    if q in LANG_ANSWERS:  # in the question's language, less complete
        return LANG_ANSWERS[q][0]
    return EXPECTED[q]


def better(messages: list[dict[str, Any]]) -> str:
    return EXPECTED[question(messages)]


def golden_breaker(messages: list[dict[str, Any]]) -> str:
    """Right on the test split; wrong on every golden example."""
    q = question(messages)
    return EXPECTED[q] if q in INDEX else "refunds are not possible"


def noisy(messages: list[dict[str, Any]]) -> str:
    """Right on every other test example, clueless on the rest: better on average, by
    less than the spread."""
    q = question(messages)
    if q not in INDEX:
        return EXPECTED[q]
    return EXPECTED[q] if INDEX[q] % 2 == 0 else "i do not know"


def json_chatty(messages: list[dict[str, Any]]) -> str:
    """The right JSON document, after a word of chat: no longer JSON."""
    return "Sure: " + EXPECTED[question(messages)]


def other_language(messages: list[dict[str, Any]]) -> str:
    """The right facts, in another language than the question's (Thai asked, English
    answered)."""
    return LANG_ANSWERS[question(messages)][1]


def digits_only(messages: list[dict[str, Any]]) -> str:
    """Just the order number: no language can be told."""
    return "".join(ch for ch in question(messages) if ch.isdigit())


def judge(prefer_reference: bool) -> Any:
    """A judge that prefers the answer equal to the reference (or, contrarian, the other)."""

    def verdict(messages: list[dict[str, Any]]) -> str:
        found = JUDGE_PROMPT.search(question(messages))
        assert found, question(messages)
        reference, a, b = found.groups()
        if (a == reference) == (b == reference):
            return "TIE"
        return "A" if (a == reference) == prefer_reference else "B"

    return verdict


def spoken(which: int, form: str = "NFC") -> Any:
    """On the three-language desk: the reference (0), the wrong answer (1), the right one
    in other words (2) or with a wrong fact (3), in Unicode ``form``; elsewhere the
    control's answer."""

    def answer(messages: list[dict[str, Any]]) -> str:
        q = question(messages)
        if q not in SPOKEN:
            return control(messages)
        return unicodedata.normalize(form, SPOKEN[q][which])

    return answer


SCRIPT: Script = {
    "control": control,
    "spoken-reference-nfd": spoken(0, "NFD"),  # Vietnamese as some keyboards send it
    "spoken-wrong": spoken(1),
    "spoken-right": spoken(2),
    "spoken-wrong-fact": spoken(3),
    "better": better,
    "golden-breaker": golden_breaker,
    "noisy": noisy,
    "json-chatty": json_chatty,
    "other-language": other_language,
    "digits-only": digits_only,
    "better-nfd": lambda messages: nfd(better(messages)),  # the right answer, decomposed
    "judge-first": lambda messages: "A",  # always the first answer shown: position bias
    "judge-fair": judge(prefer_reference=True),
    "judge-contrarian": judge(prefer_reference=False),
}


@pytest.fixture(scope="module")
def served(
    redis_server: RedisProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    redis.Redis(port=redis_server.port, db=EVAL_DB).flushdb()
    upstream = ScriptedUpstream(SCRIPT).start()
    with served_gate(
        upstream,
        redis_server.url.rsplit("/", 1)[0] + f"/{EVAL_DB}",
        tmp_path_factory.mktemp("gate"),
        upstreams={"scripted": {"kind": "vllm", "base_url": upstream.base_url}},
        models={m: {"upstream": "scripted", "model": m} for m in SCRIPT},
        default_model="control",
    ) as served:
        yield served


def cases(pairs: list[tuple[str, str]]) -> list[Case]:
    return [Case([{"role": "user", "content": q}], a) for q, a in pairs]


def cfg(served: Served, **changes: Any) -> Eval:
    return served.settings.retrain.eval.model_copy(update=changes)


def run_gate(
    served: Served, candidate: str, golden: bool = False, **changes: Any
) -> dict[str, Any]:
    return evaluate.gate(
        cases(TEST),
        cases(GOLDEN) if golden else None,
        served.client.ask,
        "control",
        candidate,
        cfg(served, **changes),
    )


@pytest.mark.slow
def test_a_candidate_better_on_every_example_passes_with_its_interval_over_the_margin(
    served: Served,
) -> None:
    ev = run_gate(served, "better", golden=True)
    assert ev["outcome"] == "passed" and ev["passed"], ev["reason"]
    gain = ev["test"]["gain"]
    assert gain["low"] >= ev["config"]["margin"] and gain["low"] <= gain["estimate"]
    assert ev["test"]["candidate_exact"] == 1.0 and ev["test"]["control_exact"] == 0.0
    assert ev["golden"]["passed"] and ev["golden"]["gain"]["estimate"] == 0.0
    assert len(ev["rows"]) == len(TEST) + len(GOLDEN)
    json.dumps(ev)  # stored as the job's evaluation


def test_the_gate_refuses_a_candidate_better_on_average_but_worse_on_the_golden_set(
    served: Served,
) -> None:
    ev = run_gate(served, "golden-breaker", golden=True)
    assert ev["test"]["passed"], ev["test"]["reason"]  # the test split alone would pass
    pooled = [r["gain"] for r in ev["rows"]]
    assert sum(pooled) / len(pooled) > 0  # better on average over every example, too
    assert not ev["golden"]["passed"]
    assert ev["golden"]["gain"]["estimate"] < -ev["config"]["golden_tolerance"]
    assert ev["outcome"] == "rejected" and not ev["passed"]
    assert ev["reason"].startswith("golden set:"), ev["reason"]  # what failed comes first
    assert {r["source"] for r in ev["rows"] if r["gain"] < 0} == {"golden"}


def test_the_gate_refuses_a_candidate_whose_bootstrap_lower_bound_is_below_the_margin(
    served: Served,
) -> None:
    ev = run_gate(served, "noisy")
    gain, margin = ev["test"]["gain"], ev["config"]["margin"]
    assert gain["estimate"] >= margin, gain  # better on average, by more than the margin ...
    assert gain["low"] < margin, gain  # ... but not surely so
    assert ev["outcome"] == "rejected" and not ev["passed"]
    assert "lower bound < the margin" in ev["reason"]
    assert run_gate(served, "noisy") == ev  # seeded: the same answers, the same decision


def test_the_judge_sees_both_orders_and_a_judge_that_follows_the_position_is_a_tie(
    served: Served,
) -> None:
    before = len(served.upstream.asked("judge-first"))
    ev = run_gate(served, "better", judge="judge-first")
    prompts = [question(r["messages"]) for r in served.upstream.asked("judge-first")[before:]]
    assert len(prompts) == 2 * len(TEST)
    shown = [JUDGE_PROMPT.search(p) for p in prompts]
    pairs = {(m.group(2), m.group(3)) for m in shown if m}
    for _, expected in TEST:  # each pair was shown candidate first and control first
        (ctl,) = {a for a, b in pairs if b == expected} | {b for a, b in pairs if a == expected}
        assert (expected, ctl) in pairs and (ctl, expected) in pairs
    judged = ev["judge"]
    assert judged["inconsistent"] == len(TEST) and judged["wins"] == judged["losses"] == 0
    assert judged["win_rate"]["estimate"] == 0.5
    assert judged["passed"] and ev["passed"]  # not-worse: no evidence either way
    assert not run_gate(served, "better", judge="judge-first", judge_rule="better")["passed"]


def test_a_judge_that_prefers_the_candidate_in_both_orders_gives_a_win_rate_and_its_interval(
    served: Served,
) -> None:
    ev = run_gate(served, "better", judge="judge-fair", judge_rule="better")
    judged = ev["judge"]
    assert judged["wins"] == len(TEST) and judged["inconsistent"] == 0
    rate = judged["win_rate"]
    assert rate["estimate"] == 1.0 and 0.5 < rate["low"] < 1.0 and rate["high"] == 1.0
    assert ev["passed"], ev["reason"]
    assert all(r["judge"]["verdict"] == "win" for r in ev["rows"])


def test_a_judge_that_prefers_the_control_rejects_a_candidate_the_test_split_passes(
    served: Served,
) -> None:
    ev = run_gate(served, "better", judge="judge-contrarian")
    assert ev["test"]["passed"]
    assert ev["judge"]["losses"] == len(TEST) and ev["judge"]["win_rate"]["high"] < 0.5
    assert not ev["passed"] and ev["reason"].startswith("judge judge-contrarian")


def test_answers_may_be_as_long_as_the_expected_answer_plus_slack(served: Served) -> None:
    before = len(served.upstream.asked("better"))
    ev = evaluate.gate(cases(PROCEDURES), None, served.client.ask, "control", "better", cfg(served))
    sent = {
        question(r["messages"]): r["max_tokens"] for r in served.upstream.asked("better")[before:]
    }
    long_limits = [sent[q] for q, a in PROCEDURES if a == LONG]
    short_limits = [sent[q] for q, a in PROCEDURES if a != LONG]
    assert min(long_limits) > len(LONG.split()) > 64  # not cut at a fixed 64 tokens
    assert max(short_limits) < 64  # and a short answer gets a short budget
    assert all(r["candidate"]["exact"] for r in ev["rows"])


def test_a_candidate_whose_answers_stop_being_json_is_refused_though_its_rouge_l_is_higher(
    served: Served,
) -> None:
    ev = evaluate.gate(cases(JSONS), None, served.client.ask, "control", "json-chatty", cfg(served))
    summary = ev["test"]
    assert summary["gain"]["low"] >= ev["config"]["margin"]  # the metric alone would pass
    assert summary["json_examples"] == len(JSONS)
    assert summary["control_valid_json"] == 1.0 and summary["candidate_valid_json"] == 0.0
    assert not ev["passed"] and "valid JSON 0% vs control 100%" in ev["reason"]
    assert all(r["control"]["valid_json"] and not r["candidate"]["valid_json"] for r in ev["rows"])


@pytest.mark.parametrize("lang", ["en", "th", "vi"])
def test_a_right_candidate_passes_against_a_wrong_control_in_every_language(
    served: Served, lang: str
) -> None:
    """Right answers in other words than the reference: a Thai one without spaces is
    as right as the English one with its comma."""
    desk = [(q, ref) for q, ref, *_ in LANGUAGES[lang]]
    ev = evaluate.gate(
        cases(desk), None, served.client.ask, "spoken-wrong", "spoken-right", cfg(served)
    )
    assert ev["outcome"] == "passed", ev["reason"]
    assert ev["test"]["gain"]["low"] > 0.5, ev["test"]["gain"]


@pytest.mark.parametrize("lang", ["en", "th", "vi"])
def test_answers_in_another_unicode_form_are_the_same_answers(served: Served, lang: str) -> None:
    desk = [(q, ref) for q, ref, *_ in LANGUAGES[lang]]
    ev = evaluate.gate(
        cases(desk), None, served.client.ask, "spoken-wrong", "spoken-reference-nfd", cfg(served)
    )
    assert ev["test"]["candidate_exact"] == 1.0 and ev["test"]["candidate_chrf"] == 1.0
    assert ev["test"]["candidate_rouge_l"] == 1.0 and ev["outcome"] == "passed"


@pytest.mark.parametrize("lang", ["en", "th", "vi"])
def test_the_golden_guard_refuses_a_wrong_fact_in_every_language(served: Served, lang: str) -> None:
    """The candidate says 3 days where the reference says 30; the control is right (both
    in other words than the reference)."""
    desk = [(q, ref) for q, ref, *_ in LANGUAGES[lang]]
    ev = evaluate.gate(
        None, cases(desk), served.client.ask, "spoken-right", "spoken-wrong-fact", cfg(served)
    )
    assert ev["outcome"] == "rejected", ev["reason"]
    assert ev["golden"]["gain"]["estimate"] < -ev["config"]["golden_tolerance"]


def retrain(served: Served, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "240"}
    return subprocess.run(
        [sys.executable, "-m", "retrain", *args, "--config", str(served.config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def dataset(tmp_path: Path, pairs: list[tuple[str, str]]) -> Path:
    lines = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
        for q, a in pairs
    ]
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return tmp_path


@pytest.mark.slow
def test_retrain_eval_exits_0_when_passed_and_6_when_rejected(
    served: Served,
    tmp_path: Path,
) -> None:
    data = dataset(tmp_path, TEST)
    (tmp_path / "root" / "ds-1").mkdir(parents=True)  # an experiment's datasets: the latest
    dataset(tmp_path / "root" / "ds-1", TEST)
    (tmp_path / "root" / "latest").write_text("ds-1\n")
    passed = retrain(
        served,
        "eval",
        "--candidate",
        "better",
        "--control",
        "control",
        "--dataset",
        str(tmp_path / "root"),
        "--out",
        str(tmp_path / "ev.json"),
    )
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "against control: passed" in passed.stdout
    written = json.loads((tmp_path / "ev.json").read_text())
    assert written["outcome"] == "passed" and written["cases"] == len(TEST)
    (tmp_path / "golden").mkdir()
    golden = dataset(tmp_path / "golden", GOLDEN)
    rejected = retrain(
        served,
        "eval",
        "--candidate",
        "golden-breaker",
        "--control",
        "control",
        "--dataset",
        str(data),
        "--golden",
        str(golden / "test.jsonl"),
    )
    assert rejected.returncode == 6, rejected.stdout + rejected.stderr
    assert "golden set: chrF" in rejected.stdout and "< the tolerance" in rejected.stdout


def test_retrain_eval_says_collect_more_with_exit_7_and_asks_no_model(
    served: Served,
    tmp_path: Path,
) -> None:
    data = dataset(tmp_path, TEST[:4])
    before = len(served.upstream.requests)
    run = retrain(
        served, "eval", "--candidate", "better", "--control", "control", "--dataset", str(data)
    )
    assert run.returncode == 7, run.stdout + run.stderr
    assert "collect more: 4 held-out test examples" in run.stdout and "6 missing" in run.stdout
    assert len(served.upstream.requests) == before
    assert evaluate.missing_examples(data, served.settings.retrain.eval) == 6


def test_retrain_eval_without_a_dataset_or_a_golden_set_is_a_usage_error(served: Served) -> None:
    run = retrain(served, "eval", "--candidate", "better", "--control", "control")
    assert run.returncode == 2 and "nothing to evaluate on" in run.stderr


def test_retrain_status_shows_every_example_with_answers_scores_and_verdicts(
    served: Served,
    redis_server: RedisProcess,
) -> None:
    ev = run_gate(served, "noisy", judge="judge-fair")
    store = JobStore(redis.Redis(port=redis_server.port, db=EVAL_DB), keys.PLAIN_KEYSPACE)
    job = store.create(
        experiment="gate",
        provider="local",
        dataset_id="ds-gate",
        dataset_path="-",
        status="rejected",
        evaluation=ev,
    )
    shown = retrain(served, "status", job["id"])
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert "Per example" in out and f"against control: {ev['outcome']}" in out
    assert "Where does order 1 ship from?" in out and "i do not know" in out
    assert "order 1 ships soon" in out  # the control's answer
    assert "win (candidate/candidate)" in out
    assert "tie (tie/tie)" in out  # neither is the reference
    assert "lower bound < the margin" in out and "rule: test split" in out


def lang_cases(lang: str) -> list[Case]:
    return cases([(q, a) for q, a, _, _ in LANG[lang]])


@pytest.mark.parametrize("lang", ["th", "vi", "en"])
def test_a_candidate_answering_in_another_language_than_the_question_is_refused(
    served: Served, lang: str
) -> None:
    """A Thai fine-tune that starts answering in English (and the same for Vietnamese,
    and English answered in Vietnamese), while the control answers in the question's
    language."""
    ev = evaluate.gate(
        lang_cases(lang), None, served.client.ask, "control", "other-language", cfg(served)
    )
    summary = ev["test"]
    assert summary["control_same_language"] == 1.0 and summary["candidate_same_language"] == 0.0
    assert summary["language_examples"] == {"control": 10, "candidate": 10}
    assert not ev["passed"] and not summary["passed"]
    assert (
        "answers in the question's language 0% vs control 100% of 10: "
        "more than 0.1 below the control" in ev["reason"]
    )
    other = "en" if lang != "en" else "vi"
    assert {(r["language"]["question"], r["language"]["control"]) for r in ev["rows"]} == {
        (lang, lang)
    }
    assert {r["language"]["candidate"] for r in ev["rows"]} == {other}
    assert "in the language of the question at most 0.1 below the control's" in ev["rule"]


@pytest.mark.parametrize("lang", ["th", "vi", "en"])
def test_a_candidate_answering_in_the_question_language_passes_the_language_rule(
    served: Served, lang: str
) -> None:
    ev = evaluate.gate(lang_cases(lang), None, served.client.ask, "control", "better", cfg(served))
    summary = ev["test"]
    assert summary["control_same_language"] == summary["candidate_same_language"] == 1.0
    assert ev["passed"], ev["reason"]
    assert "answers in the question's language 100% vs control 100% of 10" in ev["reason"]


def test_the_language_tolerance_is_a_setting_and_answers_of_no_language_do_not_count(
    served: Served,
) -> None:
    mixed = lang_cases("th")[:5] + lang_cases("vi")[:5]
    tolerant = evaluate.gate(
        mixed,
        None,
        served.client.ask,
        "control",
        "other-language",
        cfg(served, language_tolerance=1),
    )
    assert tolerant["test"]["candidate_same_language"] == 0.0
    assert "below the control" not in tolerant["reason"]  # the rule held
    unknown = evaluate.gate(mixed, None, served.client.ask, "control", "digits-only", cfg(served))
    assert {r["language"]["candidate"] for r in unknown["rows"]} == {None}
    assert "candidate_same_language" not in unknown["test"]  # nothing to compare
    assert "question's language" not in unknown["reason"]


def test_the_judge_sees_thai_and_vietnamese_whole_in_nfc_and_is_told_the_language(
    served: Served,
) -> None:
    """Written in NFD (decomposed Vietnamese), in a conversation with a system message and
    a multi-part message; the candidate answers in NFD too. The judge's prompt holds the
    conversation, the reference and both answers in NFC, whole and unescaped."""
    picked = LANG["th"][:3] + LANG["vi"][:3]
    conversation = [
        {"role": "system", "content": nfd("Bạn là trợ lý của cửa hàng. ตอบอย่างสุภาพ")},
        {"role": "user", "content": [{"type": "text", "text": nfd("Xin chào, tôi là Hương.")}]},
        {"role": "assistant", "content": nfd("Chào chị Hương, tôi giúp gì được ạ?")},
    ]
    examples = [
        Case([*conversation, {"role": "user", "content": nfd(q)}], nfd(a)) for q, a, _, _ in picked
    ]
    before = len(served.upstream.asked("judge-fair"))
    cap = 16
    ev = evaluate.gate(
        examples,
        None,
        served.client.ask,
        "control",
        "better-nfd",
        cfg(served, min_examples=2, judge="judge-fair", judge_max_tokens=cap),
    )
    asked = served.upstream.asked("judge-fair")[before:]
    assert len(asked) == 2 * len(picked)
    by_question: dict[str, list[dict[str, Any]]] = {}
    for body in asked:
        assert body["max_tokens"] == cap  # the judge's one-word reply, not the answer budget
        system, user = body["messages"]
        assert "the language of the user's question" in system["content"]
        prompt = user["content"]
        assert unicodedata.is_normalized("NFC", prompt) and "\\u" not in prompt
        asked_q = next(q for q, _, _, _ in picked if f"user: {q}\n" in prompt)
        by_question.setdefault(asked_q, []).append(body)
        _, reference, weaker, _ = next(row for row in picked if row[0] == asked_q)
        assert prompt.count(reference) == 2  # the reference, and the candidate's answer
        assert weaker in prompt  # the control's answer
        assert "system: Bạn là trợ lý của cửa hàng. ตอบอย่างสุภาพ\n" in prompt
        assert "user: Xin chào, tôi là Hương.\n" in prompt
        assert "assistant: Chào chị Hương, tôi giúp gì được ạ?\n" in prompt
        name = "Thai" if asked_q in dict((q, a) for q, a, _, _ in LANG["th"]) else "Vietnamese"
        assert prompt.startswith(f"The user writes in {name}: a good answer is in {name}")
    assert len(by_question) == len(picked)
    # Decomposed, the candidate's answer is still the reference: the judge saw it so.
    assert ev["judge"]["wins"] == len(picked), ev["judge"]


def test_retrain_eval_refuses_a_thai_candidate_answering_in_english_and_shows_the_shares(
    served: Served, tmp_path: Path
) -> None:
    data = dataset(tmp_path, [(q, a) for q, a, _, _ in LANG["th"]])
    run = retrain(
        served,
        "eval",
        "--candidate",
        "other-language",
        "--control",
        "control",
        "--dataset",
        str(data),
    )
    assert run.returncode == 6, run.stdout + run.stderr
    (row,) = [line for line in run.stdout.splitlines() if line.startswith("│ test")]
    assert "100% → 0%" in row  # the same-language column: control → candidate
    assert "answers in the question's language 0% vs control 100% of 10" in run.stdout
