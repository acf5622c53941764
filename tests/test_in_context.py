"""An in-context model: a base model plus examples from a workload's traffic, put in front
of the conversation by the gateway.

A real gateway in front of a scripted base model that keeps what it was sent, on one Redis
and on the cluster; models registered through the admin API (a list of pairs, or a
distillation dataset's ``train.jsonl``) and from the config. The examples are the refund
questions and answers in English, Thai and Vietnamese (NFC and NFD).
"""

from __future__ import annotations

import subprocess
import sys
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

from .conftest import ADMIN, ADMIN_KEY, API_KEY, ID_SECRET
from .helpers import records
from .helpers.errors import assert_openai_error
from .multilingual import pairs
from .scripted_upstream import ScriptedUpstream
from .services import GatewayProcess
from .stores import STORES, Store, store_for

IN_CONTEXT_DB = 10  # this module's models and interactions stay out of the other tests' way
SYSTEM = {"role": "system", "content": "You answer a shop's customers."}
# Two refund examples per language (Vietnamese stored in NFD, as some clients send it).
REFUNDS = {
    "en": pairs("en", 2),
    "th": pairs("th", 2),
    "vi": [tuple(unicodedata.normalize("NFD", s) for s in p) for p in pairs("vi", 2)],
}
# In an order where the first two are neither the Thai nor the Vietnamese ones.
EXAMPLES: list[tuple[str, str]] = [
    REFUNDS["en"][0],
    ("What are your opening hours?", "We are open from 9 to 17, Monday to Friday."),
    *REFUNDS["th"],
    *REFUNDS["vi"],  # type: ignore[list-item]
    REFUNDS["en"][1],
    # another Vietnamese question, in NFC: a Vietnamese refund question in NFC is nearer
    # the NFD refund examples only when both are read in one Unicode form
    (
        "Làm sao để tôi đổi địa chỉ giao hàng cho đơn hàng số 1001?",
        "Bạn có thể đổi địa chỉ trên trang đơn hàng trước khi hàng được gửi đi.",
    ),
]
# A question in each language that is none of the examples (another order number).
QUERIES = {
    "en": pairs("en", 9)[8][0],
    "th": pairs("th", 9)[8][0],
    "th-nfd": unicodedata.normalize("NFD", pairs("th", 9)[8][0]),
    "vi": pairs("vi", 9)[8][0],
    "vi-nfd": unicodedata.normalize("NFD", pairs("vi", 9)[8][0]),
}


TAUGHT = {q: a for lang in ("en", "th", "vi") for q, a in pairs(lang, 6)}


def _base(messages: list[dict[str, Any]]) -> str:
    return f"Seen {len(messages)} messages."


def _teacher(messages: list[dict[str, Any]]) -> str:
    return TAUGHT.get(messages[-1]["content"], "I do not know.")


def _copier(messages: list[dict[str, Any]]) -> str:
    """A base model that learns in context as far as it can: it answers as the example
    just before the question (the most similar one) was answered."""
    answers = [m["content"] for m in messages[:-1] if m["role"] == "assistant"]
    return answers[-1] if answers else "I do not know."


@dataclass
class Served:
    gateway: GatewayProcess
    upstream: ScriptedUpstream
    client: openai.OpenAI
    store: Store
    dataset: Path


@pytest.fixture(scope="module", params=STORES)
def store(request: pytest.FixtureRequest) -> Store:
    return store_for(request, IN_CONTEXT_DB)


@pytest.fixture(scope="module")
def served(store: Store, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    upstream = ScriptedUpstream({"base": _base, "teacher": _teacher, "copier": _copier}).start()
    work = tmp_path_factory.mktemp("in-context")
    dataset = work / "train.jsonl"  # as a distillation dataset version writes it
    lines = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
        for q, a in EXAMPLES
    ]
    lines.insert(  # an answer that is a tool call teaches nothing in context: left out
        1,
        {
            "messages": [
                {"role": "user", "content": "Where is my order A17?"},
                {"role": "assistant", "content": None, "tool_calls": [{"id": "c1"}]},
            ]
        },
    )
    dataset.write_bytes(b"\n".join(orjson.dumps(line) for line in lines) + b"\n")
    config = {
        **store.config,
        "id_secret": ID_SECRET,
        "auth": {
            "api_keys": [{"key": API_KEY, "name": "tests"}],
            "admin_keys": [{"key": ADMIN_KEY, "name": "ops"}],
        },
        "upstreams": {"scripted": {"kind": "vllm", "base_url": upstream.base_url}},
        "models": {
            "base": {"upstream": "scripted", "model": "base"},
            "teacher": {"upstream": "scripted", "model": "teacher"},
            "copier": {"upstream": "scripted", "model": "copier"},
            "base-first": {
                "upstream": "scripted",
                "model": "base",
                "in_context": {
                    "examples": [{"user": q, "assistant": a} for q, a in EXAMPLES],
                    "k": 2,
                    "select": "first",
                },
            },
        },
        "experiments": {"shop": {"arms": [{"model": "teacher", "weight": 1}]}},
    }
    gw = GatewayProcess(config, work)
    try:
        gw.start()
        client = openai.OpenAI(base_url=gw.base_url, api_key=API_KEY, max_retries=0)
        yield Served(gw, upstream, client, store, dataset)
        client.close()
    finally:
        gw.stop()
        upstream.stop()


def register(served: Served, name: str, in_context: Any) -> httpx.Response:
    body = {"name": name, "upstream": "scripted", "model": "base", "in_context": in_context}
    return httpx.post(f"{served.gateway.url}/admin/models", headers=ADMIN, json=body)


def stored(served: Served, response_id: str) -> Any:
    with served.store.client() as r:
        return records.stored(r, response_id)


def sent_upstream(served: Served, before: int) -> list[dict[str, Any]]:
    """The messages of the one request the upstream got since ``before`` requests."""
    bodies = served.upstream.requests[before:]
    assert len(bodies) == 1
    messages: list[dict[str, Any]] = bodies[0]["messages"]
    return messages


def turns(pairs_: list[tuple[str, str]]) -> list[dict[str, str]]:
    out = []
    for q, a in pairs_:
        out += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    return out


def test_the_first_k_examples_go_between_the_system_message_and_the_conversation(
    served: Served,
) -> None:
    conversation = [
        SYSTEM,
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hello, how can I help?"},
        {"role": "user", "content": QUERIES["th"]},
    ]
    before = len(served.upstream.requests)
    reply = served.client.chat.completions.create(model="base-first", messages=conversation)  # type: ignore[arg-type]
    sent = sent_upstream(served, before)
    assert sent == [SYSTEM, *turns(EXAMPLES[:2]), *conversation[1:]]  # k = 2, in order
    assert reply.choices[0].message.content == "Seen 8 messages."
    assert reply.model == "base-first"

    rec = stored(served, reply.id)
    assert rec["messages"] == conversation  # the client's, without the examples
    assert rec["in_context"] == 2 and rec["arm"] == "base-first"


def test_a_plain_model_gets_the_conversation_as_sent(served: Served) -> None:
    before = len(served.upstream.requests)
    conversation = [{"role": "user", "content": QUERIES["en"]}]
    reply = served.client.chat.completions.create(model="base", messages=conversation)  # type: ignore[arg-type]
    assert sent_upstream(served, before) == conversation
    assert stored(served, reply.id)["in_context"] is None


def test_a_model_registered_from_a_dataset_file_takes_the_k_most_similar(
    served: Served,
) -> None:
    resp = register(served, "base-icl", {"examples": str(served.dataset), "k": 2})
    assert resp.status_code == 201, resp.text
    listed = httpx.get(f"{served.gateway.url}/admin/models/base-icl", headers=ADMIN).json()
    assert listed["in_context"]["k"] == 2 and listed["in_context"]["select"] == "similar"
    # the file's examples, the tool call left out, as they were written (NFD kept)
    assert [(e["user"], e["assistant"]) for e in listed["in_context"]["examples"]] == EXAMPLES

    for key, query in QUERIES.items():
        language = key.split("-")[0]
        before = len(served.upstream.requests)
        conversation = [SYSTEM, {"role": "user", "content": query}]
        reply = served.client.chat.completions.create(model="base-icl", messages=conversation)  # type: ignore[arg-type]
        sent = sent_upstream(served, before)
        assert sent[0] == SYSTEM and sent[-1] == conversation[-1] and len(sent) == 6
        chosen = [m["content"] for m in sent[1:-1:2]]
        assert all(m["role"] == "user" for m in sent[1:-1:2])
        assert all(m["role"] == "assistant" for m in sent[2:-1:2])
        # both refund examples of the query's own language, not the first two
        assert set(chosen) == {q for q, _ in REFUNDS[language]}, (key, chosen)
        rec = stored(served, reply.id)
        assert rec["messages"] == conversation and rec["in_context"] == 2


def test_a_streamed_request_gets_the_same_examples(served: Served) -> None:
    name = "base-icl-stream"
    examples = [{"user": q, "assistant": a} for q, a in EXAMPLES]
    assert register(served, name, {"examples": examples, "k": 1}).status_code == 201
    conversation = [{"role": "user", "content": QUERIES["vi-nfd"]}]
    before = len(served.upstream.requests)
    stream = served.client.chat.completions.create(
        model=name,
        messages=conversation,  # type: ignore[arg-type]
        stream=True,
    )
    chunks = list(stream)
    answer = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert answer == "Seen 3 messages."
    sent = sent_upstream(served, before)
    assert sent[:2] in (turns(REFUNDS["vi"][:1]), turns(REFUNDS["vi"][1:]))
    assert sent[2:] == conversation
    rec = stored(served, chunks[0].id)
    assert rec["stream"] is True and rec["messages"] == conversation and rec["in_context"] == 1


@pytest.mark.parametrize(
    ("in_context", "param", "says"),
    [
        ({"examples": [{"user": "q", "assistant": "a"}], "k": 0}, "in_context.k", "1"),
        ({"examples": [{"user": "q", "assistant": "a"}], "k": "2"}, "in_context.k", "integer"),
        ({"k": 2}, "in_context.examples", "required"),
        ({"examples": []}, "in_context.examples", "at least 1"),
        ({"examples": 5}, "in_context.examples", "list"),
        ({"examples": [{"user": "q"}]}, "in_context.examples[0].assistant", "required"),
        ({"examples": [{"user": "", "assistant": "a"}]}, "in_context.examples[0].user", "1"),
        ({"examples": [{"user": "q", "assistant": "a"}] * 501}, "in_context.examples", "500"),
        ({"examples": [{"user": "q" * 4001, "assistant": "a"}]}, "in_context.examples[0].user", ""),
        ({"examples": "/no/such/train.jsonl"}, "in_context.examples", "/no/such/train.jsonl"),
        (
            {"examples": [{"user": "q", "assistant": "a"}], "select": "best"},
            "in_context.select",
            "",
        ),
        ({"examples": [{"user": "q", "assistant": "a"}], "shots": 3}, "in_context.shots", ""),
        ("five examples", "in_context", ""),
    ],
)
def test_bad_in_context_registrations_are_400_naming_the_field(
    served: Served, in_context: Any, param: str, says: str
) -> None:
    err = assert_openai_error(register(served, "bad-icl", in_context), 400, param=param)
    assert says in err["message"]
    models = httpx.get(f"{served.gateway.url}/admin/models", headers=ADMIN).json()["data"]
    assert "bad-icl" not in {m["id"] for m in models}  # nothing registered


def test_a_dataset_file_that_cannot_be_used_is_400_naming_the_line(
    served: Served, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.jsonl"
    good = orjson.dumps({"messages": [{"role": "user", "content": "q"}]}).decode()
    broken.write_text(f"{good}\nnot json\n")
    err = assert_openai_error(
        register(served, "bad-icl", {"examples": str(broken)}), 400, "in_context.examples"
    )
    assert "line 2" in err["message"]
    broken.write_text(f"{good}\n")  # no assistant answer at all
    err = assert_openai_error(
        register(served, "bad-icl", {"examples": str(broken)}), 400, "in_context.examples"
    )
    assert "no example" in err["message"]


def retrain(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "retrain", *args, "--config", str(config)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_retrain_icl_gates_and_canaries_a_base_model_with_the_teachers_examples(
    served: Served, tmp_path: Path
) -> None:
    # Six customers each ask the teacher the workload's refund question in the three
    # languages; the split holds out two customers (a third): two questions a language.
    for i in range(6):
        for lang in ("en", "th", "vi"):
            served.client.chat.completions.create(
                model="shop",
                messages=[{"role": "user", "content": pairs(lang, 6)[i][0]}],
                metadata={"workload": "refunds"},
                user=f"customer-{i}",
            )
    doc = yaml.safe_load(served.gateway.config_path.read_text())
    doc["retrain"] = {
        "dataset_dir": str(tmp_path / "datasets"),
        "gateway_url": served.gateway.url,
        "gateway_key": API_KEY,
        "admin_key": ADMIN_KEY,
        "min_examples": 1,
        "keep_good_share": 1.0,
        "split": {"validation": 0, "test": 0.34, "seed": 0},
        "near_duplicate": 1.0,  # the refund answers differ in a number: each one is kept
        "split_together": 1.0,  # and the questions too: each customer's split is its own
        "canary_share": 0.05,
        "eval": {"min_examples": 2},
        "distill": {"margin": -0.2},  # an example's answer is another order's: close
    }
    config = tmp_path / "retrain.yaml"
    config.write_text(yaml.safe_dump(doc))
    distill = ("--experiment", "shop", "--teacher", "teacher", "--workload", "refunds")
    built = retrain(config, "build", "--distill", *distill)
    assert built.returncode == 0, built.stderr
    root = tmp_path / "datasets" / "shop" / "distill" / "teacher" / "workload" / "refunds"
    version = root / (root / "latest").read_text().strip()

    def questions(split: str) -> list[str]:
        lines = (version / f"{split}.jsonl").read_text().splitlines()
        return [orjson.loads(line)["messages"][0]["content"] for line in lines]

    trained, held_out = questions("train"), questions("test")
    assert len(held_out) == 6 and set(trained) | set(held_out) == set(TAUGHT)

    # No dataset of another workload: nothing is registered.
    missing = retrain(
        config, "icl", "--experiment", "shop", "--teacher", "teacher", "--base", "base",
        "--name", "shop-icl", "--workload", "orders",
    )  # fmt: skip
    assert missing.returncode == 1 and "retrain build" in missing.stderr, missing.stderr

    # A teacher that is no arm of the experiment: the candidate (or a student) would be
    # canaried beside nothing it replaces; a usage error naming the arms, nothing done.
    for command in (
        ("icl", "--base", "base", "--name", "shop-icl"),
        ("run", "--distill", "--student", "base"),
    ):
        wrong = retrain(
            config, command[0], "--experiment", "shop", "--teacher", "copier", *command[1:]
        )
        assert wrong.returncode == 2, wrong.stdout + wrong.stderr
        assert "'copier' is no arm of 'shop' (its arms: teacher)" in wrong.stderr, wrong.stderr
    gone = httpx.get(f"{served.gateway.url}/admin/models/shop-icl", headers=ADMIN)
    assert gone.status_code == 404, gone.text

    # A base that ignores its examples answers the held-out questions far from the
    # teacher: rejected by the gate, and nothing is left registered.
    rejected = retrain(config, "icl", *distill, "--base", "base", "--name", "shop-icl")
    assert rejected.returncode == 6, rejected.stdout + rejected.stderr
    assert "shop-icl not registered" in rejected.stdout and "6 test examples" in rejected.stdout
    gone = httpx.get(f"{served.gateway.url}/admin/models/shop-icl", headers=ADMIN)
    assert gone.status_code == 404, gone.text
    arms = httpx.get(f"{served.gateway.url}/admin/experiments/shop", headers=ADMIN).json()
    assert [a["model"] for a in arms["spec"]["arms"]] == ["teacher"]

    # One that answers as its nearest example does is within the margin: canaried.
    done = retrain(config, "icl", *distill, "--base", "copier", "--name", "shop-icl", "--k", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "shop-icl is a canary of 'shop' at 5%" in done.stdout
    arms = httpx.get(f"{served.gateway.url}/admin/experiments/shop", headers=ADMIN).json()
    weights = {a["model"]: a["weight"] for a in arms["spec"]["arms"]}
    assert weights == {"teacher": 1, "shop-icl": pytest.approx(1 * 0.05 / 0.95, abs=1e-6)}
    model = httpx.get(f"{served.gateway.url}/admin/models/shop-icl", headers=ADMIN).json()
    assert model["model"] == "copier" and model["in_context"]["k"] == 2
    assert {e["user"] for e in model["in_context"]["examples"]} == set(trained)  # no test
    assert model["lineage"]["teacher"] == "teacher" and model["lineage"]["workload"] == "refunds"

    # A user on the candidate's arm: two of the teacher's Thai answers go in front.
    thai = {q for q, _ in pairs("th", 6)} & set(trained)
    assert len(thai) == 4
    before = len(served.upstream.requests)
    question = unicodedata.normalize("NFD", QUERIES["th"])
    resp = httpx.post(
        f"{served.gateway.base_url}/chat/completions",
        headers={**ADMIN, "x-flywheel-arm": "shop-icl"},
        json={"model": "shop", "messages": [{"role": "user", "content": question}]},
    )
    assert resp.status_code == 200, resp.text
    sent = sent_upstream(served, before)
    assert len(sent) == 5 and sent[-1]["content"] == question
    assert {m["content"] for m in sent[:-1:2]} <= thai
    assert [m["content"] for m in sent[1:-1:2]] == [TAUGHT[m["content"]] for m in sent[:-1:2]]
    assert resp.json()["choices"][0]["message"]["content"] == sent[-2]["content"]


def test_only_an_admin_of_every_tenant_names_a_file_on_the_gateways_machine(
    served: Served,
) -> None:
    """A file path is read from the gateway's own disk, where another tenant's dataset
    may lie: a tenant's admin is refused and sends the examples themselves."""
    made = httpx.post(
        f"{served.gateway.url}/admin/keys",
        json={"name": "gamma-ops", "tenant": "gamma", "role": "admin"},
        headers=ADMIN,
    )
    assert made.status_code == 201, made.text
    gamma = {"Authorization": f"Bearer {made.json()['key']}"}
    body = {"name": "gamma-icl", "upstream": "scripted", "model": "base"}
    by_file = {**body, "in_context": {"examples": str(served.dataset)}}
    refused = httpx.post(f"{served.gateway.url}/admin/models", headers=gamma, json=by_file)
    assert refused.status_code == 403, refused.text
    error = refused.json()["error"]
    assert error["param"] == "in_context.examples" and error["code"] == "file_not_allowed"
    models = httpx.get(f"{served.gateway.url}/admin/models", headers=ADMIN).json()["data"]
    assert "gamma-icl" not in {m["id"] for m in models}  # nothing registered
    listed = [{"user": u, "assistant": a} for u, a in EXAMPLES[:2]]
    by_list = {**body, "in_context": {"examples": listed, "k": 1}}
    made = httpx.post(f"{served.gateway.url}/admin/models", headers=gamma, json=by_list)
    assert made.status_code == 201, made.text
    assert made.json()["tenant"] == "gamma"
