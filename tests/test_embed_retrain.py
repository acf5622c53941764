"""``retrain embed`` without a server: the dataset, the retrieval metrics, the losses, the
exit codes, and the tiny embedding model (English, Thai and Vietnamese, NFC and NFD)."""

from __future__ import annotations

import json
import math
import unicodedata
from pathlib import Path

import pytest

from flywheel_stack.tiny_embedder import build_tiny_embedder
from retrain import cli
from retrain.embed import (
    Triple,
    build_dataset,
    query_scores,
    read_triples,
    relevance,
    run_embed,
    triples_of,
)
from retrain.exit_codes import ExitCode

NFD = {
    "en": "Can I return my shoes?",
    "th": "คืนรองเท้าได้ไหม",
    "vi": "Tôi có thể trả lại giày không?",
}


def test_scores_of_a_ranking_by_hand() -> None:
    assert query_scores(["a", "b", "c"], {"a"}, 10) == {"hit_rate": 1.0, "mrr": 1.0, "ndcg": 1.0}
    second = query_scores(["a", "b", "c"], {"b"}, 10)
    assert second["mrr"] == 0.5 and second["hit_rate"] == 1.0
    assert second["ndcg"] == pytest.approx(1 / math.log2(3))
    # two relevant, found at ranks 1 and 3: DCG 1 + 1/2, ideal 1 + 1/log2(3)
    both = query_scores(["a", "x", "b"], {"a", "b"}, 10)
    assert both["ndcg"] == pytest.approx(1.5 / (1 + 1 / math.log2(3)))
    # past the cut-off counts as not found
    late = query_scores([str(i) for i in range(11)], {"10"}, 10)
    assert late == {"hit_rate": 0.0, "mrr": 0.0, "ndcg": 0.0}


@pytest.mark.parametrize("language", ["en", "th", "vi"])
def test_the_same_feedback_in_nfc_and_nfd_is_one_triple(language: str) -> None:
    text = NFD[language]
    events = [
        {
            "query": unicodedata.normalize(form, text),
            "relevant": [unicodedata.normalize(form, "passage " + text)],
            "irrelevant": ["other"],
        }
        for form in ("NFC", "NFD")
    ]
    triples = triples_of(events)
    assert len(triples) == 2
    data = build_dataset(triples, holdout=0.0, seed=0)
    assert len(data.train) == 1
    assert data.train[0].query == unicodedata.normalize("NFC", text)
    assert data.corpus == [unicodedata.normalize("NFC", "passage " + text), "other"]


def test_every_positive_meets_every_negative_and_pairs_without_negatives() -> None:
    triples = triples_of(
        [
            {"query": "q", "relevant": ["p1", "p2"], "irrelevant": ["n1", "n2"]},
            {"query": "r", "relevant": ["p3"], "irrelevant": []},
        ]
    )
    assert {(t.positive, t.negative) for t in triples if t.query == "q"} == {
        ("p1", "n1"),
        ("p1", "n2"),
        ("p2", "n1"),
        ("p2", "n2"),
    }
    assert [t for t in triples if t.query == "r"] == [Triple("r", "p3")]


def test_the_split_is_by_query_stable_and_seeded() -> None:
    triples = [Triple(f"question {i}", f"answer {i}", f"answer {i + 1}") for i in range(200)]
    triples += [Triple(f"question {i}", f"other answer {i}") for i in range(200)]
    data = build_dataset(triples, holdout=0.2, seed=0)
    train_queries = {t.query for t in data.train}
    test_queries = {t.query for t in data.held_out}
    assert not train_queries & test_queries
    assert 40 <= len(test_queries) <= 80  # about a fifth of 200
    assert relevance(data.held_out)[next(iter(test_queries))]  # each has its positives
    again = build_dataset(list(reversed(triples)), holdout=0.2, seed=0)
    assert {t.query for t in again.held_out} == test_queries
    other = build_dataset(triples, holdout=0.2, seed=1)
    assert {t.query for t in other.held_out} != test_queries


@pytest.mark.slow
def test_too_few_triples_or_held_out_queries_exit_before_training(tmp_path: Path) -> None:
    few = [Triple(f"q{i}", f"p{i}") for i in range(5)]
    out = run_embed(base="unused", out=tmp_path / "c", triples=few)
    assert out.code == ExitCode.BELOW_MINIMUM and "5 triples" in out.report["reason"]
    many = [Triple(f"q{i}", f"p{i}") for i in range(30)]
    out = run_embed(base="unused", out=tmp_path / "c", triples=many, holdout=0.05)
    assert out.code == ExitCode.COLLECT_MORE and "held-out" in out.report["reason"]
    assert not (tmp_path / "c").exists()


def test_a_triples_file_with_a_bad_score_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"query": "q", "passage": "p", "score": 2}) + "\n")
    with pytest.raises(ValueError, match="score"):
        read_triples(path)
    code = cli.main(
        ["embed", "--base", "x", "--out", str(tmp_path / "c"), "--no-feedback"]
        + ["--triples", str(path)]
    )
    assert code == ExitCode.USAGE
    code = cli.main(["embed", "--base", "x", "--out", str(tmp_path / "c"), "--register", "n"])
    assert code == ExitCode.USAGE  # --register needs --upstream


def test_the_tiny_embedder_builds_deterministically(tiny_embedder: Path, tmp_path: Path) -> None:
    again = build_tiny_embedder(tmp_path / "again", seed=0)
    for name in ("model.safetensors", "tokenizer.json", "modules.json", "1_Pooling/config.json"):
        assert (again / name).read_bytes() == (tiny_embedder / name).read_bytes(), name


@pytest.mark.slow
def test_scored_pairs_train_with_cosine_similarity_and_are_evaluated(
    tiny_embedder: Path, tmp_path: Path
) -> None:
    from sentence_transformers import SentenceTransformer

    from tests.retrieval_data import examples

    path = tmp_path / "pairs.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for e in examples()[::5]:
            f.write(json.dumps({"query": e.query, "passage": e.relevant, "score": 1.0}) + "\n")
            f.write(json.dumps({"query": e.query, "passage": e.irrelevant, "score": 0.0}) + "\n")
    report = tmp_path / "report.json"
    code = cli.main(
        ["embed", "--base", str(tiny_embedder), "--out", str(tmp_path / "cand")]
        + ["--no-feedback", "--triples", str(path), "--epochs", "1", "--holdout", "0.3"]
        + ["--min-queries", "5", "--report", str(report)]
    )
    assert code in (ExitCode.OK, ExitCode.REJECTED)
    result = json.loads(report.read_text())
    assert result["triples"] == 80 and result["held_out_queries"] >= 5
    for side in ("base", "candidate"):
        assert set(result[side]) == {"hit_rate@10", "mrr@10", "ndcg@10"}
    trained = SentenceTransformer(str(tmp_path / "cand"), device="cpu")
    base = SentenceTransformer(str(tiny_embedder), device="cpu")
    text = examples()[0].query
    assert (trained.encode([text]) != base.encode([text])).any()  # the weights moved
