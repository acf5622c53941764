"""retrain build: ratings made through the real gateway become a versioned dataset.

The gateway answers from the instant ``fixed-*`` upstream, on one Redis and on the
3-master cluster (the ``store`` parameter).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from gateway.core import keys
from gateway.core.store import keyspace
from retrain.curate import format_errors
from retrain.dataset import BELOW_MINIMUM, OK, OVER_COST_CAP, latest_version

from .conftest import API_KEY, CLIENT
from .fixed_gateway import fixed_gateway
from .helpers.datasets import build, lines, new_experiment, serve_and_rate, settings_for, sft
from .services import GatewayProcess
from .stores import STORES, Store, store_for

DATASET_DB = 2  # this module's experiments and ratings stay out of the other tests' database


@pytest.fixture(scope="module", params=STORES)
def store(request: pytest.FixtureRequest) -> Store:
    return store_for(request, DATASET_DB)


@pytest.fixture(scope="module")
def gateway(store: Store, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """This module's gateway, on its store (the session's gateway serves one Redis)."""
    with fixed_gateway(store, tmp_path_factory.mktemp("dataset-gw")) as (gw, _):
        yield gw


VOCAB = (
    "refund order parcel invoice courier warranty return label account password delivery "
    "address payment card discount voucher store opening hours size colour exchange damaged "
    "missing late tracking number email phone support manager"
).split()


def words(rng: random.Random, n: int = 14) -> str:
    return " ".join(rng.choice(VOCAB) for _ in range(n))


def pair(prompt: str, good: str, bad: str) -> dict[str, Any]:
    return {
        "input": {"messages": [{"role": "user", "content": prompt}]},
        "preferred_output": [{"role": "assistant", "content": good}],
        "non_preferred_output": [{"role": "assistant", "content": bad}],
    }


@pytest.mark.slow
def test_ratings_become_exactly_the_expected_sft_and_dpo_examples(
    gateway: GatewayProcess, store: Store, tmp_path: Path
) -> None:
    exp = new_experiment(gateway)
    a, b = "answer from fixed-a", "answer from fixed-b"
    items = [
        {
            "prompt": "Can I return shoes after 20 days?",
            "user": "u1",
            "rating": "down",
            "correction": "Yes: returns are accepted for 30 days.",
            "tags": ["returns"],
        },
        {"prompt": "Where is my parcel?", "user": "u2", "rating": 5},
        {"prompt": "Do you ship to Norway?", "user": "u3", "rating": 1},
        {"prompt": "Is the store open on Sunday?", "user": "u4", "rating": "up", "arm": "fixed-a"},
        {
            "prompt": "Is the store open on Sunday?",
            "user": "u5",
            "rating": "down",
            "arm": "fixed-b",
        },
        {"prompt": "What is the warranty?", "user": "u6", "rating": 3},
    ]
    ids = serve_and_rate(gateway, exp, items)
    settings, _ = settings_for(gateway, tmp_path, keep_good_share=1.0)
    result = build(settings, exp)
    assert result.exit_code == OK, result.message
    train = lines(result.path / "train.jsonl")
    expected_train = [
        sft(items[0]["prompt"], items[0]["correction"]),
        sft(items[1]["prompt"], a),
        sft(items[3]["prompt"], a),
    ]
    assert sorted(map(orjson.dumps, train)) == sorted(map(orjson.dumps, expected_train))
    preference = lines(result.path / "preference.jsonl")
    expected_pairs = [
        pair(items[0]["prompt"], items[0]["correction"], a),
        pair(items[3]["prompt"], a, b),
    ]
    assert sorted(map(orjson.dumps, preference)) == sorted(map(orjson.dumps, expected_pairs))
    for line in train + preference:
        assert format_errors(line) == []
    m = result.manifest
    assert m["counts"] == {"train": 3, "preference": 2} and m["neutral_ratings"] == 1
    assert m["by_source"]["train"] == {"correction": 1, "served": 2}
    assert len(m["feedback_events"]) == 6 and m["parent"] is None

    # Failures without a correction wait for a person, and come back as examples.
    queue, config = tmp_path / "review.jsonl", settings_for(gateway, tmp_path)[1]
    review = [sys.executable, "-m", "retrain", "review"]
    run = subprocess.run(
        [*review, "export", "--experiment", exp, "--out", str(queue), "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    queued = {row["response_id"]: row for row in lines(queue)}
    assert set(queued) == {ids[2], ids[4]}  # the 1-star answer and the thumbs-down one
    item = queued[ids[2]]
    assert item["answer"] == a and item["correction"] is None
    item["correction"] = "Yes, we ship to Norway in 3 days."
    queue.write_text("".join(json.dumps(row) + "\n" for row in queued.values()))
    run = subprocess.run(
        [*review, "import", "--experiment", exp, str(queue), "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0 and "stored 1 corrections" in run.stdout, run.stderr
    second = build(settings, exp)
    assert second.exit_code == OK and second.manifest["parent"] == m["id"]
    assert sft(items[2]["prompt"], item["correction"]) in lines(second.path / "train.jsonl")
    assert len(lines(second.path / "train.jsonl")) == 4
    with store.client() as r:
        still = r.hkeys(store.ks.review(exp))
    assert [keys.text(k) for k in still] == [ids[4]]  # the uncorrected one stays queued


def test_duplicates_near_duplicates_and_overlong_examples_are_dropped_with_reasons(
    gateway: GatewayProcess, tiny_model: Path, tmp_path: Path
) -> None:
    exp = new_experiment(gateway)
    rng = random.Random(3)
    long_text = words(rng, 60)
    items = [
        {
            "prompt": "How do refunds work?",
            "user": "u1",
            "rating": "down",
            "correction": "Refunds reach your card in five days.",
        },
        {
            "prompt": "How do refunds work?",
            "user": "u2",
            "rating": "down",
            "correction": "Refunds  reach your card in five days. ",
        },  # the same, once normalised
        {
            "prompt": "Tell me about the warranty please",
            "user": "u3",
            "rating": "down",
            "correction": long_text,
        },
        {
            "prompt": "Tell me about the warranty please",
            "user": "u4",
            "rating": "down",
            "correction": long_text.rsplit(" ", 1)[0] + " voucher",
        },  # one word changed
        {"prompt": "Write it all", "user": "u5", "rating": "down", "correction": words(rng, 600)},
    ]
    # The later of two near duplicates is the one dropped: rate the variant last, alone
    # (serve_and_rate rates a batch concurrently, in no fixed order).
    serve_and_rate(gateway, exp, items[:3] + items[4:])
    serve_and_rate(gateway, exp, items[3:4])
    settings, _ = settings_for(gateway, tmp_path, tokenizer=str(tiny_model), max_tokens=300)
    result = build(settings, exp)
    assert result.exit_code == OK, result.message
    assert result.manifest["tokenizer"] == str(tiny_model) and result.manifest["tokens_exact"]
    dropped = result.manifest["dropped"]
    # two of each kind (an SFT example and its preference pair)
    assert dropped == {"duplicate": 2, "near_duplicate": 2, "too_long": 2}
    kept = sorted(t["messages"][-1]["content"] for t in lines(result.path / "train.jsonl"))
    assert kept == sorted(["Refunds reach your card in five days.", long_text])


def rated_items(rng: random.Random, n: int, users: int, prefix: str) -> list[dict[str, Any]]:
    tags = ["billing", "delivery", "returns"]
    return [
        {
            "prompt": f"{prefix} {i}: {words(rng, 8)}?",
            "user": f"user-{rng.randrange(users)}",
            "rating": "down",
            "correction": words(rng),
            "tags": [tags[i % 3]],
        }
        for i in range(n)
    ]


def test_the_test_split_is_stable_across_versions_and_disjoint_by_user(
    gateway: GatewayProcess, tmp_path: Path
) -> None:
    exp = new_experiment(gateway)
    rng = random.Random(11)
    serve_and_rate(gateway, exp, rated_items(rng, 80, 40, "first"))
    settings, _ = settings_for(gateway, tmp_path, split={"validation": 0.15, "test": 0.2})
    v1 = build(settings, exp)
    assert v1.exit_code == OK, v1.message
    first = latest_version(settings.retrain.dataset_dir / exp)
    assert first is not None
    serve_and_rate(gateway, exp, rated_items(rng, 80, 60, "second"))  # old and new users
    v2 = build(settings, exp)
    assert v2.exit_code == OK and v2.manifest["parent"] == v1.manifest["id"]
    second = latest_version(settings.retrain.dataset_dir / exp)
    assert second is not None

    def by_split(version: Any) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {"train": set(), "validation": set(), "test": set()}
        for ex in version.examples:
            out[ex.split].add(orjson.dumps(ex.line).decode())
        return out

    s1, s2 = by_split(first), by_split(second)
    assert s1["test"] and s1["test"] <= s2["test"]  # a test example stays in test
    assert not (s2["test"] & (s2["train"] | s2["validation"]))
    groups: dict[str, set[str]] = {}
    for ex in second.examples:
        groups.setdefault(ex.group, set()).add(ex.split or "")
    assert all(len(splits) == 1 for splits in groups.values())  # no user across splits
    sft_counts = second.manifest["counts"]
    total = sft_counts["train"] + sft_counts["validation"] + sft_counts["test"]
    assert total == 160 and 0.1 < sft_counts["test"] / total < 0.3
    test_lines = lines(v2.path / "test.jsonl")
    assert len(test_lines) == sft_counts["test"]


def run_cli(config: Path, experiment: str, *extra: str, crash: str | None = None) -> Any:
    env = {**os.environ, "COLUMNS": "200"}
    if crash:
        env["FLYWHEEL_RETRAIN_CRASH_AT"] = crash
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "retrain",
            "build",
            "--experiment",
            experiment,
            "--config",
            str(config),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


@pytest.mark.slow
def test_a_killed_build_loses_no_event_and_repeats_none(
    gateway: GatewayProcess, store: Store, tmp_path: Path
) -> None:
    exp = new_experiment(gateway)
    rng = random.Random(5)
    serve_and_rate(gateway, exp, rated_items(rng, 20, 20, "one"))
    settings, config = settings_for(gateway, tmp_path)
    root = settings.retrain.dataset_dir / exp

    killed = run_cli(config, exp, crash="after-collect")
    assert killed.returncode == 137 and not (root / "latest").exists()
    first = run_cli(config, exp)
    assert first.returncode == 0, first.stderr
    v1 = latest_version(root)
    assert v1 is not None and len(v1.manifest["feedback_events"]) == 20

    serve_and_rate(gateway, exp, rated_items(rng, 10, 10, "two"))
    killed = run_cli(config, exp, crash="after-write")  # written, not acknowledged
    assert killed.returncode == 137
    v2 = latest_version(root)
    assert v2 is not None and v2.id != v1.id and len(v2.manifest["feedback_events"]) == 10
    again = run_cli(config, exp)
    assert again.returncode == 0 and "nothing new" in again.stdout
    assert latest_version(root).id == v2.id  # type: ignore[union-attr]

    ks = keyspace(settings)
    stream = store.client()
    mine = {
        keys.text(sid)
        for sid, f in stream.xrange(ks.feedback_stream)
        if orjson.loads(f[b"data"])["experiment"] == exp
    }
    e1, e2 = set(v1.manifest["feedback_events"]), set(v2.manifest["feedback_events"])
    assert e1 | e2 == mine and not (e1 & e2)
    pending = stream.xpending(ks.feedback_stream, keys.retrain_group(exp))
    assert pending["pending"] == 0
    stream.close()


@pytest.mark.slow
def test_below_the_minimum_the_build_refuses_with_the_counts(
    gateway: GatewayProcess, tmp_path: Path
) -> None:
    exp = new_experiment(gateway)
    rng = random.Random(8)
    items = rated_items(rng, 3, 3, "few")
    items.append({"prompt": "no fix", "user": "z", "rating": "down"})
    serve_and_rate(gateway, exp, items)
    settings, config = settings_for(gateway, tmp_path, min_examples=50)
    dry = run_cli(config, exp, "--dry-run")
    assert dry.returncode == BELOW_MINIMUM
    refused = run_cli(config, exp)
    assert refused.returncode == BELOW_MINIMUM
    assert "only 3 supervised examples (3 correction); at least 50 are needed" in refused.stderr
    assert "1 failures waiting in the review queue" in refused.stderr
    assert not (settings.retrain.dataset_dir / exp).exists()
    # nothing was acknowledged: with a lower bar the same events make the dataset
    _, lower = settings_for(gateway, tmp_path, min_examples=3)
    ok = run_cli(lower, exp)
    assert ok.returncode == 0, ok.stderr
    assert "train" in ok.stdout and "correction 3" in ok.stdout


@pytest.mark.slow
def test_dry_run_writes_nothing_and_the_cost_cap_stops_the_build(
    gateway: GatewayProcess, tmp_path: Path
) -> None:
    exp = new_experiment(gateway)
    serve_and_rate(gateway, exp, rated_items(random.Random(9), 12, 12, "cost"))
    prices = [{"provider": "openai", "model": "gpt-4o-mini-2024-07-18", "per_1m_tokens": 3.0}]
    settings, config = settings_for(gateway, tmp_path, prices=prices, cost_cap=0.0001)
    dry = run_cli(config, exp, "--dry-run")
    assert dry.returncode == OVER_COST_CAP and "over the cap 0.00 by" in dry.stderr
    _, uncapped = settings_for(gateway, tmp_path, prices=prices)
    dry = run_cli(uncapped, exp, "--dry-run")
    assert dry.returncode == 0 and "dry run: nothing written" in dry.stdout
    assert "estimated cost: openai gpt-4o-mini-2024-07-18, 3 epochs" in dry.stdout
    assert not (settings.retrain.dataset_dir / exp).exists()


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ({}, "missing_messages_list"),
        (
            {
                "messages": [
                    {"role": "robot", "content": "x"},
                    {"role": "assistant", "content": "y"},
                ]
            },
            "unrecognized_role",
        ),
        (
            {"messages": [{"role": "user"}, {"role": "assistant", "content": "y"}]},
            "message_missing_key",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "x", "mood": 1},
                    {"role": "assistant", "content": "y"},
                ]
            },
            "message_unrecognized_key",
        ),
        ({"messages": [{"role": "user", "content": "x"}]}, "example_missing_assistant_message"),
        (
            {"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "y"}]},
            "missing_content",
        ),
        (
            {
                "input": {"messages": [{"role": "user", "content": "x"}]},
                "preferred_output": [],
                "non_preferred_output": [{"role": "assistant", "content": "n"}],
            },
            "invalid_preferred_output",
        ),
    ],
)
def test_format_checks_follow_openais_recipe(line: dict[str, Any], error: str) -> None:
    assert error in format_errors(line)


def test_a_teacher_answers_failures_that_have_no_correction(
    gateway: GatewayProcess, tmp_path: Path
) -> None:
    exp = new_experiment(gateway)
    items = [{"prompt": "Do you ship to Norway?", "user": "u1", "rating": "down"}]
    serve_and_rate(gateway, exp, items)
    settings, _ = settings_for(
        gateway, tmp_path, teacher="fixed-b", gateway_url=gateway.url, gateway_key=API_KEY
    )
    result = build(settings, exp)
    assert result.exit_code == OK, result.message
    assert lines(result.path / "train.jsonl") == [sft(items[0]["prompt"], "answer from fixed-b")]
    assert result.manifest["by_source"]["train"] == {"teacher": 1}
    assert result.manifest["review_queue"]["added"] == 0


def test_a_group_the_stream_was_trimmed_past_builds_the_same_dataset_from_the_archive(
    gateway: GatewayProcess, store: Store, tmp_path: Path
) -> None:
    """An experiment nobody built for a while: the feedback stream was trimmed past its
    retrain group once archived (``feedback.hot_s``); the build reads what it missed from
    the archive and writes the dataset it would have written from the stream."""
    import asyncio
    import unicodedata

    from gateway.core.store import connect
    from gateway.ops.archive import Archiver, open_archive
    from gateway.serving.feedback import trim_feedback_stream

    from .multilingual import pairs
    from .polling import eventually

    exp = new_experiment(gateway)
    items = []
    for language in ("en", "th", "vi"):
        for form in ("NFC", "NFD"):
            for i, (question, fix) in enumerate(pairs(language, 3)):
                items.append(
                    {
                        "prompt": unicodedata.normalize(form, f"{question} ({form} {i})"),
                        "user": f"{language}-{form}-{i}",
                        "rating": "down",
                        "correction": unicodedata.normalize(form, fix),
                    }
                )
    rids = serve_and_rate(gateway, exp, items)
    # a rating replaced later: the latest one counts, from the archive as from the stream
    with httpx.Client() as c:
        again = {"response_id": rids[0], "rating": "up"}
        assert c.post(gateway.base_url + "/feedback", json=again, headers=CLIENT).status_code == 201
    settings, _ = settings_for(gateway, tmp_path)
    expected = build(settings, exp, dry_run=True)  # read from the stream, nothing written
    assert expected.exit_code == OK, expected.message
    assert len(expected.manifest["feedback_events"]) == len(items) + 1

    ks = keyspace(settings)
    client = store.client()
    try:
        archiver = Archiver(client, ks, open_archive(settings.data_dir, settings.archive))
        eventually(lambda: archiver.run_once().held_by is None, "the archive lock", 60)
        archiver.release()

        async def trim() -> str:
            aio = connect(store.url, cluster=store.cluster)
            try:  # a hot window of 0: whatever is archived goes
                return await trim_feedback_stream(aio, ks, retention_s=86400, hot_s=0)
            finally:
                await aio.aclose()

        asyncio.run(trim())
        left = [
            sid
            for sid, f in client.xrange(ks.feedback_stream)
            if orjson.loads(f[b"data"])["experiment"] == exp
        ]
        assert left == []  # the group never acknowledged them: trimmed all the same

        built = build(settings, exp)
        assert built.exit_code == OK and built.status == "written", built.message
        assert built.manifest["id"] == expected.manifest["id"]
        assert built.manifest["feedback_events"] == expected.manifest["feedback_events"]
        assert built.manifest["counts"] == expected.manifest["counts"]
        version = latest_version(settings.retrain.dataset_dir / exp)
        assert version is not None
        fixes = {ex["messages"][-1]["content"] for ex in lines(version.path / "train.jsonl")}
        assert unicodedata.normalize("NFC", items[1]["correction"]) in fixes
        assert not client.exists(ks.build_missed(exp))  # acknowledged: nothing left to re-read
        assert client.xpending(ks.feedback_stream, keys.retrain_group(exp))["pending"] == 0
        assert build(settings, exp).status == "nothing-new"  # read once, never again
    finally:
        client.close()
