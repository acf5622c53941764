"""The gate's LLM judge: which of two answers is better, asked in both orders.

A judge model (any model the gateway serves) sees the conversation, the reference
answer and two answers labelled A and B, and replies with one word: ``A``, ``B`` or
``TIE``. Judges favour a position (often the first), so every pair is judged twice,
candidate first and control first. Per example:

* **win**: the candidate is preferred in both orders; **loss**: the control is;
* **tie**: anything else — a tie, or the two orders disagreeing (``inconsistent``: the
  judge followed the position, not the answer), or a reply that is not one of the
  three words (``invalid``, also counted as a tie).

The win rate counts a tie as half a win: ``(wins + ties / 2) / n``, with a Wilson
interval over the n examples.

It also screens a teacher's unrated answers before a distillation build makes them
examples (``retrain.distill.judge``, :func:`screen`): it sees the conversation and the
answer and replies ``ACCEPT`` or ``REJECT``; only a refusal leaves an answer out.

The judge judges in the conversation's language: the instructions are English, but
they tell it that the answers should be in the language of the user's question and
that an answer in another language is worse, and name that language when it can be
told (``gateway.core.text.language`` of the last user message). Every text reaches the judge
whole and as it was written, in NFC: the conversation (text parts of multi-part
messages as text), the reference and both answers, never escaped (no ``\\uXXXX``) and
never cut (``judge_max_tokens`` limits only the judge's one-word reply).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway.core.records import last_user_text, text_of
from gateway.core.text import LANGUAGES, language, nfc

from .uncertainty import wilson

SYSTEM = (
    "You are an impartial judge. You compare two answers to the same conversation and "
    "say which one is better: more correct, more helpful, closer to the reference answer. "
    "The order in which the answers are shown does not matter. "
    "Judge in the conversation's language: a good answer is written in the language of "
    "the user's question, and an answer in another language is worse, however correct."
)
PARTS = "\n"  # between the text parts of a multi-part message, as the judge reads it
TEMPLATE = """{language}Conversation:
{conversation}

Reference answer (what a reviewer expected):
{reference}

Answer A:
{a}

Answer B:
{b}

Which answer is better? Reply with one word: A, B or TIE."""

Ask = Callable[[str, list[dict[str, Any]], int], str]


def _render(messages: list[dict[str, Any]]) -> str:
    return "\n".join(
        f"{m.get('role', 'user')}: {nfc(text_of(m.get('content'), PARTS))}" for m in messages
    )


def question_language(messages: list[dict[str, Any]]) -> str | None:
    """The language of the last user message (None: it cannot be told)."""
    return language(last_user_text(messages, PARTS))


def prompt(
    messages: list[dict[str, Any]], reference: str, a: str, b: str, lang: str | None = None
) -> list[dict[str, Any]]:
    """The judge's chat messages for answers ``a`` and ``b``; ``lang``: the language of
    the user's question (an ISO 639-1 code), named to the judge when known."""
    name = LANGUAGES.get(lang or "")
    said = (
        f"The user writes in {name}: a good answer is in {name}; an answer in another "
        "language is worse.\n\n"
        if name
        else ""
    )
    text = TEMPLATE.format(
        language=said,
        conversation=_render(messages),
        reference=nfc(reference),
        a=nfc(a),
        b=nfc(b),
    )
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]


SCREEN_SYSTEM = (
    "You are a strict reviewer. You read a conversation and the assistant's last answer, "
    "and say whether a smaller model should learn to answer like that: correct, helpful, "
    "complete, and written in the language of the user's question."
)
SCREEN_TEMPLATE = """{language}Conversation:
{conversation}

The assistant's answer:
{answer}

Should a model learn to answer like this? Reply with one word: ACCEPT or REJECT."""


def screen_prompt(
    messages: list[dict[str, Any]], answer: str, lang: str | None = None
) -> list[dict[str, Any]]:
    """The judge's chat messages to screen ``answer`` to ``messages``."""
    name = LANGUAGES.get(lang or "")
    said = (
        f"The user writes in {name}: an answer in another language should be rejected.\n\n"
        if name
        else ""
    )
    text = SCREEN_TEMPLATE.format(language=said, conversation=_render(messages), answer=nfc(answer))
    return [{"role": "system", "content": SCREEN_SYSTEM}, {"role": "user", "content": text}]


def screen(
    ask: Ask,
    judge: str,
    items: list[tuple[list[dict[str, Any]], str]],
    max_tokens: int,
    concurrency: int = 4,
) -> list[str]:
    """The judge's verdict on each (conversation, answer): ``ACCEPT``, ``REJECT`` or
    ``invalid`` (a reply that is neither word)."""
    from concurrent.futures import ThreadPoolExecutor

    def one(item: tuple[list[dict[str, Any]], str]) -> str:
        messages, answer = item
        reply = ask(judge, screen_prompt(messages, answer, question_language(messages)), max_tokens)
        return _first_word(reply, ("ACCEPT", "REJECT"))

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        return list(pool.map(one, items))


def _first_word(reply: str, words: tuple[str, ...]) -> str:
    found = reply.strip().split()
    first = found[0].strip("*.:,;!\"'()[]`").upper() if found else ""
    return first if first in words else "invalid"


def parse(reply: str) -> str:
    """``A``, ``B``, ``TIE``, or ``invalid``: the reply's first word, punctuation aside."""
    return _first_word(reply, ("A", "B", "TIE"))


def judge_pair(
    ask: Ask,
    judge: str,
    messages: list[dict[str, Any]],
    reference: str,
    candidate: str,
    control: str,
    max_tokens: int,
    *,
    lang: str | None,
) -> dict[str, str]:
    """Both orders' verdicts for one example, and the combined ``verdict``; ``lang``: the
    language of the user's question (:func:`question_language`), named to the judge."""
    first = parse(ask(judge, prompt(messages, reference, candidate, control, lang), max_tokens))
    second = parse(ask(judge, prompt(messages, reference, control, candidate, lang), max_tokens))
    # Each order's preference, by model rather than by position.
    by_model = {"A": "candidate", "B": "control", "TIE": "tie", "invalid": "invalid"}
    swapped = {"A": "control", "B": "candidate", "TIE": "tie", "invalid": "invalid"}
    one, two = by_model[first], swapped[second]
    if one == two == "candidate":
        verdict = "win"
    elif one == two == "control":
        verdict = "loss"
    else:
        verdict = "tie"
    return {"candidate_first": one, "control_first": two, "verdict": verdict}


def summarise(
    verdicts: list[dict[str, str]], model: str, rule: str, confidence: float
) -> dict[str, Any]:
    """Counts, the win rate with its interval, and whether ``rule`` is met."""
    n = len(verdicts)
    wins = sum(v["verdict"] == "win" for v in verdicts)
    losses = sum(v["verdict"] == "loss" for v in verdicts)
    ties = n - wins - losses
    orders = [(v["candidate_first"], v["control_first"]) for v in verdicts]
    inconsistent = sum(
        a != b and "tie" not in (a, b) and "invalid" not in (a, b) for a, b in orders
    )
    invalid = sum((a == "invalid") + (b == "invalid") for a, b in orders)
    rate = wilson(wins + ties / 2, n, confidence)
    if rule == "better":
        passed = n > 0 and rate.low > 0.5
        need = f"its {confidence:.0%} lower bound must exceed 0.5"
    else:
        passed = rate.high >= 0.5
        need = f"its {confidence:.0%} upper bound must reach 0.5"
    verdict = "met" if passed else "not met"
    reason = (
        f"judge {model}: win rate {rate.estimate:.3f} ({confidence:.0%} CI "
        f"{rate.low:.3f} to {rate.high:.3f}; {wins} wins, {losses} losses, {ties} ties "
        f"of {n}; {inconsistent} inconsistent): {need}: {verdict}"
    )
    return {
        "model": model,
        "n": n,
        "wins": wins,
        "losses": losses,
        "ties": ties,
        "inconsistent": inconsistent,
        "invalid": invalid,
        "win_rate": rate.as_dict(),
        "rule": rule,
        "passed": passed,
        "reason": reason,
    }
