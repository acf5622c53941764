"""``retrain embed``: retrieval feedback → a fine-tuned embedding model, evaluated and gated.

1. **Dataset.** Retrieval feedback (``POST /v1/feedback`` with ``relevant`` /
   ``irrelevant``, the stream ``fw:fb:retrieval``; the latest event per response and
   rater counts) and any triples file become (query, positive, negative) triples: every
   text NFC, duplicates dropped, in any language. Queries are split into training and
   held-out queries by a hash of the query (seeded), so no held-out query is trained on.
   Rows of a triples file may instead be scored pairs (``query``, ``passage``,
   ``score`` in [0, 1]).
2. **Training.** sentence-transformers, locally (GPU when there is one, else CPU):
   ``MultipleNegativesRankingLoss`` over (query, positive, negative) — every other
   positive in the batch is a negative too — or ``CosineSimilarityLoss`` when the rows
   are scored pairs.
3. **Evaluation.** Base and candidate each rank a corpus (every positive and negative,
   plus any corpus file) for each held-out query; per query Hit Rate@k, reciprocal rank
   @k and NDCG@k, with the query's positives as the relevant passages.
4. **Gate.** Like the chat gate: the paired bootstrap interval of the candidate's MRR@k
   gain over the base (``retrain.eval.confidence``, ``bootstrap_samples``, ``seed``);
   the candidate passes when the interval's lower bound is above ``--min-gain``.
5. **Register.** With ``--register NAME --upstream UP``, the candidate (saved under
   ``--out``, a directory vLLM serves with ``--runner pooling``) is registered in the
   gateway as ``NAME`` on that upstream (``POST /admin/models``), so that the gateway
   routes ``/v1/embeddings`` for ``NAME`` to the vLLM server started on the directory.

Exit codes as the other commands: 0 passed (and registered), 4 too few triples,
6 rejected, 7 too few held-out queries to judge, 1 error.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.core import keys
from gateway.core.text import nfc
from retrain.errors import InvalidInput
from retrain.uncertainty import Interval, paired_bootstrap


@dataclass(frozen=True)
class Triple:
    query: str
    positive: str
    negative: str | None = None
    score: float | None = None  # a scored pair (CosineSimilarityLoss): negative is None


@dataclass
class Dataset:
    train: list[Triple]
    held_out: list[Triple]
    corpus: list[str]
    sources: dict[str, int] = field(default_factory=dict)


def read_feedback(client: Any, ks: keys.Keyspace, model: str | None = None) -> list[dict[str, Any]]:
    """The retrieval feedback events in the stream, the latest per (response, rater)."""
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for _, fields in client.xrange(ks.retrieval_stream, "-", "+"):
        raw = fields.get(b"data") or fields.get("data")
        if raw is None:
            continue
        event = json.loads(raw)
        if model is not None and event.get("model") != model:
            continue
        latest[(event["response_id"], event["rater"])] = event
    return list(latest.values())


def triples_of(events: Iterable[dict[str, Any]]) -> list[Triple]:
    """(query, positive, negative) for every positive × negative of each event; a query
    without negatives gives (query, positive) pairs (the batch supplies the negatives)."""
    out: list[Triple] = []
    for event in events:
        query = nfc(event["query"])
        negatives = [nfc(n) for n in event.get("irrelevant") or []]
        for positive in event.get("relevant") or []:
            if negatives:
                out += [Triple(query, nfc(positive), neg) for neg in negatives]
            else:
                out.append(Triple(query, nfc(positive)))
    return out


def _lines(path: Path) -> list[tuple[int, str]]:
    """A file's non-blank lines, numbered; unreadable: :class:`InvalidInput`."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else f"not UTF-8 ({exc.reason})"
        raise InvalidInput(f"{path}: cannot read it: {reason or exc}") from None
    return [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]


def read_triples(path: Path) -> list[Triple]:
    """A JSON-lines file of {query, positive, negative?} or {query, passage, score}; a
    line that is neither is :class:`InvalidInput` naming it."""
    out: list[Triple] = []
    for n, line in _lines(path):
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise InvalidInput(f"{path}:{n}: not JSON: {exc}") from None
        if not isinstance(row, dict) or not isinstance(row.get("query"), str):
            raise InvalidInput(f"{path}:{n}: each line needs a 'query' string")
        if "score" in row:
            score = row["score"]
            if not isinstance(score, int | float) or not 0 <= score <= 1:
                raise InvalidInput(f"{path}:{n}: 'score' must be a number in [0, 1]")
            if not isinstance(row.get("passage"), str):
                raise InvalidInput(f"{path}:{n}: a scored line needs a 'passage' string")
            out.append(Triple(nfc(row["query"]), nfc(row["passage"]), None, float(score)))
        else:
            if not isinstance(row.get("positive"), str):
                raise InvalidInput(f"{path}:{n}: each line needs a 'positive' string")
            negative = row.get("negative")
            out.append(
                Triple(
                    nfc(row["query"]),
                    nfc(row["positive"]),
                    nfc(negative) if isinstance(negative, str) else None,
                )
            )
    return out


def read_corpus(path: Path) -> list[str]:
    """A corpus file: one passage a line, or JSON lines with a ``text`` field."""
    out = []
    for n, line in _lines(path):
        if line.lstrip().startswith("{"):
            try:
                line = json.loads(line)["text"]
            except (ValueError, KeyError, TypeError) as exc:
                raise InvalidInput(f"{path}:{n}: not JSON with a 'text' string ({exc})") from None
            if not isinstance(line, str):
                raise InvalidInput(f"{path}:{n}: 'text' must be a string")
        out.append(nfc(line.strip()))
    return out


def held_out(query: str, share: float, seed: int) -> bool:
    """Whether a query is held out: a seeded hash of the query, so a split is stable."""
    digest = hashlib.sha256(f"{seed}\x00{query}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def build_dataset(
    triples: Iterable[Triple], *, holdout: float, seed: int, corpus: Sequence[str] = ()
) -> Dataset:
    """Deduplicate, split by query, and gather the evaluation corpus."""
    unique = list(dict.fromkeys(t for t in triples if t.query and t.positive))
    train = [t for t in unique if not held_out(t.query, holdout, seed)]
    test = [t for t in unique if held_out(t.query, holdout, seed)]
    passages: list[str] = []
    for t in unique:
        passages.append(t.positive)
        if t.negative is not None:
            passages.append(t.negative)
    passages += list(corpus)
    return Dataset(train, test, list(dict.fromkeys(passages)))


def relevance(test: Sequence[Triple]) -> dict[str, set[str]]:
    """Each held-out query → its relevant passages (positives; a scored pair from 0.5)."""
    out: dict[str, set[str]] = {}
    for t in test:
        if t.score is None or t.score >= 0.5:
            out.setdefault(t.query, set()).add(t.positive)
    return out


def query_scores(ranked: Sequence[str], relevant: set[str], k: int) -> dict[str, float]:
    """Hit Rate@k, reciprocal rank@k and NDCG@k (binary relevance) of one ranking."""
    top = list(ranked[:k])
    hits = [1.0 if p in relevant else 0.0 for p in top]
    first = next((i for i, h in enumerate(hits) if h), None)
    dcg = sum(h / math.log2(i + 2) for i, h in enumerate(hits))
    ideal = sum(1 / math.log2(i + 2) for i in range(min(len(relevant), k)))
    return {
        "hit_rate": 1.0 if first is not None else 0.0,
        "mrr": 0.0 if first is None else 1.0 / (first + 1),
        "ndcg": dcg / ideal if ideal else 0.0,
    }


def evaluate(
    model: Any, queries: dict[str, set[str]], corpus: Sequence[str], k: int
) -> dict[str, dict[str, float]]:
    """Per held-out query, the scores of ``model``'s ranking of ``corpus``."""
    import numpy as np

    names = sorted(queries)
    q = np.asarray(model.encode(names, normalize_embeddings=True, batch_size=64))
    c = np.asarray(model.encode(list(corpus), normalize_embeddings=True, batch_size=64))
    sims = q @ c.T
    out = {}
    for i, name in enumerate(names):
        order = np.argsort(-sims[i], kind="stable")[:k]
        out[name] = query_scores([corpus[j] for j in order], queries[name], k)
    return out


def mean(scores: dict[str, dict[str, float]], metric: str) -> float:
    return math.fsum(s[metric] for s in scores.values()) / max(len(scores), 1)


def train(
    base: str,
    rows: Sequence[Triple],
    out: Path,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
) -> Any:
    """Fine-tune ``base`` on ``rows`` and save the candidate to ``out``; returns the model."""
    import torch
    from datasets import Dataset as HFDataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer import losses

    model = SentenceTransformer(base)
    scored = [t for t in rows if t.score is not None]
    if scored:
        data = HFDataset.from_dict(
            {
                "sentence1": [t.query for t in scored],
                "sentence2": [t.positive for t in scored],
                "score": [float(t.score or 0) for t in scored],
            }
        )
        loss: Any = losses.CosineSimilarityLoss(model)
    else:
        columns: dict[str, list[str]] = {
            "anchor": [t.query for t in rows],
            "positive": [t.positive for t in rows],
        }
        if all(t.negative is not None for t in rows):
            columns["negative"] = [t.negative or "" for t in rows]
        data = HFDataset.from_dict(columns)
        loss = losses.MultipleNegativesRankingLoss(model)
    args = SentenceTransformerTrainingArguments(
        output_dir=str(out.parent / f".{out.name}.work"),
        num_train_epochs=epochs,
        per_device_train_batch_size=batch_size,
        learning_rate=lr,
        warmup_steps=0.1,  # a share of the steps (sentence-transformers 6, transformers 5)
        seed=seed,
        data_seed=seed,
        save_strategy="no",
        report_to=[],
        logging_steps=10,
        disable_tqdm=True,
        batch_sampler="no_duplicates",
        dataloader_pin_memory=torch.cuda.is_available(),
    )
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=data, loss=loss)
    trainer.train()
    model.save(str(out))
    _keep_serving_files(Path(base), out)
    return model


def _keep_serving_files(base: Path, out: Path) -> None:
    """Carry the base's marker-free serving files the trainer does not write (the
    tokenizer config vLLM reads), so the candidate serves exactly as the base does."""
    import shutil

    if not base.is_dir():
        return
    for name in ("tokenizer_config.json", "tokenizer.json"):
        if (base / name).exists() and not (out / name).exists():
            shutil.copy2(base / name, out / name)


@dataclass
class Outcome:
    code: int
    report: dict[str, Any]


def run_embed(
    *,
    base: str,
    out: Path,
    triples: list[Triple],
    corpus: Sequence[str] = (),
    k: int = 10,
    holdout: float = 0.2,
    min_triples: int = 20,
    min_queries: int = 10,
    min_gain: float = 0.0,
    epochs: int = 3,
    batch_size: int = 16,
    lr: float = 1e-3,
    seed: int = 0,
    confidence: float = 0.95,
    samples: int = 2000,
) -> Outcome:
    """Dataset → train → evaluate → gate (registration is the caller's, on a pass)."""
    from sentence_transformers import SentenceTransformer

    from retrain.exit_codes import ExitCode

    data = build_dataset(triples, holdout=holdout, seed=seed, corpus=corpus)
    queries = relevance(data.held_out)
    report: dict[str, Any] = {
        "triples": len(data.train) + len(data.held_out),
        "train_triples": len(data.train),
        "held_out_queries": len(queries),
        "corpus": len(data.corpus),
        "k": k,
    }
    if report["triples"] < min_triples or not data.train:
        report["reason"] = f"{report['triples']} triples; at least {min_triples} are needed"
        return Outcome(ExitCode.BELOW_MINIMUM, report)
    if len(queries) < min_queries:
        report["reason"] = (
            f"{len(queries)} held-out queries; at least {min_queries} are needed to judge"
        )
        return Outcome(ExitCode.COLLECT_MORE, report)
    before = evaluate(SentenceTransformer(base), queries, data.corpus, k)
    candidate = train(base, data.train, out, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    after = evaluate(candidate, queries, data.corpus, k)
    gain: Interval = paired_bootstrap(
        [after[q]["mrr"] - before[q]["mrr"] for q in sorted(queries)],
        samples=samples,
        seed=seed,
        confidence=confidence,
    )
    for name, scores in (("base", before), ("candidate", after)):
        report[name] = {
            f"{metric}@{k}": round(mean(scores, metric), 4)
            for metric in ("hit_rate", "mrr", "ndcg")
        }
    report["mrr_gain"] = gain.as_dict()
    report["confidence"] = confidence
    report["passed"] = gain.low > min_gain
    report["candidate_dir"] = str(out)
    return Outcome(ExitCode.OK if report["passed"] else ExitCode.REJECTED, report)
