"""The gate's answer budget (``max_tokens``) through a real gateway, counted with the
compared models' own tokenizer: in Thai, Vietnamese and English an answer as long as
the expected one is never cut.

Hosted OpenAI models cannot run here: the scripted upstream (``tests/scripted_upstream.py``)
stands in for them and cuts each answer at ``max_tokens`` in the model's real encoding
(cl100k for gpt-3.5, o200k for gpt-4.1), as OpenAI does, saying ``finish_reason: length``.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from bpe_openai import get_encoding

from retrain import evaluate, tokens
from retrain.evaluate import Case

from .gate_stack import Served, served_gate
from .multilingual import pairs
from .scripted_upstream import Script, ScriptedUpstream
from .services import RedisProcess

BUDGET_DB = 5  # this module's models stay out of the other tests' database
CL100K, O200K = get_encoding("cl100k_base"), get_encoding("o200k_base")
# The models at "OpenAI": a base model, and one fine-tuned from it, per encoding.
OLD_35, NEW_35 = "gpt-3.5-turbo-0125", "ft:gpt-3.5-turbo-0125:flywheel::support"
OLD_41, NEW_41 = "gpt-4.1-mini-2025-04-14", "ft:gpt-4.1-mini-2025-04-14:flywheel::support"
# ... as the gateway names them
NAMES = {
    "gpt35": OLD_35,
    "gpt35-support": NEW_35,
    "gpt41": OLD_41,
    "gpt41-support": NEW_41,
    "self-hosted-control": "self-hosted-control",
    "self-hosted-candidate": "self-hosted-candidate",
}
EXPECTED = {q: a for language in ("th", "vi", "en") for q, a in pairs(language)}


def expected(messages: list[dict[str, Any]]) -> str:
    return EXPECTED[str(messages[-1]["content"])]


def vague(messages: list[dict[str, Any]]) -> str:
    return "Please contact support."


SCRIPT: Script = {
    OLD_35: vague,
    NEW_35: expected,
    OLD_41: vague,
    NEW_41: expected,
    "self-hosted-control": vague,  # on a server without /tokenize: nothing to count with
    "self-hosted-candidate": expected,
}


@pytest.fixture(scope="module")
def served(
    redis_server: RedisProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    redis.Redis(port=redis_server.port, db=BUDGET_DB).flushdb()
    encodings = {"gpt-3.5": CL100K, "ft:gpt-3.5": CL100K, "gpt-4.1": O200K, "ft:gpt-4.1": O200K}
    upstream = ScriptedUpstream(SCRIPT, encodings).start()
    with served_gate(
        upstream,
        redis_server.url.rsplit("/", 1)[0] + f"/{BUDGET_DB}",
        tmp_path_factory.mktemp("budget"),
        upstreams={
            "openai": {"kind": "openai", "base_url": upstream.base_url},
            "self-hosted": {"kind": "vllm", "base_url": upstream.base_url},
        },
        models={
            name: {"upstream": "self-hosted" if name == model else "openai", "model": model}
            for name, model in NAMES.items()
        },
        default_model="gpt35",
    ) as served:
        yield served


def gate(served: Served, language: str, control: str, candidate: str) -> dict[str, Any]:
    counter = tokens.for_models(served.settings, served.client.model, [control, candidate])
    cases = [Case([{"role": "user", "content": q}], a) for q, a in pairs(language)]
    cfg = served.settings.retrain.eval
    return evaluate.gate(cases, None, served.client.ask, control, candidate, cfg, counter)


def cut(served: Served, since: int) -> list[tuple[str, str]]:
    return [(m, f) for m, f in served.upstream.finishes[since:] if f == "length"]


@pytest.mark.parametrize("language", ["th", "vi", "en"])
@pytest.mark.parametrize(
    ("control", "candidate", "encoding"),
    [("gpt35", "gpt35-support", CL100K), ("gpt41", "gpt41-support", O200K)],
    ids=["cl100k", "o200k"],
)
def test_an_answer_as_long_as_the_expected_one_is_never_cut(
    served: Served, language: str, control: str, candidate: str, encoding: Any
) -> None:
    since = len(served.upstream.finishes)
    ev = gate(served, language, control, candidate)
    assert cut(served, since) == []  # no finish_reason: length, for either model
    assert all(r["candidate"]["answer"] == r["expected"] for r in ev["rows"])
    assert ev["passed"], ev["reason"]
    assert ev["tokenizer"] == f"openai:{encoding.name}" and ev["tokens_exact"]
    cfg = served.settings.retrain.eval
    for row in ev["rows"]:
        n = len(encoding.encode(row["expected"]))
        assert row["expected_tokens"] == n
        assert row["max_tokens"] == min(cfg.max_tokens, math.ceil(n * cfg.answer_factor) + 16)


def test_models_with_different_tokenizers_get_a_budget_that_fits_both(served: Served) -> None:
    """A gpt-4.1 control (o200k: 66 tokens of Thai) against a gpt-3.5 candidate (cl100k:
    155): the budget is the larger count's."""
    since = len(served.upstream.finishes)
    ev = gate(served, "th", "gpt41", "gpt35-support")
    assert ev["tokenizer"] == "openai:o200k_base | openai:cl100k_base"
    assert all(r["expected_tokens"] == len(CL100K.encode(r["expected"])) for r in ev["rows"])
    assert cut(served, since) == [] and ev["passed"], ev["reason"]


def test_a_model_nothing_can_count_for_gets_the_estimate_named_as_such(served: Served) -> None:
    ev = gate(served, "en", "self-hosted-control", "self-hosted-candidate")
    assert ev["tokenizer"].startswith("estimate: characters / 3 (")
    assert "/tokenize" in ev["tokenizer"]  # why: the server does not count
    assert not ev["tokens_exact"]
    assert ev["rows"][0]["expected_tokens"] == math.ceil(len(ev["rows"][0]["expected"]) / 3)


def test_retrain_eval_counts_thai_with_the_models_encoding_and_says_so(
    served: Served, tmp_path: Path
) -> None:
    lines = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
        for q, a in pairs("th")
    ]
    (tmp_path / "test.jsonl").write_text(
        "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines), encoding="utf-8"
    )
    since = len(served.upstream.finishes)
    run = subprocess.run(
        [sys.executable, "-m", "retrain", "eval", "--candidate", "gpt35-support", "--control"]
        + ["gpt35", "--dataset", str(tmp_path), "--config", str(served.config)],
        env={**os.environ, "COLUMNS": "240"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "answer budgets (max_tokens) counted by: openai:cl100k_base" in run.stdout
    assert cut(served, since) == []
