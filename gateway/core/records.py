"""The records Flywheel keeps, typed and versioned: one definition for every writer and reader.

* :class:`InteractionRecord` — one answered (or failed) chat request, written by the
  gateway's interaction log, read by feedback, the console, ``retrain`` and the archive.
* :class:`FeedbackEvent` — one rating as stored (``fw:fb:*``) and streamed (``fw:fb:stream``).
* :class:`JobRecord` and :class:`RunRecord` — a fine-tuning job and an experiment's last
  ``retrain run`` (``retrain/jobs.py``).

Every record carries ``v``, the schema version it was written with. Readers go through
:func:`interaction` / :func:`feedback_event`, which bring older records up to the current
version (records written before versions existed are version 1), so no reader ever sees
an old shape. The archive's columnar schema (:func:`column_kinds`) is derived from the
same definitions: scalars become typed columns, nested values (messages, tools, usage…)
JSON text that any engine can parse.

In Redis an interaction is kept compactly (:func:`pack`): the values in the definition's
field order (no field names), zlib-compressed (below :data:`COMPRESS_MIN_BYTES`, in a
zlib stream without compression). Long messages (and a long answer, as the
assistant message it becomes in the conversation's next request) are stored once, as
blocks named by their content hash: the app's system prompt, and every earlier turn of a
conversation, are not stored again with each request. A packed record refers to them as
``{"$b": hash}`` until :func:`resolve` puts them back. :func:`unpack` also reads the plain
JSON that earlier versions stored, so an upgrade needs no migration.
"""

from __future__ import annotations

import base64
import hashlib
import types
import typing
import zlib
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal, TypedDict, Union, get_args, get_origin, get_type_hints

import orjson

from gateway.core.documents import Evaluation

SCHEMA_VERSION = 4
"""Version 2: ``v``, ``tools``, ``choices`` (every choice past the first when ``n > 1``),
``shadow_of`` and ``judge_score`` always present; ``user`` also from ``x-flywheel-user``.
Version 3: ``workload`` (the request's ``metadata.workload`` or ``x-flywheel-workload``).
Version 4: ``in_context`` (how many examples an in-context model put in front)."""

Status = Literal["ok", "error", "cancelled"]


class Choice(TypedDict):
    """One more choice of a request with ``n > 1`` (the first is the record itself)."""

    index: int
    answer: str
    tool_calls: list[dict[str, Any]] | None
    finish_reason: str | None


class InteractionRecord(TypedDict):
    v: int
    id: str  # the response id the client got (signed, time-stamped: gateway/core/ids.py)
    request_id: str
    created: int  # unix seconds
    experiment: str | None
    experiment_version: int
    forced: bool  # an admin forced the arm (x-flywheel-arm)
    unit: str | None  # hashed user key the arm was assigned to (experiments only)
    arm: str  # the arm that answered
    assigned_arm: str  # the arm assigned (differs after a fallback)
    fallback: bool
    upstream: str
    upstream_model: str
    user: str | None  # the request's ``user``, else the x-flywheel-user header
    key_name: str
    tenant: str | None
    stream: bool
    messages: list[dict[str, Any]]  # as the client sent them (roles, content parts, tools)
    tools: list[dict[str, Any]] | None
    params: dict[str, Any]  # every other request field (temperature, n, tool_choice…)
    answer: str  # choice 0's text
    tool_calls: list[dict[str, Any]] | None  # choice 0's tool calls
    choices: list[Choice] | None  # choices 1… when n > 1
    finish_reason: str | None
    usage: dict[str, Any] | None
    latency_ms: float
    ttft_ms: float | None
    status: str  # ok, error, cancelled
    error: str | None
    shadow_of: str | None  # a shadow answer: the id of the served response it copies
    judge_score: float | None  # a shadow answer: the judge's verdict in [0, 1]
    workload: str | None  # what the request is for (metadata.workload, x-flywheel-workload)
    # an in-context model: how many examples went in front of ``messages`` (which are the
    # client's own, without them); None for any other model
    in_context: int | None


class FeedbackEvent(TypedDict):
    v: int
    id: str  # fb-… (one per response and rater)
    object: str  # "feedback"
    response_id: str
    rater: str
    rating: str | int  # "up", "down" or 1–5
    score: float  # normalised to [0, 1]
    failure: bool
    has_correction: bool
    comment: str | None
    correction: str | None
    tags: list[str]
    tenant: str | None
    experiment: str | None
    arm: str
    created: int


class JobStatus(StrEnum):
    """A fine-tuning job's status (``retrain/jobs.py``), a label of the retrain gauges."""

    QUEUED = "queued"
    RUNNING = "running"
    STAGING = "staging"
    EVALUATING = "evaluating"
    CANCELLING = "cancelling"
    REGISTERED = "registered"
    REJECTED = "rejected"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL_JOB_STATUSES = frozenset(
    {JobStatus.REGISTERED, JobStatus.REJECTED, JobStatus.FAILED, JobStatus.CANCELLED}
)


class RunOutcome(StrEnum):
    """How a ``retrain run`` ended (``retrain/cycle.py``), a label of the retrain gauges."""

    CANARY = "canary"
    NOTHING_NEW = "nothing_new"
    BELOW_MINIMUM = "below_minimum"
    REJECTED = "rejected"
    CANCELLED = "cancelled"
    OVER_COST_CAP = "over_cost_cap"
    COLLECT_MORE = "collect_more"
    FAILED = "failed"


class JobRecord(TypedDict, total=False):
    """A fine-tuning job (``fw:job:{id}``); fields appear as the job goes on."""

    v: int
    id: str
    experiment: str
    provider: str
    dataset_id: str
    dataset_path: str
    dataset_parent: str | None  # the dataset version it was built on (its lineage)
    status: str
    created: float
    updated: float
    runner: str
    params: dict[str, Any]
    base_model: str  # local training: the model the adapter was trained on
    checkpoints: str  # local training: where its checkpoints are (a retry resumes there)
    checkpoint_step: int  # the last checkpoint's step
    training: dict[str, Any]  # local training's summary (steps, device, losses)
    provider_job: str  # a hosted fine-tuning job's id at its provider
    loss: list[dict[str, Any]]
    events: list[dict[str, Any]]
    result_model: str | None
    adapter_path: str | None
    model_name: str | None
    evaluation: Evaluation | None
    error: str | None


class RunRecord(TypedDict, total=False):
    """An experiment's last ``retrain run`` (a field of ``fw:retrain:runs``)."""

    v: int
    started: float
    finished: float
    outcome: str
    exit_code: int
    last_success: float
    job: str | None
    dataset: str | None
    examples: int


INTERACTION_FIELDS: tuple[str, ...] = tuple(InteractionRecord.__annotations__)
FEEDBACK_FIELDS: tuple[str, ...] = tuple(FeedbackEvent.__annotations__)

_INTERACTION_DEFAULTS: dict[str, Any] = {
    "tools": None,
    "choices": None,
    "shadow_of": None,
    "judge_score": None,
    "user": None,
    "unit": None,
    "ttft_ms": None,
    "error": None,
    "usage": None,
    "tool_calls": None,
    "finish_reason": None,
    "workload": None,
    "in_context": None,
}


def interaction(doc: dict[str, Any]) -> InteractionRecord:
    """Any stored interaction document, brought up to the current schema version."""
    version = doc.get("v", 1)
    if version < 2:
        params = doc.get("params") or {}
        doc = {**_INTERACTION_DEFAULTS, **doc, "v": SCHEMA_VERSION}
        if doc["tools"] is None and isinstance(params.get("tools"), list):
            doc["tools"] = params["tools"]
    elif version < SCHEMA_VERSION:
        doc = {"workload": None, "in_context": None, **doc, "v": SCHEMA_VERSION}
    return typing.cast(InteractionRecord, doc)


def feedback_event(doc: dict[str, Any]) -> FeedbackEvent:
    """Any stored feedback document, brought up to the current schema version."""
    if doc.get("v", 1) < 2:
        doc = {**doc, "v": SCHEMA_VERSION}
    return typing.cast(FeedbackEvent, doc)


# -- compact encoding (Redis) -----------------------------------------------------------

_PACKED = b"\x00"  # first byte of a packed record; plain JSON starts with '{'
BLOCK_MIN_BYTES = 200  # a shorter system prompt stays in the record: a key costs ~100 bytes
REF = "$b"  # {"$b": hash}: one message stored as a block
EXCHANGE = "$x"  # {"$x": hash}: the messages of one earlier turn stored as a block
_MESSAGES = INTERACTION_FIELDS.index("messages")
_ID = INTERACTION_FIELDS.index("id")


def block_hash(encoded: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(encoded).digest()[:12]).decode()


def exchanges(messages: list[dict[str, Any]]) -> tuple[int, list[tuple[int, int]], int]:
    """A conversation's parts: the leading system/developer messages (``[0, s)``), the
    earlier turns (each ``[i, j)``: what came in, up to the assistant's answer), and the
    start of this request's new input."""
    s = 0
    while s < len(messages) and messages[s].get("role") in ("system", "developer"):
        s += 1
    turns, begin = [], s
    for i in range(s, len(messages)):
        if messages[i].get("role") == "assistant":
            turns.append((begin, i + 1))
            begin = i + 1
    return s, turns, begin


@dataclass
class Packed:
    """A record packed for Redis: its bytes and the blocks it needs written (hash → bytes)."""

    record: bytes
    blocks: dict[str, bytes]
    refreshed: list[str]  # blocks it refers to that exist already: their expiry moves on


def block_candidates(rec: InteractionRecord) -> list[str]:
    """The earlier turns' block hashes of a record: the writer asks Redis which exist."""
    messages = rec["messages"]
    _, turns, _ = exchanges(messages)
    return [block_hash(orjson.dumps(messages[i:j])) for i, j in turns[:-1]]


def pack(rec: InteractionRecord, known: set[str] | frozenset[str] = frozenset()) -> Packed:
    """An interaction as stored in Redis: its values in field order (no names), compressed.

    Stored once, as blocks named by content hash: a long system prompt (every request of
    an app carries it), and the earlier turns of a conversation: a turn already in Redis
    (``known``: written by an earlier request of the conversation) is referred to; the last
    earlier turn is written as a new block when every turn before it is known (the next
    request will carry it again). A request whose history never came through the gateway
    keeps that history in its own record: blocks nobody else will use would cost more.
    """
    values: list[Any] = list(map(rec.get, INTERACTION_FIELDS))
    messages = rec["messages"]
    s, turns, _ = exchanges(messages)
    blocks: dict[str, bytes] = {}
    refreshed: list[str] = []
    out: list[Any] = []
    for m in messages[:s]:
        encoded = orjson.dumps(m)
        if len(encoded) < BLOCK_MIN_BYTES:
            out.append(m)
            continue
        h = block_hash(encoded)
        blocks[h] = zlib.compress(encoded, 6)
        out.append({REF: h})
    chained = True  # every earlier turn so far is a known block
    for n, (i, j) in enumerate(turns):
        encoded = orjson.dumps(messages[i:j])
        h = block_hash(encoded)
        if h in known:
            refreshed.append(h)
            out.append({EXCHANGE: h})
        elif n == len(turns) - 1 and chained:
            blocks[h] = zlib.compress(encoded, 6)
            out.append({EXCHANGE: h})
        else:
            chained = False
            out.extend(messages[i:j])
    out.extend(messages[turns[-1][1] if turns else s :])
    values[_MESSAGES] = out
    values[_ID] = None  # the key names it: unpack(raw, response_id) puts it back
    return Packed(_PACKED + _deflate(orjson.dumps(values)), blocks, refreshed)


COMPRESS_MIN_BYTES = 512
"""A packed record shorter than this is stored without compression (a zlib stream of
"stored" blocks, which every reader decompresses alike): compressing a few hundred bytes
costs ~160k instructions, mostly zlib's fixed per-call work, and saves ~100 bytes."""


def _deflate(encoded: bytes) -> bytes:
    if len(encoded) >= COMPRESS_MIN_BYTES:
        return zlib.compress(encoded, 9)
    stored = zlib.compressobj(0, zlib.DEFLATED, 9, 1)  # small window and state: cheap
    return stored.compress(encoded) + stored.flush()


def refs(rec: InteractionRecord) -> list[str]:
    """The block hashes a just-unpacked record refers to."""
    return [
        m.get(REF) or m[EXCHANGE]
        for m in rec["messages"]
        if isinstance(m, dict) and (REF in m or EXCHANGE in m)
    ]


def resolve_all(
    recs: list[InteractionRecord | None], fetch: typing.Callable[[list[str]], list[Any]]
) -> list[InteractionRecord | None]:
    """Resolve many records with one ``fetch`` of every block they need (hash → bytes)."""
    wanted = sorted({h for r in recs if r is not None for h in refs(r)})
    got = dict(zip(wanted, fetch(wanted), strict=True)) if wanted else {}
    parsed: dict[str, Any] = {}  # each block decoded once, however many records share it
    return [None if r is None else resolve(r, got, parsed) for r in recs]


def resolve(
    rec: InteractionRecord,
    blocks: dict[str, bytes | None],
    parsed: dict[str, Any] | None = None,
) -> InteractionRecord:
    """Put a record's blocks back (a block that is gone leaves its reference). Records
    resolved with one ``parsed`` cache share the decoded messages: treat them as read-only."""
    parsed = {} if parsed is None else parsed
    out: list[Any] = []
    for m in rec["messages"]:
        h = m.get(REF) or m.get(EXCHANGE) if isinstance(m, dict) else None
        if h and h not in parsed and blocks.get(h) is not None:
            parsed[h] = orjson.loads(zlib.decompress(blocks[h]))  # type: ignore[arg-type]
        block = parsed.get(h) if h else None
        if block is None:
            out.append(m)
        elif REF in m:
            out.append(block)
        else:
            out.extend(block)
    rec["messages"] = out
    return rec


def unpack(raw: bytes | str | None, response_id: str | None = None) -> InteractionRecord | None:
    """A stored interaction (packed, or the plain JSON of earlier versions); a packed one
    leaves its id to its key: give ``response_id`` to have it back."""
    if raw is None:
        return None
    if isinstance(raw, str):
        raw = raw.encode()
    if raw[:1] != _PACKED:
        doc = orjson.loads(raw)
        assert isinstance(doc, dict)
        return interaction(doc)
    values = _packed_values(raw, response_id)
    return typing.cast(InteractionRecord, dict(zip(INTERACTION_FIELDS, values, strict=True)))


def unpack_values(raw: bytes | str | None, response_id: str | None = None) -> list[Any] | None:
    """A stored interaction's values in field order (:data:`INTERACTION_FIELDS`), its
    blocks still referred to (:func:`messages_json` puts them back): what the archive
    makes its columns from, without building a record per interaction."""
    if raw is None:
        return None
    if isinstance(raw, str):
        raw = raw.encode()
    if raw[:1] != _PACKED:
        rec = unpack(raw)
        assert rec is not None
        return [rec.get(name) for name in INTERACTION_FIELDS]
    return _packed_values(raw, response_id)


_PACKED_FIELDS = {
    2: INTERACTION_FIELDS.index("workload"),
    3: INTERACTION_FIELDS.index("in_context"),
    SCHEMA_VERSION: len(INTERACTION_FIELDS),
}
"""How many values a record packed by each version holds: a later version's fields are
appended, so an earlier record reads with them at their defaults (``None``)."""


def _packed_values(raw: bytes, response_id: str | None) -> list[Any]:
    values: list[Any] = orjson.loads(zlib.decompress(raw[1:]))
    version = values[0]
    held = _PACKED_FIELDS.get(version)
    if held is None or len(values) != held:
        raise ValueError(f"unknown packed interaction version {version}")
    if held < len(INTERACTION_FIELDS):
        values += [None] * (len(INTERACTION_FIELDS) - held)
        values[0] = SCHEMA_VERSION
    if values[_ID] is None:
        values[_ID] = response_id
    return values


def messages_json(messages: list[Any], blocks: typing.Mapping[str, bytes | None]) -> bytes:
    """The JSON text of a record's messages with its blocks put back (``blocks``: hash →
    the block's JSON, decompressed; a block that is gone leaves its reference), byte for
    byte what ``orjson.dumps`` of the resolved messages writes — without decoding the
    blocks or encoding their messages again."""
    parts: list[bytes] = []
    for m in messages:
        h = m.get(REF) or m.get(EXCHANGE) if isinstance(m, dict) else None
        block = blocks.get(h) if h else None
        if block is None:
            parts.append(orjson.dumps(m))
        elif REF in m:
            parts.append(block)
        elif len(block) > 2:  # an exchange: a JSON array of messages, spliced in
            parts.append(block[1:-1])
    return b"[" + b",".join(parts) + b"]"


def text_of(content: Any, sep: str = "") -> str:
    """A message's text: its ``content`` string, or the text parts of a content-part array
    joined by ``sep`` (other parts, such as images, left out)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return sep.join(
            p["text"]
            for p in content
            if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        )
    return ""


def last_user_text(messages: Any, sep: str = "") -> str:
    """The text of the last user message ("" when there is none; a message without a
    role is the user's), its parts joined by ``sep``."""
    for m in reversed(messages if isinstance(messages, list) else []):
        if isinstance(m, dict) and m.get("role", "user") == "user":
            return text_of(m.get("content"), sep)
    return ""


def encode_feedback(rec: FeedbackEvent) -> bytes:
    return orjson.dumps(rec)


def decode_feedback(raw: bytes | str) -> FeedbackEvent:
    doc = orjson.loads(raw)
    assert isinstance(doc, dict)
    return feedback_event(doc)


# -- columnar schema (archive) ----------------------------------------------------------

JSON_COLUMN = "json"


def column_kinds(definition: type) -> dict[str, str]:
    """Each field's column kind: ``string``, ``int64``, ``float64``, ``bool`` or ``json``."""
    out = {}
    for name, hint in get_type_hints(definition).items():
        args = [a for a in get_args(hint) if a is not type(None)]
        if get_origin(hint) in (Union, types.UnionType) and len(args) == 1:
            hint = args[0]
        if hint is bool:
            out[name] = "bool"
        elif hint is int:
            out[name] = "int64"
        elif hint is float:
            out[name] = "float64"
        elif hint is str or get_origin(hint) is Literal:
            out[name] = "string"
        else:
            out[name] = JSON_COLUMN
    return out


def arrow_type(kind: str) -> Any:
    """The pyarrow type of a column kind (pyarrow imported on use)."""
    import pyarrow as pa

    return {
        "bool": pa.bool_(),
        "int64": pa.int64(),
        "float64": pa.float64(),
        "string": pa.string(),
        JSON_COLUMN: pa.string(),
    }[kind]


def to_row(rec: Any, kinds: dict[str, str]) -> dict[str, Any]:
    """One record as a row of its columnar schema (nested values as JSON text)."""
    row: dict[str, Any] = {}
    for name, kind in kinds.items():
        value = rec.get(name)
        if kind == JSON_COLUMN:
            row[name] = None if value is None else orjson.dumps(value).decode()
        elif kind == "float64" and isinstance(value, int) and not isinstance(value, bool):
            row[name] = float(value)
        else:
            row[name] = value
    return row


def from_row(row: dict[str, Any], kinds: dict[str, str]) -> dict[str, Any]:
    """A columnar row back into a record (JSON text parsed)."""
    return {
        name: (
            orjson.loads(row[name])
            if kind == JSON_COLUMN and row.get(name) is not None
            else row.get(name)
        )
        for name, kind in kinds.items()
    }


def latest_per_rater(*sources: list[FeedbackEvent]) -> list[FeedbackEvent]:
    """Ratings by rater, a later source winning (the archive's, then Redis's: the
    current ones), oldest first."""
    by_rater: dict[str, FeedbackEvent] = {}
    for ratings in sources:
        for r in ratings:
            by_rater[r["rater"]] = r
    return sorted(by_rater.values(), key=lambda r: (r["created"], r["rater"]))
