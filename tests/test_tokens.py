"""Token counts come from the tokenizer of the model in question (``retrain/tokens.py``):
OpenAI encodings offline, a local model's tokenizer and chat template, a vLLM server's
``/tokenize``; the estimate only where none of them can count, and then named."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from bpe_openai import get_encoding
from tokenizers import Tokenizer

from flywheel_stack import VLLMServer, free_port
from gateway.core.config import load_settings
from retrain import evaluate, tokens
from retrain.config import RetrainSettings, TrainingPrice
from retrain.curate import DPO, SFT, Example, TokenCounter
from retrain.dataset import latest_version, price_counter
from retrain.evaluate import Case
from retrain.gateway_client import Gateway
from retrain.text_metrics import answer_budget

from .conftest import ADMIN_KEY, API_KEY
from .helpers.datasets import build, new_experiment, serve_and_rate, settings_for
from .multilingual import ANSWERS, THAI, pairs
from .services import GatewayProcess

# The refund answer (177 characters in each language), counted by the encodings.
O200K = {"th": 66, "vi": 48, "en": 39}
CL100K = {"th": 155, "vi": 78, "en": 40}


def settings(tmp_path: Path, retrain: dict[str, Any]) -> RetrainSettings:
    """A config whose local vLLM upstream does not answer."""
    doc = {
        "upstreams": {"local": {"kind": "vllm", "base_url": f"http://127.0.0.1:{free_port()}/v1"}},
        "models": {"base": {"upstream": "local", "model": "base"}},
        "retrain": retrain,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(doc))
    return load_settings(path, schema=RetrainSettings)


def example(question: str, answer: str) -> Example:
    messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return Example(kind=SFT, line={"messages": messages}, source="correction", group="u1")


@pytest.mark.parametrize("language", ["th", "vi", "en"])
def test_openai_models_are_counted_in_their_own_encoding_offline(language: str) -> None:
    text = ANSWERS[language]
    assert len(text) == 177
    gpt4o, gpt35 = tokens.openai("gpt-4o-mini-2024-07-18"), tokens.openai("gpt-3.5-turbo")
    assert (gpt4o.name, gpt35.name) == ("openai:o200k_base", "openai:cl100k_base")
    assert gpt4o.exact and gpt35.exact
    assert gpt4o.text(text) == len(get_encoding("o200k_base").encode(text)) == O200K[language]
    assert gpt35.text(text) == len(get_encoding("cl100k_base").encode(text)) == CL100K[language]


def test_a_fine_tuned_model_is_counted_in_its_base_models_encoding() -> None:
    assert tokens.openai_encoding("ft:gpt-4o-mini-2024-07-18:flywheel::abc123") == "o200k_base"
    assert tokens.openai_encoding("ft:gpt-3.5-turbo-0125:flywheel::abc123") == "cl100k_base"
    assert tokens.openai_encoding("gpt-4.1-nano") == "o200k_base"
    assert tokens.openai_encoding("o3-mini") == "o200k_base"
    assert tokens.openai_encoding("gpt-4-0613") == "cl100k_base"
    assert tokens.openai_encoding("llama-3.1-8b") is None
    unknown = tokens.openai("llama-3.1-8b")
    assert unknown.name == "estimate: characters / 3 (no known OpenAI encoding for llama-3.1-8b)"
    assert not unknown.exact


def test_thai_is_not_counted_as_a_third_of_its_characters() -> None:
    """The estimate undercounts Thai in cl100k by more than half: a budget from it cuts."""
    estimate = tokens.estimate().text(THAI)
    assert estimate == 59
    assert tokens.openai("gpt-3.5-turbo").text(THAI) == 155
    old = answer_budget(THAI, 1.5, 16, 512)
    new = answer_budget(THAI, 1.5, 16, 512, tokens.openai("gpt-3.5-turbo").text)
    assert old == 105 < 155 <= new == 249


def test_dataset_examples_are_counted_exactly_without_a_download() -> None:
    counter = TokenCounter(None, "o200k_base")
    assert (counter.name, counter.exact) == ("openai:o200k_base", True)
    question, answer = pairs("th", 1)[0]
    enc = get_encoding("o200k_base")
    # OpenAI's recipe: 3 tokens per message and 3 to prime the reply
    expected = 3 + (3 + len(enc.encode(question))) + (3 + len(enc.encode(answer)))
    assert counter(example(question, answer)) == expected


@pytest.mark.slow
@pytest.mark.parametrize("language", ["th", "vi", "en"])
def test_a_local_model_is_counted_with_its_tokenizer_and_chat_template(
    tiny_model: Path, language: str
) -> None:
    counter = tokens.local(str(tiny_model))
    assert counter.name == str(tiny_model) and counter.exact
    raw = Tokenizer.from_file(str(tiny_model / "tokenizer.json"))
    question, answer = pairs(language, 1)[0]
    assert counter.text(answer) == len(raw.encode(answer, add_special_tokens=False).ids)
    chatml = f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n{answer}<|im_end|>\n"
    n = len(raw.encode(chatml, add_special_tokens=False).ids)
    assert TokenCounter(str(tiny_model))(example(question, answer)) == n


def test_the_trained_model_decides_what_counts_a_dataset(tmp_path: Path, tiny_model: Path) -> None:
    hosted = tokens.for_training(settings(tmp_path, {"provider": "openai"}))
    assert hosted.name == "openai:o200k_base"  # gpt-4o-mini, the default base model
    older = {"provider": "openai", "openai": {"base_model": "gpt-3.5-turbo-0125"}}
    assert tokens.for_training(settings(tmp_path, older)).name == "openai:cl100k_base"
    local = {"provider": "local", "local": {"base_model": str(tiny_model)}}
    own = tokens.for_training(settings(tmp_path, local))
    assert own.name == str(tiny_model) and own.exact
    # no base model set and its vLLM server down: the estimate, and why
    blind = tokens.for_training(settings(tmp_path, {"provider": "local"}))
    assert blind.name.startswith("estimate: characters / 3 (") and not blind.exact


def test_a_training_price_is_counted_in_the_priced_models_tokens(
    tmp_path: Path, tiny_model: Path
) -> None:
    cfg = settings(tmp_path, {"provider": "local", "local": {"base_model": str(tiny_model)}})
    build = TokenCounter(tokens.for_training(cfg))
    hosted = TrainingPrice(provider="openai", model="gpt-4o-mini-2024-07-18", per_1m_tokens=3)
    own = TrainingPrice(provider="local", model=str(tiny_model), per_1m_tokens=0.5)
    priced = price_counter(cfg, hosted, build)
    assert priced.name == "openai:o200k_base"
    assert price_counter(cfg, own, build) is build
    thai = example(*pairs("th", 1)[0])
    assert priced(thai) == TokenCounter(tokens.openai("gpt-4o-mini"))(thai)
    assert build(thai) == TokenCounter(tokens.local(str(tiny_model)))(thai)
    assert priced(thai) != build(thai)  # two tokenizers, two counts


LANGUAGES = ["th", "vi", "en"]


def test_a_vllm_server_counts_as_its_models_tokenizer(vllm: VLLMServer, tiny_model: Path) -> None:
    own = tokens.local(str(tiny_model))
    for model in ("base", "support-v1"):  # the base model and an adapter on it
        served = tokens.served(vllm.base_url, model)
        assert served.name.startswith(f"vllm:{model} (") and served.exact
        for language in LANGUAGES:
            question, answer = pairs(language, 1)[0]
            assert served.text(answer) == own.text(answer)
            conversation = [
                {"role": "user", "content": question},
                {"role": "assistant", "content": answer},
            ]
            assert served.messages(conversation) == own.messages(conversation)


def test_the_budget_of_the_tiny_model_fits_the_expected_answer(tiny_model: Path) -> None:
    """Budgets as the gate computes them for a model with the tiny model's tokenizer:
    each fits the answer, except where the cap (512) is below it."""
    own = tokens.local(str(tiny_model))
    for language in LANGUAGES:
        n = own.text(ANSWERS[language])
        budget = answer_budget(ANSWERS[language], 1.5, 16, 512, own.text)
        assert budget == min(512, math.ceil(n * 1.5) + 16)
        assert budget >= n or n > 512


def test_the_gate_counts_models_vllm_serves_with_the_servers_tokenizer(
    gateway: GatewayProcess, tiny_model: Path, tmp_path: Path
) -> None:
    """``base`` against ``support-v1`` (an adapter on it), both on the real vLLM: each
    expected answer is counted by vLLM's /tokenize, as the tiny model's tokenizer does."""
    doc = yaml.safe_load(gateway.config_path.read_text())
    doc["retrain"] = {"gateway_url": gateway.url, "gateway_key": API_KEY, "admin_key": ADMIN_KEY}
    path = tmp_path / "retrain.yaml"
    path.write_text(yaml.safe_dump(doc))
    cfg = load_settings(path, schema=RetrainSettings)
    client = Gateway(cfg)
    try:
        counter = tokens.for_models(cfg, client.model, ["base", "support-v1"])
        assert counter.name.startswith("vllm:base (") and "vllm:support-v1 (" in counter.name
        own = tokens.local(str(tiny_model))
        cases = [
            Case([{"role": "user", "content": q}], a)
            for language in LANGUAGES
            for q, a in pairs(language, 2)
        ]
        gate_cfg = cfg.retrain.eval.model_copy(update={"min_examples": len(cases)})
        ev = evaluate.gate(cases, None, client.ask, "base", "support-v1", gate_cfg, counter)
    finally:
        client.http.close()
    assert ev["tokenizer"] == counter.name and ev["tokens_exact"]
    for row in ev["rows"]:
        n = own.text(row["expected"])
        assert row["expected_tokens"] == n
        assert row["max_tokens"] == min(gate_cfg.max_tokens, math.ceil(n * 1.5) + 16)


def test_a_build_counts_with_the_served_model_and_prices_each_model_in_its_own_tokens(
    gateway: GatewayProcess, tmp_path: Path
) -> None:
    """No tokenizer and no base model configured: the build counts with the model the
    local vLLM upstream serves; an OpenAI price is counted in that model's encoding."""
    exp = new_experiment(gateway)
    items = [
        {"prompt": q, "user": f"th-{i}", "rating": "down", "correction": a}
        for i, (q, a) in enumerate(pairs("th", 6))
    ]
    serve_and_rate(gateway, exp, items)
    prices = [
        {"provider": "openai", "model": "gpt-4o-mini-2024-07-18", "per_1m_tokens": 3.0},
        {"provider": "local", "model": "tiny", "per_1m_tokens": 0.5},
    ]
    cfg, _ = settings_for(gateway, tmp_path, prices=prices)
    manifest = build(cfg, exp).manifest
    assert manifest["tokenizer"].startswith("vllm:base (") and manifest["tokens_exact"]
    hosted, local = manifest["cost_estimates"]
    assert local["tokenizer"] == manifest["tokenizer"]
    trained = manifest["tokens"].get("train", 0) + manifest["tokens"].get("preference", 0)
    assert local["tokens"] == 3 * trained > 0  # 3 epochs
    assert hosted["tokenizer"] == "openai:o200k_base"
    version = latest_version(cfg.retrain.dataset_dir / exp)
    assert version is not None
    o200k = TokenCounter(tokens.openai("gpt-4o-mini"))
    written = [
        Example(kind=kind, line=line, source="correction", group="-")
        for name, kind in (("train.jsonl", SFT), ("preference.jsonl", DPO))
        if (version.path / name).exists()
        for line in map(json.loads, (version.path / name).read_text().splitlines())
    ]
    assert written and hosted["tokens"] == 3 * sum(map(o200k, written))
    assert hosted["tokens"] != local["tokens"]
