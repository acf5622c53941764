"""Workloads and distillation datasets: a request names what it is for, and the teacher's
answers to one workload become the examples a cheaper model learns from.

A real gateway in front of a scripted teacher (refund answers in English, Thai and
Vietnamese, and a tool call for order questions), on one Redis and on the cluster; the
dataset builder reads what the gateway stored.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
import yaml

from gateway.core import keys
from gateway.core.config import ArchiveConfig, load_settings
from gateway.core.records import INTERACTION_FIELDS, interaction
from gateway.ops.archive import (
    INTERACTIONS,
    Archiver,
    arrow_table,
    find_interactions,
    open_archive,
)
from retrain.config import RetrainSettings
from retrain.dataset import Builder
from retrain.forget import forget_pending

from .conftest import ADMIN_KEY, API_KEY, ID_SECRET
from .helpers import records
from .multilingual import pairs
from .polling import eventually
from .scripted_upstream import ScriptedUpstream
from .services import GatewayProcess
from .stores import STORES, Store, store_for

DISTILL_DB = 14  # this module's interactions stay out of the other tests' database
CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "order_status", "arguments": '{"order": "A17"}'},
}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "order_status",
            "parameters": {"type": "object", "properties": {"order": {"type": "string"}}},
        },
    }
]
# Questions and the teacher's answers, in each language; Thai and Vietnamese also in NFD.
QUESTIONS = {q: a for lang in ("en", "th", "vi") for q, a in pairs(lang, 4)}
QUESTIONS.update({unicodedata.normalize("NFD", q): a for q, a in pairs("vi", 6)[4:]})
QUESTIONS.update({unicodedata.normalize("NFD", q): a for q, a in pairs("th", 6)[4:]})


def _teacher(messages: list[dict[str, Any]]) -> Any:
    question = messages[-1]["content"]
    if question.startswith("Where is my order"):
        return {"content": None, "tool_calls": [CALL]}
    return QUESTIONS.get(question) or "I do not know."


def _judge(messages: list[dict[str, Any]]) -> str:
    """Refuses an answer that does not know; cannot make up its mind about order 1003."""
    text = messages[-1]["content"]
    answer = text.split("The assistant's answer:\n", 1)[1].split("\n\nShould a model", 1)[0]
    if "I do not know" in answer:
        return "REJECT"
    return "Hard to say." if "1003" in text else "ACCEPT."


@dataclass
class Served:
    gateway: GatewayProcess
    upstream: ScriptedUpstream
    client: openai.OpenAI
    store: Store


@pytest.fixture(scope="module", params=STORES)
def store(request: pytest.FixtureRequest) -> Store:
    return store_for(request, DISTILL_DB)


@pytest.fixture(scope="module")
def served(store: Store, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    upstream = ScriptedUpstream(
        {"teacher": _teacher, "other": lambda _m: "An answer from another model.", "judge": _judge}
    ).start()
    config = {
        **store.config,
        "id_secret": ID_SECRET,
        "auth": {
            "api_keys": [{"key": API_KEY, "name": "tests"}],
            "admin_keys": [{"key": ADMIN_KEY, "name": "ops"}],
        },
        "upstreams": {"scripted": {"kind": "vllm", "base_url": upstream.base_url}},
        "models": {
            "teacher": {"upstream": "scripted", "model": "teacher"},
            "other": {"upstream": "scripted", "model": "other"},
            "judge": {"upstream": "scripted", "model": "judge"},
        },
        "experiments": {"shop": {"arms": [{"model": "teacher", "weight": 1}]}},
    }
    gw = GatewayProcess(config, tmp_path_factory.mktemp("distill"))
    try:
        gw.start()
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key=API_KEY, max_retries=0)
        yield Served(gw, upstream, client, store)
        client.close()
    finally:
        gw.stop()
        upstream.stop()


def stored(served: Served, response_id: str) -> Any:
    with served.store.client() as r:
        return records.stored(r, response_id)


def ask(served: Served, model: str, question: str, **more: Any) -> str:
    tools = TOOLS if question.startswith("Where is my order") else openai.NOT_GIVEN
    reply = served.client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": question}],
        tools=tools,  # type: ignore[arg-type]
        **more,
    )
    return reply.id


def rate(served: Served, response_id: str, rating: str, correction: str | None = None) -> None:
    body: dict[str, Any] = {"response_id": response_id, "rating": rating}
    if correction:
        body["correction"] = correction
    headers = {"authorization": f"Bearer {API_KEY}"}
    resp = httpx.post(f"{served.gateway.base_url}/feedback", json=body, headers=headers)
    assert resp.status_code == 201, resp.text


def lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def settings_for(served: Served, tmp_path: Path, **retrain: Any) -> RetrainSettings:
    doc = yaml.safe_load(served.gateway.config_path.read_text())
    doc["retrain"] = {
        "dataset_dir": str(tmp_path / "datasets"),
        "min_examples": 1,
        "keep_good_share": 1.0,
        "split": {"validation": 0, "test": 0},
        "provider": "openai",
        "near_duplicate": 1.0,  # the refund answers differ in a number: each one is kept
        **retrain,
    }
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "retrain.yaml"
    path.write_text(yaml.safe_dump(doc))
    return load_settings(path, schema=RetrainSettings)


def build(served: Served, settings: RetrainSettings, experiment: str, **kwargs: Any) -> Any:
    with served.store.client() as r:
        builder = Builder(r, served.store.ks, settings, experiment, **kwargs)
        return builder.run()


def trained(result: Any) -> dict[str, Any]:
    """The train split of a written version: the last user message (NFC: a dataset's
    text is) → the answer line."""
    assert result.path is not None, result.message
    out = {}
    for line in lines(result.path / "train.jsonl"):
        messages = line["messages"]
        out[messages[-2]["content"]] = messages[-1]
    return out


def nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def test_a_request_names_its_workload_which_is_recorded_and_not_sent_upstream(
    served: Served,
) -> None:
    for question in QUESTIONS:
        rid = ask(served, "teacher", question, metadata={"workload": "support", "team": "a"})
        rec = stored(served, rid)
        assert rec["workload"] == "support"
        assert rec["messages"][-1]["content"] == question  # as sent, in its normal form
    sent = served.upstream.asked("teacher")[-1]
    assert sent["metadata"] == {"team": "a"}  # the gateway's label stays with the gateway
    rid = ask(served, "teacher", "hello", extra_headers={"x-flywheel-workload": "billing"})
    assert stored(served, rid)["workload"] == "billing"
    assert "metadata" not in served.upstream.asked("teacher")[-1]
    rid = ask(
        served,
        "teacher",
        "hello",
        metadata={"workload": "support"},
        extra_headers={"x-flywheel-workload": "billing"},
    )
    assert stored(served, rid)["workload"] == "support"  # the body's comes first
    assert stored(served, ask(served, "teacher", "hello"))["workload"] is None


@pytest.mark.parametrize(
    ("metadata", "header", "param"),
    [
        ({"workload": "w" * 65}, None, "metadata.workload"),
        ({"workload": "ฝ่ายบริการ"}, None, "metadata.workload"),
        ({"workload": "hỗ-trợ"}, None, "metadata.workload"),
        ({"workload": "a/b"}, None, "metadata.workload"),
        ({"workload": ""}, None, "metadata.workload"),
        ({"workload": 7}, None, "metadata.workload"),
        ({"team": ["a"]}, None, "metadata.team"),
        (None, "bad name!", "x-flywheel-workload"),
    ],
)
def test_a_bad_workload_is_refused_naming_it(
    served: Served, metadata: Any, header: str | None, param: str
) -> None:
    before = len(served.upstream.asked("teacher"))
    body: dict[str, Any] = {"model": "teacher", "messages": [{"role": "user", "content": "hi"}]}
    if metadata is not None:
        body["metadata"] = metadata
    headers = {"authorization": f"Bearer {API_KEY}"}
    if header is not None:
        headers["x-flywheel-workload"] = header
    resp = httpx.post(f"{served.gateway.base_url}/chat/completions", json=body, headers=headers)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["param"] == param and param in error["message"]
    assert error["type"] == "invalid_request_error" and set(error) >= {"message", "code"}
    assert len(served.upstream.asked("teacher")) == before  # refused before any upstream call


def test_the_teachers_answers_to_one_workload_become_a_distillation_dataset(
    served: Served, tmp_path: Path
) -> None:
    support = {q: ask(served, "teacher", q, metadata={"workload": "tickets"}) for q in QUESTIONS}
    order = "Where is my order A17?"
    support[order] = ask(served, "teacher", order, metadata={"workload": "tickets"})
    billing = ask(served, "teacher", "How do I pay an invoice?", metadata={"workload": "bills"})
    other = ask(served, "other", "Which model answers?", metadata={"workload": "tickets"})
    questions = list(QUESTIONS)
    down, fixed, up = questions[0], questions[5], questions[10]  # English, Thai, Vietnamese
    rate(served, support[down], "down")
    rate(served, support[fixed], "down", correction="ติดต่อฝ่ายบริการลูกค้าเพื่อขอคืนเงิน")
    rate(served, support[up], "up")

    result = build(
        served, settings_for(served, tmp_path), "shop", teacher="teacher", workload="tickets"
    )
    train = trained(result)
    assert nfc(down) not in train  # rated down: not the teacher's best
    assert train[nfc(fixed)]["content"] == "ติดต่อฝ่ายบริการลูกค้าเพื่อขอคืนเงิน"  # the correction wins
    for q in questions:
        if q not in (down, fixed):
            assert train[nfc(q)]["content"] == nfc(QUESTIONS[q])  # unrated or rated up
    assert train[order]["tool_calls"][0]["function"] == CALL["function"]  # the tool call kept
    assert "How do I pay an invoice?" not in train  # another workload
    assert "Which model answers?" not in train  # another model
    assert result.manifest["distill"]["teacher"] == "teacher"
    assert result.manifest["dropped"].get("rated_down") == 1
    assert {stored(served, billing)["workload"], stored(served, other)["arm"]} == {
        "bills",
        "other",
    }

    again = build(
        served, settings_for(served, tmp_path), "shop", teacher="teacher", workload="tickets"
    )
    assert again.status == "nothing-new"  # the next build reads only what came since

    rated_only = build(
        served,
        settings_for(served, tmp_path / "rated", distill={"unrated": False}),
        "shop",
        teacher="teacher",
        workload="tickets",
    )
    assert set(trained(rated_only)) == {nfc(fixed), nfc(up)}


def test_a_ratings_build_of_one_workload_leaves_the_others_out(
    served: Served, tmp_path: Path
) -> None:
    mine = [ask(served, "shop", q, metadata={"workload": "faq"}) for q in list(QUESTIONS)[:3]]
    theirs = ask(served, "shop", "How do I pay an invoice?", metadata={"workload": "bills"})
    for rid in [*mine, theirs]:
        rate(served, rid, "up")
    settings = settings_for(served, tmp_path)
    faq = trained(build(served, settings, "shop", workload="faq"))
    assert set(faq) == {nfc(q) for q in list(QUESTIONS)[:3]}
    everything = trained(build(served, settings, "shop"))
    assert set(faq) | {"How do I pay an invoice?"} <= set(everything)


def test_a_forgotten_user_leaves_the_workload_and_distillation_datasets(
    served: Served, tmp_path: Path
) -> None:
    questions = list(QUESTIONS)[:4]
    for i, q in enumerate(questions):  # dana asks the first two, erin the others
        user = "dana" if i < 2 else "erin"
        rid = ask(served, "shop", q, metadata={"workload": "privacy"}, user=user)
        rate(served, rid, "up")
    settings = settings_for(served, tmp_path)
    distilled = build(served, settings, "shop", teacher="teacher", workload="privacy")
    rated = build(served, settings, "shop", workload="privacy")
    assert set(trained(distilled)) == set(trained(rated)) == {nfc(q) for q in questions}

    resp = httpx.delete(
        f"{served.gateway.url}/admin/users/dana",
        headers={"authorization": f"Bearer {ADMIN_KEY}"},
    )
    assert resp.status_code == 200, resp.text
    with served.store.client() as r:
        forget_pending(r, served.store.ks, settings)
    left = {nfc(q) for q in questions[2:]}
    for root in (distilled.path.parent, rated.path.parent):
        version = root / (root / "latest").read_text().strip()
        rows = lines(version / "train.jsonl")
        assert {row["messages"][-2]["content"] for row in rows} == left


def test_the_teachers_answers_that_left_redis_before_a_build_come_from_the_archive(
    served: Served, tmp_path: Path
) -> None:
    """Builds further apart than the hot window: what left the interaction stream (and
    its ratings, Redis) since the last build is read from the archive, once."""
    qs = list(QUESTIONS)
    first, hot = qs[1], qs[9]
    gone = [qs[2], qs[6], qs[13]]  # English, Thai, Vietnamese sent in NFD
    settings = settings_for(served, tmp_path)
    ask(served, "teacher", first, metadata={"workload": "late"})
    v1 = build(served, settings, "shop", teacher="teacher", workload="late")
    assert set(trained(v1)) == {nfc(first)}

    ids = [ask(served, "teacher", q, metadata={"workload": "late"}) for q in gone]
    rate(served, ids[1], "down")  # the Thai answer: not the teacher's best
    rate(served, ids[2], "up")
    with served.store.client() as r:
        archiver = Archiver(r, served.store.ks, open_archive(settings.data_dir, settings.archive))
        try:  # the gateway's own archiver may hold the lock for a moment
            eventually(lambda: archiver.run_once().held_by is None, "an archive pass")
        finally:
            archiver.release()
        # What expiry and trimming do past the hot windows: records, ratings and the
        # stream entries up to the newest of them leave Redis.
        stream = served.store.ks.interaction_stream
        newest = max(
            keys.stream_id_order(keys.text(sid))
            for sid, fields in r.xrange(stream)
            if keys.text(fields[b"id"]) in ids
        )
        r.xtrim(stream, minid=f"{newest[0]}-{newest[1] + 1}", approximate=False)
        for rid in ids:
            r.delete(keys.interaction(rid), served.store.ks.feedback(rid))
    ask(served, "teacher", hot, metadata={"workload": "late"})

    v2 = build(served, settings, "shop", teacher="teacher", workload="late")
    assert set(trained(v2)) == {nfc(first), nfc(gone[0]), nfc(gone[2]), nfc(hot)}
    assert v2.manifest["dropped"].get("rated_down") == 1  # its rating read from the archive
    assert v2.manifest["distill"]["answers"] == 4  # the three archived and the hot one
    again = build(served, settings, "shop", teacher="teacher", workload="late")
    assert again.status == "nothing-new"


def test_a_judge_screens_the_teachers_unrated_answers_in_their_language(
    served: Served, tmp_path: Path
) -> None:
    qs = list(QUESTIONS)
    known = [qs[0], qs[4], qs[12]]  # English, Thai, Vietnamese sent in NFD
    unclear = qs[3]  # order 1003: the judge's reply is neither word
    unknown = "What is the meaning of life?"  # the teacher does not know
    liked = "Do you sell gift cards?"  # nor here, but a user rated it up: not screened
    ids = {
        q: ask(served, "teacher", q, metadata={"workload": "screened"})
        for q in [*known, unclear, unknown, liked]
    }
    rate(served, ids[liked], "up")
    before = len(served.upstream.asked("judge"))
    settings = settings_for(
        served,
        tmp_path,
        gateway_url=served.gateway.url,
        gateway_key=API_KEY,
        distill={"judge": "judge"},
    )
    result = build(served, settings, "shop", teacher="teacher", workload="screened")
    assert set(trained(result)) == {nfc(q) for q in [*known, unclear, liked]}
    assert result.manifest["dropped"]["judge_rejected"] == 1
    assert result.manifest["distill"]["judge"] == {
        "model": "judge",
        "screened": 5,
        "accepted": 3,
        "rejected": 1,
        "invalid": 1,  # kept: only a refusal leaves an answer out
    }
    prompts = [r["messages"][-1]["content"] for r in served.upstream.asked("judge")[before:]]
    assert len(prompts) == 5
    (thai,) = [p for p in prompts if nfc(qs[4]) in p]
    assert "The user writes in Thai" in thai and nfc(QUESTIONS[qs[4]]) in thai
    (vietnamese,) = [p for p in prompts if nfc(qs[12]) in p]  # the question reaches it in NFC
    assert "The user writes in Vietnamese" in vietnamese
    assert not any(liked in p for p in prompts)


def test_archived_interactions_written_before_workloads_still_read(tmp_path: Path) -> None:
    """A table written before records had a workload (no such column) takes rows that
    have one, and both read back."""
    archive = open_archive(tmp_path, ArchiveConfig())
    for n, workload in enumerate((None, "tickets")):  # the older version first
        rec = interaction(
            {"id": f"r{n}", "messages": [{"role": "user", "content": "hi"}], "answer": "hello"}
        )
        rec["workload"] = workload
        rec["created"] = 1767225600 + n * 86400  # 2026-01-01, then 2026-01-02
        columns: dict[str, list[Any]] = {"stream_id": [f"{n + 1}-0"]}
        columns.update({name: [rec.get(name)] for name in INTERACTION_FIELDS})
        table = arrow_table(INTERACTIONS, columns)
        if workload is None:  # as version 2 wrote it: no workload column at all
            table = table.drop_columns(["workload"])
            table = table.set_column(table.column_names.index("v"), "v", [[2]])
        archive.append(INTERACTIONS, table)
    found = find_interactions(archive, ["r0", "r1"])
    assert found["r1"]["workload"] == "tickets"
    assert found["r0"]["workload"] is None and found["r0"]["answer"] == "hello"
    only_old = find_interactions(archive, ["r0"], days={"2026-01-01"})
    assert only_old["r0"]["workload"] is None
