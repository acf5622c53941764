"""What the gateway accepts, the data keeps: typed records, and training lines made from them.

A real gateway in front of a scripted upstream (tool calls and ``n`` choices on demand)
and a real Redis; the dataset builder's steps run on the records the gateway stored.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import openai
import orjson
import pytest
import redis

from gateway.core import keys, records
from retrain import feedback_log
from retrain.config import RetrainConfig
from retrain.curate import DPO, SFT, Curator, TokenCounter, format_errors
from retrain.dataset import examples_from
from retrain.feedback_log import RatingEvent

from .helpers.records import stored
from .scripted_upstream import ScriptedUpstream
from .services import GatewayProcess, RedisProcess

RECORDS_DB = 13  # this module's interactions stay out of the other tests' database
API_KEY = "sk-records-0123456789"
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "order_status",
            "description": "Where an order is",
            "parameters": {"type": "object", "properties": {"order": {"type": "string"}}},
        },
    }
]
CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "order_status", "arguments": '{"order": "A17"}'},
}


def _answer(messages: list[dict[str, Any]]) -> Any:
    last = messages[-1].get("content")
    if isinstance(last, str) and "order" in last:
        return {"content": None, "tool_calls": [CALL]}
    return "Shoes can be returned within thirty days of delivery"


@dataclass
class Served:
    gateway: GatewayProcess
    client: openai.OpenAI
    redis: redis.Redis


@pytest.fixture(scope="module")
def served(
    redis_server: RedisProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    url = redis_server.url.rsplit("/", 1)[0] + f"/{RECORDS_DB}"
    r = redis.Redis.from_url(url)
    r.flushdb()
    upstream = ScriptedUpstream({"helper": _answer}).start()
    config = {
        "redis_url": url,
        "id_secret": "records-secret-0123456789",
        "auth": {"api_keys": [{"key": API_KEY, "name": "tests"}]},
        "upstreams": {"scripted": {"kind": "vllm", "base_url": upstream.base_url}},
        "models": {"helper": {"upstream": "scripted", "model": "helper"}},
    }
    gw = GatewayProcess(config, tmp_path_factory.mktemp("records"))
    try:
        gw.start()
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key=API_KEY, max_retries=0)
        yield Served(gw, client, r)
        client.close()
    finally:
        gw.stop()
        upstream.stop()


CONVERSATION: list[dict[str, Any]] = [
    {"role": "developer", "content": "You are the shop's helper. Answer briefly."},
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "Can I return shoes "},
            {"type": "text", "text": "I bought last week?"},
        ],
    },
]


def test_every_choice_tools_parts_and_the_header_user_are_kept(served: Served) -> None:
    reply = served.client.chat.completions.create(
        model="helper",
        messages=CONVERSATION,  # type: ignore[arg-type]
        tools=TOOLS,  # type: ignore[arg-type]
        n=2,
        extra_headers={"x-flywheel-user": "dana"},
    )
    rec = stored(served.redis, reply.id)
    assert rec["v"] == records.SCHEMA_VERSION
    assert rec["messages"] == CONVERSATION  # developer role and content parts as sent
    assert rec["tools"] == TOOLS and "tools" not in rec["params"]
    assert rec["params"]["n"] == 2
    assert rec["user"] == "dana"
    assert rec["answer"] == reply.choices[0].message.content
    assert rec["choices"] == [
        {
            "index": 1,
            "answer": reply.choices[1].message.content,
            "tool_calls": None,
            "finish_reason": "stop",
        }
    ]


def test_a_tool_call_answer_is_kept_whole_and_stored_compactly(served: Served) -> None:
    messages = [{"role": "user", "content": "Where is my order A17?"}]
    reply = served.client.chat.completions.create(
        model="helper",
        messages=messages,  # type: ignore[arg-type]
        tools=TOOLS,  # type: ignore[arg-type]
        user="erin",
    )
    assert reply.choices[0].message.tool_calls
    rec = stored(served.redis, reply.id)
    assert rec["tool_calls"] == [CALL] and rec["finish_reason"] == "tool_calls"
    assert rec["user"] == "erin"  # the body's user wins over the header
    raw = served.redis.get(keys.interaction(reply.id))
    assert raw is not None and len(raw) < len(orjson.dumps(rec))  # packed, not plain JSON


def test_records_stored_as_plain_json_by_earlier_versions_still_read() -> None:
    legacy = {
        "id": "r1",
        "experiment": None,
        "arm": "a",
        "messages": [{"role": "user", "content": "hi"}],
        "params": {"tools": TOOLS, "temperature": 0},
        "answer": "hello",
        "status": "ok",
    }
    rec = records.unpack(orjson.dumps(legacy))
    assert rec is not None and rec["v"] == records.SCHEMA_VERSION
    assert rec["tools"] == TOOLS and rec["choices"] is None and rec["shadow_of"] is None
    assert rec["workload"] is None

    # Version 2 (before workloads), as plain JSON and packed: read with no workload.
    v2 = records.unpack(orjson.dumps({**legacy, "v": 2, "tools": TOOLS, "choices": None}))
    assert v2 is not None and v2["v"] == records.SCHEMA_VERSION and v2["workload"] is None
    current = records.interaction({**legacy, "workload": "refunds", "in_context": 4})
    values = [current.get(name) for name in records.INTERACTION_FIELDS]
    values[0] = 2
    held = records.INTERACTION_FIELDS.index("workload")
    packed_v2 = b"\x00" + zlib.compress(orjson.dumps(values[:held]))  # as version 2 packed it
    rec = records.unpack(packed_v2, "r1")
    assert rec is not None and rec["v"] == records.SCHEMA_VERSION
    assert rec["workload"] is None and rec["answer"] == "hello" and rec["id"] == "r1"
    assert rec["in_context"] is None

    # Version 3 (before in-context models), as plain JSON and packed: no example count.
    v3 = records.unpack(orjson.dumps({**legacy, "v": 3, "tools": TOOLS, "workload": "refunds"}))
    assert v3 is not None and v3["v"] == records.SCHEMA_VERSION and v3["in_context"] is None
    assert v3["workload"] == "refunds"
    values[0] = 3
    held = records.INTERACTION_FIELDS.index("in_context")
    packed_v3 = b"\x00" + zlib.compress(orjson.dumps(values[:held]))  # as version 3 packed it
    rec = records.unpack(packed_v3, "r1")
    assert rec is not None and rec["v"] == records.SCHEMA_VERSION
    assert rec["workload"] == "refunds" and rec["in_context"] is None and rec["id"] == "r1"
    again = records.unpack(records.pack(current).record, "r1")
    assert again is not None and again["workload"] == "refunds" and again["in_context"] == 4


def _event(i: int, rid: str, score: float, correction: str | None = None) -> RatingEvent:
    fb: records.FeedbackEvent = {
        "v": records.SCHEMA_VERSION,
        "id": f"fb-{i}",
        "object": "feedback",
        "response_id": rid,
        "rater": "dana",
        "rating": "up" if score >= 0.5 else "down",
        "score": score,
        "failure": score < 0.5,
        "has_correction": correction is not None,
        "comment": None,
        "correction": correction,
        "tags": [],
        "tenant": None,
        "experiment": "shop",
        "arm": "a",
        "created": 0,
    }
    return RatingEvent(f"{i}-0", fb, False)


def _interaction(rid: str, messages: list[dict[str, Any]], **more: Any) -> Any:
    base = {"id": rid, "messages": messages, "status": "ok", "user": "dana", "answer": ""}
    return records.interaction({**base, **more})


def _curated(events: list[RatingEvent], interactions: dict[str, Any]) -> list[Any]:
    cfg = RetrainConfig(keep_good_share=1.0)
    gathered = examples_from(events, interactions, cfg, 0.5)
    curator = Curator(TokenCounter(None, "o200k_base"), 100_000, 0.8)
    kept = curator.deduplicate([], curator.clean(gathered.examples))
    assert not curator.dropped, curator.dropped
    return kept


def test_training_lines_keep_tool_calls_developer_messages_and_content_parts() -> None:
    asked = [*CONVERSATION[:1], {"role": "user", "content": "Where is my order A17?"}]
    tool_ix = _interaction("r-tool", asked, tools=TOOLS, tool_calls=[CALL])
    parts_ix = _interaction("r-parts", CONVERSATION, answer="Yes, within thirty days.")
    kept = _curated(
        [_event(1, "r-tool", 1.0), _event(2, "r-parts", 1.0)],
        {"r-tool": tool_ix, "r-parts": parts_ix},
    )
    lines = {ex.response_id: ex.line for ex in kept if ex.kind == SFT}
    tool_line = lines["r-tool"]
    assert format_errors(tool_line) == []
    assert tool_line["tools"] == TOOLS
    assert tool_line["messages"][0] == {"role": "system", "content": CONVERSATION[0]["content"]}
    assert tool_line["messages"][-1] == {"role": "assistant", "content": None, "tool_calls": [CALL]}
    parts_line = lines["r-parts"]
    assert format_errors(parts_line) == []
    assert parts_line["messages"][1] == {
        "role": "user",
        "content": "Can I return shoes I bought last week?",
    }


def test_every_rated_or_corrected_turn_of_a_conversation_trains_and_only_those() -> None:
    turns = [
        ("Can I return shoes?", "Yes, within thirty days of delivery."),
        ("Do I pay for the return label?", "No, the label is free for every order."),
        ("How long until the refund arrives?", "About two weeks."),
    ]
    messages: list[dict[str, Any]] = [{"role": "system", "content": "You help a shoe shop."}]
    interactions, events = {}, []
    for i, (question, answer) in enumerate(turns):
        messages = [*messages, {"role": "user", "content": question}]
        rid = f"turn-{i}"
        interactions[rid] = _interaction(rid, list(messages), answer=answer)
        messages = [*messages, {"role": "assistant", "content": answer}]
    events = [
        _event(1, "turn-0", 1.0),
        _event(2, "turn-1", 1.0),
        _event(3, "turn-2", 0.0, correction="Within five working days of us receiving them."),
    ]
    kept = _curated(events, interactions)
    sft = {ex.response_id: ex.line["messages"] for ex in kept if ex.kind == SFT}
    assert set(sft) == {"turn-0", "turn-1", "turn-2"}  # no turn lost as a near-duplicate
    last = sft["turn-2"]
    trained = [m["content"] for m in last if m["role"] == "assistant" and m.get("weight") != 0]
    assert trained == ["Within five working days of us receiving them."]
    history = [m for m in last if m["role"] == "assistant" and m.get("weight") == 0]
    assert [m["content"] for m in history] == [a for _, a in turns[:2]]
    assert any(ex.kind == DPO and ex.response_id == "turn-2" for ex in kept)
    dpo = next(ex.line for ex in kept if ex.kind == DPO)
    assert format_errors(dpo) == []
    assert all("weight" not in m for m in dpo["input"]["messages"])


def test_a_conversation_stores_its_system_prompt_and_earlier_turns_once(served: Served) -> None:
    system = {"role": "system", "content": "You are the shop's helper. " * 12}
    messages: list[dict[str, Any]] = [system]
    ids = []
    questions = ("Can I return shoes I bought last week?", "Is the label free?", "And boots?")
    for question in questions:
        messages = [*messages, {"role": "user", "content": question}]
        reply = served.client.chat.completions.create(
            model="helper",
            messages=messages,  # type: ignore[arg-type]
            max_tokens=200,
            extra_headers={"x-flywheel-user": "blocks"},
        )
        ids.append(reply.id)
        stored(served.redis, reply.id)
        messages = [*messages, {"role": "assistant", "content": reply.choices[0].message.content}]
    first, _, third = (feedback_log.interaction(served.redis, i) for i in ids)
    assert first is not None and third is not None
    assert third["messages"] == messages[:-1]  # whole again, blocks put back
    assert first["messages"] == messages[:2]
    packed = [records.unpack(served.redis.get(keys.interaction(i))) for i in ids]
    refs = [records.refs(p) for p in packed if p is not None]
    assert len(refs[0]) == 1 and refs[0][0] in refs[1]  # the system prompt: one block
    assert len(refs[1]) == 2 and set(refs[1]) < set(refs[2])  # turn 1: one block, reused
    assert len(refs[2]) == 3  # the system prompt and two earlier turns, each stored once
    assert all(served.redis.exists(keys.block(h)) for h in refs[2])


def test_the_archive_writes_messages_byte_for_byte_as_sent_blocks_put_back() -> None:
    system = {"role": "system", "content": "You help a shoe shop. " * 20}
    call = {"id": "call_1", "type": "function", "function": {"name": "track", "arguments": "{}"}}
    turn1 = [
        {"role": "user", "content": [{"type": "text", "text": "Où est ma commande ?"}]},
        {"role": "assistant", "content": None, "tool_calls": [call]},
    ]
    turn2 = [{"role": "tool", "tool_call_id": "call_1", "content": "shipped, 1.5 days"}]
    turn2 += [{"role": "assistant", "content": "It ships in 1.5 days \u2014 tomorrow."}]
    messages = [system, *turn1, *turn2, {"role": "user", "content": "Thanks!"}]
    first = records.pack(_interaction("r0", [system, *turn1]))
    packed = records.pack(_interaction("r1", messages), set(first.blocks))
    blocks = {**first.blocks, **packed.blocks}
    assert len(blocks) == 3  # the system prompt and both earlier turns are blocks
    values = records.unpack_values(packed.record, "r1")
    assert values is not None and values[records.INTERACTION_FIELDS.index("id")] == "r1"
    stored = values[records.INTERACTION_FIELDS.index("messages")]
    plain = {h: zlib.decompress(b) for h, b in blocks.items()}
    assert records.messages_json(stored, plain) == orjson.dumps(messages)
    # a block that left Redis leaves its reference, as reading the record does
    gone = next(h for h in blocks if h not in first.blocks)
    partial = {h: b for h, b in plain.items() if h != gone}
    rec = records.unpack(packed.record, "r1")
    assert rec is not None
    resolved = records.resolve(rec, {h: blocks[h] for h in partial})
    assert orjson.loads(records.messages_json(stored, partial)) == resolved["messages"]
    assert {records.EXCHANGE: gone} in resolved["messages"]
