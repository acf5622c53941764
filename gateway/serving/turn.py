"""One request as it is served (:class:`Turn`): what its answer, its interaction record,
its headers and its metrics are made of, and the upstream body it sends.

vLLM sends a few fields as null where OpenAI's schema allows only a value or no key
(:func:`conform` takes them out), and streams tool calls in pieces
(:func:`merge_tool_calls` makes them whole).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.control.routing import Target
from gateway.core.auth import Principal
from gateway.core.records import SCHEMA_VERSION, Choice, InteractionRecord
from gateway.serving.spend import Hold

# Fields vLLM sends as null where OpenAI's schema allows only a value or no key at all.
NON_NULLABLE_MESSAGE = ("annotations", "function_call", "tool_calls")
NON_NULLABLE_USAGE = ("prompt_tokens_details", "completion_tokens_details")


def conform(doc: dict[str, Any], key: str) -> None:
    """Bring an upstream completion (``key="message"``) or chunk (``"delta"``) in line with
    OpenAI's response schema, changing only what the schema forbids (see test_openai_schema).
    """
    for choice in doc.get("choices") or ():
        conform_choice(choice, key)
    conform_usage(doc.get("usage"))


def conform_choice(choice: dict[str, Any], key: str) -> None:
    """:func:`conform` for one choice."""
    message = choice.get(key)
    if isinstance(message, dict):
        for name in NON_NULLABLE_MESSAGE:
            if name in message and message[name] is None:
                del message[name]
    logprobs = choice.get("logprobs")
    if isinstance(logprobs, dict):
        logprobs.setdefault("refusal", None)


def conform_usage(usage: Any) -> None:
    """:func:`conform` for a usage object."""
    if isinstance(usage, dict):
        for name in NON_NULLABLE_USAGE:
            if name in usage and usage[name] is None:
                del usage[name]


def merge_tool_calls(slots: dict[int, dict[str, Any]], calls: list[dict[str, Any]]) -> None:
    """Streamed tool-call deltas → whole calls (arguments arrive in pieces)."""
    for call in calls:
        slot = slots.setdefault(
            call.get("index", 0), {"id": None, "type": "function", "function": {}}
        )
        slot["id"] = call.get("id") or slot["id"]
        fn, part = slot["function"], call.get("function") or {}
        if part.get("name"):
            fn["name"] = part["name"]
        fn["arguments"] = fn.get("arguments", "") + (part.get("arguments") or "")


@dataclass
class MoreChoice:
    """A choice past the first (``n > 1``): kept in the record, not in the metrics."""

    answer: list[str] = field(default_factory=list)
    tool_calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    finish_reason: str | None = None

    def choice(self, index: int) -> Choice:
        return {
            "index": index,
            "answer": "".join(self.answer),
            "tool_calls": [self.tool_calls[i] for i in sorted(self.tool_calls)] or None,
            "finish_reason": self.finish_reason,
        }

    def take(self, part: dict[str, Any], finish_reason: str | None, delta: bool) -> None:
        if isinstance(content := part.get("content"), str) and content:
            self.answer.append(content)
        calls = part.get("tool_calls") or []
        if delta:
            merge_tool_calls(self.tool_calls, calls)
        else:
            self.tool_calls.update(enumerate(calls))
        self.finish_reason = finish_reason or self.finish_reason


@dataclass
class Turn:
    """One request being served: what the interaction record and metrics are made of."""

    id: str
    request_id: str
    t0: float
    doc: dict[str, Any]
    principal: Principal
    experiment: str | None
    assigned: Target
    target: Target
    stream: bool
    version: int = 0
    forced: bool = False
    unit: str | None = None  # the hashed user key the arm was assigned to (the decider's unit)
    user: str | None = None  # the x-flywheel-user header (the body's ``user`` comes first)
    workload: str | None = None  # metadata.workload, else the x-flywheel-workload header
    want_usage: bool = True
    limit_headers: dict[str, str] = field(default_factory=dict)  # x-ratelimit-*
    hold: Hold | None = None  # what the request holds of its budgets, settled at its end
    answer: list[str] = field(default_factory=list)
    tool_calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    finish_reason: str | None = None
    more: dict[int, MoreChoice] = field(default_factory=dict)  # choices 1… (n > 1)
    usage: dict[str, Any] | None = None
    ttft: float | None = None
    status: str = "ok"
    error: str | None = None
    done: bool = False  # saw the upstream's [DONE]
    relaying: bool = False  # the client's stream has started
    # A finishing chunk held back until the usage chunk we asked for (and remove) brings
    # the system_fingerprint vLLM puts there instead: sent with the next line.
    held: dict[str, Any] | None = None
    # The bytes around a text delta's content in this stream, the upstream's and ours
    # (relay.py: later deltas like it are spliced rather than decoded and encoded).
    text_shape: tuple[bytes, bytes, bytes, bytes] | None = None
    in_context: int | None = None  # how many in-context examples went in front (the target's)

    def record(self) -> InteractionRecord:
        params = {k: v for k, v in self.doc.items() if k not in ("messages", "model", "tools")}
        tools = self.doc.get("tools")
        return {
            "v": SCHEMA_VERSION,
            "id": self.id,
            "request_id": self.request_id,
            "created": int(time.time()),
            "experiment": self.experiment,
            "experiment_version": self.version,
            "forced": self.forced,
            "unit": self.unit,
            "arm": self.target.name,
            "assigned_arm": self.assigned.name,
            "fallback": self.target is not self.assigned,
            "upstream": self.target.upstream_name,
            "upstream_model": self.target.upstream_model,
            "user": self.doc.get("user") or self.user,
            "key_name": self.principal.name,
            "tenant": self.principal.tenant,
            "stream": self.stream,
            "messages": self.doc["messages"],
            "tools": tools if isinstance(tools, list) else None,
            "params": params,
            "answer": "".join(self.answer),
            "tool_calls": [self.tool_calls[i] for i in sorted(self.tool_calls)] or None,
            "choices": [c.choice(i) for i, c in sorted(self.more.items())] or None,
            "finish_reason": self.finish_reason,
            "usage": self.usage,
            "latency_ms": round((time.perf_counter() - self.t0) * 1000, 3),
            "ttft_ms": None if self.ttft is None else round((self.ttft - self.t0) * 1000, 3),
            "status": self.status,
            "error": self.error,
            "shadow_of": None,
            "judge_score": None,
            "workload": self.workload,
            "in_context": self.in_context,
        }

    def headers(self) -> dict[str, str]:
        h = {"x-request-id": self.request_id, "x-flywheel-arm": self.target.name}
        h.update(self.limit_headers)
        if self.experiment:
            h["x-flywheel-experiment"] = self.experiment
        if self.target is not self.assigned:
            h["x-flywheel-fallback-from"] = self.assigned.name
        return h

    def take_message(self, message: dict[str, Any]) -> None:
        if isinstance(content := message.get("content"), str):
            self.answer.append(content)
        for i, call in enumerate(message.get("tool_calls") or []):
            self.tool_calls[i] = call


def payload(turn: Turn) -> bytes:
    """The body sent upstream: the client's, with the upstream's model id, the in-context
    examples of an in-context model in front, and the usage chunk asked for."""
    out = dict(turn.doc)
    out["model"] = turn.target.upstream_model
    turn.in_context = None
    if turn.target.shots is not None:  # an in-context model: its examples go in front
        out["messages"], turn.in_context = turn.target.shots.messages(out["messages"])
    if turn.stream and not turn.want_usage:
        options = out.get("stream_options")
        out["stream_options"] = {
            **(options if isinstance(options, dict) else {}),
            "include_usage": True,
        }
    return orjson.dumps(out)
