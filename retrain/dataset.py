"""``retrain build``: new ratings → the next version of an experiment's training dataset.

One build, in order:

1. **Collect** the experiment's new rating events through its consumer group
   (``retrain.<experiment>``) and join each with its interaction record: from Redis, or
   for one past ``interaction_log.hot_s``, from the archive (``gateway/ops/archive.py``).
   Events the group missed because the stream was trimmed past it (once archived and
   older than ``feedback.hot_s``) are read from the archive; the id it reads from is kept
   in Redis (``fw:build:missed:<experiment>``) until they are acknowledged. Events are
   acknowledged only after the dataset that includes them is written, so a crash
   loses nothing; a version's manifest lists its events, so a crash between writing and
   acknowledging cannot put an event into two versions. An experiment that belongs to a
   tenant trains on that tenant's ratings only (an admin of every tenant may call it and
   rate too: those ratings are acknowledged and left out); a shared one on everyone's.
2. **Turn them into examples** (latest rating per response and rater): a failure with a
   correction → a supervised example (the conversation + the correction) and a
   preference pair (correction over the served answer); a well-rated answer → a
   supervised example as served (``keep_good_share`` of them); an up-rated and a
   down-rated answer to the same conversation → a preference pair; a failure without a
   correction → the review queue (``retrain review``), or with a ``teacher`` configured,
   the teacher's answer through the gateway (``source: teacher``). Corrections written
   in the review queue come back as ``source: review``.
3. **Curate** (``curate.py``): normalise whitespace, optional redaction, OpenAI's format
   checks, token counts and the length limit, exact and near-duplicate removal against
   this and every earlier version, a cap per tag. Every drop is counted by reason.
4. **Accumulate and split**: the previous version's examples plus the new ones. A
   group (the user, else the conversation) lives in one split; groups already placed
   keep their split, so a test example stays in test in every later version; groups
   with near-identical examples (``split_together``) are placed as one; new groups are
   split deterministically (seeded), stratified by tag.
5. **Check** the minimum size and the cost cap, then **write** ``DIR/<experiment>/<id>/``
   atomically (temp dir + rename) and point ``DIR/<experiment>/latest`` at it.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import redis

from gateway.core import keys, paths
from gateway.core.documents import CostEstimate, Manifest, ReviewItem
from gateway.core.locks import Lock
from gateway.core.records import FeedbackEvent, InteractionRecord, latest_per_rater, text_of
from gateway.ops import archive_query
from gateway.ops.archive import default_url, find_interactions, open_archive

from . import tokens
from .config import RetrainConfig, RetrainSettings, TrainingPrice
from .curate import DPO, MESSAGE_KEYS, SFT, Curator, Example, TokenCounter
from .exit_codes import ExitCode
from .faults import crash_point
from .feedback_log import FeedbackConsumer, RatingEvent, load, ratings_of
from .versions import Version, dataset_id, experiment_tenant, latest_version, tally, write_version

OK, ERROR, USAGE = ExitCode.OK, ExitCode.ERROR, ExitCode.USAGE
OVER_COST_CAP, BELOW_MINIMUM, BUSY = ExitCode.OVER_COST_CAP, ExitCode.BELOW_MINIMUM, ExitCode.BUSY


@dataclass
class BuildResult:
    status: str  # written, dry-run, nothing-new, below-minimum, over-cost-cap
    exit_code: int
    message: str
    manifest: Manifest | None  # None: nothing was built (another build holds the lock)
    path: Path | None = None


def _hash_unit(*parts: str) -> float:
    """A deterministic number in [0, 1) from strings."""
    digest = hashlib.sha256("\x00".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _group(interaction: InteractionRecord) -> str:
    if interaction.get("user"):
        return f"user:{interaction['user']}"
    first: dict[str, Any] = next(
        (m for m in interaction["messages"] if m.get("role") == "user"), {}
    )
    return "conv:" + hashlib.sha256(orjson.dumps(first.get("content"))).hexdigest()[:16]


def _prompt_key(messages: list[dict[str, Any]]) -> str:
    return hashlib.sha256(orjson.dumps(messages)).hexdigest()


def _sft(
    messages: list[dict[str, Any]],
    answer: str | dict[str, Any],
    tools: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A supervised line: the conversation, then the answer to train on (text or a whole
    assistant message with tool calls); earlier assistant turns are context (weight 0)."""
    reply = {"role": "assistant", "content": answer} if isinstance(answer, str) else answer
    line: dict[str, Any] = {"messages": [*training_messages(messages), reply]}
    if tools:
        line["tools"] = tools
    return line


def _pair(
    messages: list[dict[str, Any]], good: str, bad: str, tools: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    inp: dict[str, Any] = {"messages": training_messages(messages, weights=False)}
    if tools:
        inp["tools"] = tools
    return {
        "input": inp,
        "preferred_output": [{"role": "assistant", "content": good}],
        "non_preferred_output": [{"role": "assistant", "content": bad}],
    }


def training_messages(messages: list[dict[str, Any]], weights: bool = True) -> list[dict[str, Any]]:
    """The client's messages in OpenAI's chat fine-tuning format.

    ``developer`` becomes ``system`` (what the format names it); a content-part array of
    text only becomes its text (other parts, e.g. images, stay as parts); tool calls and
    tool results stay; earlier assistant turns get ``weight: 0`` so a line trains only
    on the answer that was rated (each rated turn of a conversation is its own line).
    """
    out = []
    for m in messages:
        msg = {k: v for k, v in m.items() if k in MESSAGE_KEYS}
        if msg.get("role") == "developer":
            msg["role"] = "system"
        content = msg.get("content")
        if isinstance(content, list) and all(
            isinstance(p, dict) and p.get("type") == "text" for p in content
        ):
            msg["content"] = text_of(content)
        if msg.get("role") == "assistant":
            if weights:
                msg["weight"] = 0
            else:
                msg.pop("weight", None)
        out.append(msg)
    return out


def _answer_text(ix: InteractionRecord) -> str:
    """The served answer as a judge reads it: its text, and its tool calls as JSON."""
    calls = ix.get("tool_calls")
    text = ix.get("answer") or ""
    if calls:
        text = (text + "\n" if text else "") + orjson.dumps(calls).decode()
    return text


def _served(ix: InteractionRecord) -> str | dict[str, Any]:
    """The served answer as the assistant message to train on (with its tool calls)."""
    answer = ix.get("answer") or ""
    calls = ix.get("tool_calls")
    if not calls:
        return answer
    return {
        "role": "assistant",
        "content": answer or None,
        "tool_calls": [
            {
                "id": c.get("id") or f"call_{i}",
                "type": "function",
                "function": {
                    "name": (c.get("function") or {}).get("name"),
                    "arguments": (c.get("function") or {}).get("arguments") or "",
                },
            }
            for i, c in enumerate(calls)
        ],
    }


@dataclass
class Gathered:
    examples: list[Example] = field(default_factory=list)
    review: dict[str, ReviewItem] = field(default_factory=dict)  # response id → item
    review_used: list[str] = field(default_factory=list)
    dropped: Counter[str] = field(default_factory=Counter)
    neutral: int = 0


def examples_from(
    events: list[RatingEvent],
    interactions: dict[str, InteractionRecord | None],
    cfg: RetrainConfig,
    failure_threshold: float,
    teacher: Callable[[list[dict[str, Any]]], str | None] | None = None,
) -> Gathered:
    """Step 2: rating events (with their interactions) → examples and review items."""
    out = Gathered()
    latest: dict[tuple[str, str], RatingEvent] = {}
    for ev in events:  # stream order: a later rating by the same rater replaces
        latest[(ev.record["response_id"], ev.record["rater"])] = ev
    goods: dict[str, list[tuple[str, RatingEvent, dict[str, Any]]]] = defaultdict(list)
    bads: dict[str, list[tuple[str, RatingEvent, dict[str, Any]]]] = defaultdict(list)
    for ev in latest.values():
        rec, rid = ev.record, ev.record["response_id"]
        ix = interactions.get(rid)
        if ix is None:
            out.dropped["interaction_missing"] += 1
            continue
        messages, answer, tools = ix["messages"], ix.get("answer") or "", ix.get("tools")
        served = _served(ix)
        meta: dict[str, Any] = {
            "group": _group(ix),
            "tags": list(rec.get("tags") or []),
            "events": [ev.stream_id],
            "response_id": rid,
        }
        pkey = _prompt_key(messages)
        if rec["score"] < failure_threshold:
            if answer and ix.get("status") == "ok":
                bads[pkey].append((answer, ev, meta))
            if fix := rec.get("correction"):
                out.examples.append(Example(SFT, _sft(messages, fix, tools), "correction", **meta))
                if answer:
                    pair = _pair(messages, fix, answer, tools)
                    out.examples.append(Example(DPO, pair, "pair", **meta))
                continue
            taught = teacher(messages) if teacher else None
            if taught:
                out.examples.append(Example(SFT, _sft(messages, taught, tools), "teacher", **meta))
            else:
                out.review[rid] = {
                    "response_id": rid,
                    "experiment": rec.get("experiment"),
                    "arm": rec.get("arm"),
                    "messages": messages,
                    "tools": tools,
                    "answer": answer,
                    "comment": rec.get("comment"),
                    "tags": meta["tags"],
                    "group": meta["group"],
                    "correction": None,
                }
        elif rec["score"] >= cfg.good_threshold and served and ix.get("status") == "ok":
            if answer:
                goods[pkey].append((answer, ev, meta))
            if _hash_unit("keep", rid) < cfg.keep_good_share:
                out.examples.append(Example(SFT, _sft(messages, served, tools), "served", **meta))
        else:
            out.neutral += 1
    for pkey, bad_list in bads.items():  # the same conversation answered well and badly
        for (good, _, gmeta), (bad, _, bmeta) in zip(goods.get(pkey, []), bad_list, strict=False):
            gix = interactions[gmeta["response_id"]]
            assert gix is not None
            meta = {**bmeta, "events": gmeta["events"] + bmeta["events"]}
            pair = _pair(gix["messages"], good, bad, gix.get("tools"))
            out.examples.append(Example(DPO, pair, "pair", **meta))
    return out


def reviewed_examples(items: dict[str, dict[str, Any]]) -> tuple[list[Example], list[str]]:
    """Review items that people corrected → examples (and their ids, to remove later)."""
    examples, used = [], []
    for rid, item in items.items():
        fix = item.get("correction")
        if not isinstance(fix, str) or not fix.strip():
            continue
        meta = {
            "group": item["group"],
            "tags": item.get("tags") or [],
            "events": [],
            "response_id": rid,
        }
        tools = item.get("tools")
        examples.append(Example(SFT, _sft(item["messages"], fix, tools), "review", **meta))
        if item.get("answer"):
            examples.append(
                Example(DPO, _pair(item["messages"], fix, item["answer"], tools), "review", **meta)
            )
        used.append(rid)
    return examples, used


def assign_splits(
    kept: list[Example],
    new: list[Example],
    cfg: RetrainConfig,
    links: Sequence[tuple[Example, Example]] = (),
) -> None:
    """Groups keep the split they have; new groups are split by tag stratum (seeded).

    ``links`` are pairs of near-identical examples (``Curator.links``): two users who
    sent the same question and got the same answer would otherwise put one copy in
    train and the other in test, and the test would measure recall. Linked groups are
    one group here (union-find): a new group linked to placed ones takes their split
    (test before validation before train: a test answer in training leaks, a training
    answer in test only costs an example); linked new groups are split as one.
    """
    present = {id(ex) for ex in kept} | {id(ex) for ex in new}
    joined = _Groups()
    for a, b in links:
        if id(a) in present and id(b) in present:
            joined.union(a.group, b.group)
    placed = {ex.group: ex.split or "train" for ex in kept}
    by_root: dict[str, str] = {}
    for group, split in placed.items():
        root = joined.find(group)
        if root not in by_root or _HELD_OUT[split] > _HELD_OUT[by_root[root]]:
            by_root[root] = split
    fresh: dict[str, list[Example]] = defaultdict(list)
    for ex in new:
        root = joined.find(ex.group)
        if ex.group in placed:
            ex.split = placed[ex.group]
        elif root in by_root:
            ex.split = by_root[root]
        else:
            fresh[root].append(ex)
    strata: dict[str, list[str]] = defaultdict(list)
    for group, exs in fresh.items():
        strata[exs[0].tags[0] if exs[0].tags else ""].append(group)
    seed = str(cfg.split.seed)
    test, validation = cfg.split.test, cfg.split.test + cfg.split.validation
    for groups in strata.values():
        # In seeded hash order, each group takes the split its middle example falls in.
        groups.sort(key=lambda g: _hash_unit(seed, g))
        total, before = sum(len(fresh[g]) for g in groups), 0
        for g in groups:
            middle = (before + len(fresh[g]) / 2) / total
            split = "test" if middle < test else "validation" if middle < validation else "train"
            before += len(fresh[g])
            for ex in fresh[g]:
                ex.split = split


_HELD_OUT = {"train": 0, "validation": 1, "test": 2}  # which split a linked group joins


class _Groups:
    """Union-find over group names; a set's root is its least name (deterministic)."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, group: str) -> str:
        parent = self.parent
        while (up := parent.get(group, group)) != group:
            parent[group] = parent.get(up, up)  # path halving
            group = up
        return group

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def trained_on(ex: Example) -> bool:
    """Whether training reads the example (the train split and the train pairs)."""
    return (ex.split or "train") == "train" if ex.kind != DPO else ex.split == "train"


def price_counter(
    settings: RetrainSettings, price: TrainingPrice, counter: TokenCounter
) -> TokenCounter:
    """What a training price's tokens are counted with: the priced model's tokenizer
    (``counter``, the build's own, where that is the same one)."""
    if price.provider == "openai":
        priced = tokens.openai(price.model)
    elif settings.retrain.provider == "local":
        return counter  # the build counts with the local base model's tokenizer already
    else:
        priced = tokens.first(lambda: tokens.local(price.model))
    return counter if priced.name == counter.name else TokenCounter(priced)


def _teacher(settings: RetrainSettings) -> Callable[[list[dict[str, Any]]], str | None] | None:
    cfg = settings.retrain
    if not cfg.teacher:
        return None
    from openai import OpenAI, OpenAIError

    client = OpenAI(
        base_url=cfg.gateway_url.rstrip("/") + "/v1",
        api_key=cfg.gateway_key.get_secret_value() or "-",
        max_retries=2,
        timeout=120,
    )

    def ask(messages: list[dict[str, Any]]) -> str | None:
        try:
            reply = client.chat.completions.create(model=cfg.teacher or "", messages=messages)  # type: ignore[arg-type]
        except OpenAIError:
            return None
        return reply.choices[0].message.content or None

    return ask


def dataset_root(
    base: Path, experiment: str, *, workload: str | None = None, teacher: str | None = None
) -> Path:
    """Where an experiment's dataset versions live: ``DIR/<experiment>/``; a distillation
    dataset under ``distill/<teacher>/``, one workload's under ``workload/<name>/``."""
    parts = [experiment]
    if teacher:
        parts += ["distill", teacher]
    if workload:
        parts += ["workload", workload]
    return paths.under(base, *parts, param="experiment")


def distill_examples(
    answers: list[tuple[InteractionRecord, list[FeedbackEvent]]],
    cfg: RetrainConfig,
    failure_threshold: float,
    rejected: frozenset[str] = frozenset(),
) -> Gathered:
    """The teacher's answers (each with its current ratings) → examples.

    A correction wins over the teacher's answer (a correction example, and the pair
    correction over answer); an answer rated below ``failure_threshold`` is left out;
    a well-rated one is kept as answered (its tool calls too), and so is an unrated one
    unless ``distill.unrated`` is off or the judge refused it (its id in ``rejected``);
    one rated in between counts as neutral."""
    out = Gathered()
    for ix, rated in answers:
        rid, messages, tools = ix["id"], ix["messages"], ix.get("tools")
        meta: dict[str, Any] = {
            "group": _group(ix),
            "tags": sorted({t for r in rated for t in r.get("tags") or []}),
            "events": [],
            "response_id": rid,
        }
        fixes = [fix for r in rated if (fix := r.get("correction"))]
        if fixes:
            fix = fixes[-1]
            out.examples.append(Example(SFT, _sft(messages, fix, tools), "correction", **meta))
            if ix.get("answer"):
                pair = _pair(messages, fix, ix["answer"], tools)
                out.examples.append(Example(DPO, pair, "pair", **meta))
            continue
        if any(r["score"] < failure_threshold for r in rated):
            out.dropped["rated_down"] += 1
        elif rated and max(r["score"] for r in rated) < cfg.good_threshold:
            out.neutral += 1
        elif not rated and rid in rejected:
            out.dropped["judge_rejected"] += 1
        elif rated or cfg.distill.unrated:
            out.examples.append(Example(SFT, _sft(messages, _served(ix), tools), "teacher", **meta))
        else:
            out.dropped["unrated"] += 1
    return out


class Builder:
    def __init__(
        self,
        client: redis.Redis,
        ks: keys.Keyspace,
        settings: RetrainSettings,
        experiment: str,
        *,
        out: Path | None = None,
        since: datetime | None = None,
        progress: Callable[[str, int], Callable[[int], None]] | None = None,
        workload: str | None = None,
        teacher: str | None = None,
    ) -> None:
        self.client = client
        self.ks = ks
        self.settings = settings
        self.cfg = settings.retrain
        self.experiment = experiment
        self.base = out or self.cfg.dataset_dir
        self.workload = workload
        self.teacher = teacher  # distillation: the teacher's answers are the examples
        self._missed_key = self.ks.build_missed(experiment)  # set again per build group
        self.root = dataset_root(self.base, experiment, workload=workload, teacher=teacher)
        self.since = since
        self.distilled: dict[str, Any] | None = None  # a distillation build's manifest entry
        self.progress = progress or (lambda _stage, _total: lambda _n: None)

    def run(self, *, dry_run: bool = False) -> BuildResult:
        lock = Lock(self.client, self.ks.build_lock(self.experiment))
        holder = lock.acquire()
        if holder is not None:
            return BuildResult(
                "busy", BUSY, f"another build of '{self.experiment}' is running ({holder})", None
            )
        try:
            if not dry_run:
                from .forget import apply_pending

                apply_pending(self.client, self.ks, self.settings, self.base, self.experiment)
            return self._run(dry_run)
        finally:
            lock.release()

    def _interactions(self, ids: list[str]) -> dict[str, InteractionRecord | None]:
        out: dict[str, InteractionRecord | None] = {}
        step = self.progress("join interactions", len(ids))
        for start in range(0, len(ids), 1000):
            chunk = ids[start : start + 1000]
            for rid, rec in zip(chunk, load(self.client, chunk), strict=True):
                out[rid] = rec
            step(len(chunk))
        gone = [rid for rid, rec in out.items() if rec is None]
        if gone:  # past the hot window: from the archive
            archive = open_archive(self.settings.data_dir, self.settings.archive)
            out.update(find_interactions(archive, gone))
        return out

    def _missed(self, consumer: FeedbackConsumer) -> list[RatingEvent]:
        """The experiment's events that the stream no longer holds for its group (trimmed
        past it once archived), from the archive, in stream order. Where it read from is
        kept until a build acknowledges them, so a crash in between loses none."""
        key = self._missed_key
        stored = self.client.get(key)
        start = consumer.trimmed_from()
        if stored is not None:
            kept = keys.text(stored)
            if start is None or keys.stream_id_order(kept) < keys.stream_id_order(start):
                start = kept
        if start is None:
            return []
        self.client.set(key, start)
        reader = self._archive_reader()
        return [
            RatingEvent(sid, record, replaced)
            for sid, record, replaced in archive_query.feedback_events(
                reader, self.experiment, start
            )
        ]

    def _run(self, dry_run: bool) -> BuildResult:
        # 1. collect
        parent = latest_version(self.root)
        tenant = experiment_tenant(self.client, self.ks, self.settings, self.experiment)
        consumer = None
        events: list[RatingEvent] = []
        mine: list[RatingEvent] = []
        if self.teacher:  # no consumer group: a distillation build reads the interactions
            gathered = self._distill(parent, tenant)
        else:
            group = keys.retrain_group(self.experiment)
            if self.workload:  # a workload's dataset reads every rating on its own
                group += f"@{self.workload}"
            consumer = FeedbackConsumer(
                self.client,
                self.ks,
                group=group,
                consumer=f"build-{os.getpid()}",
                claim_idle_ms=0,
            )
            self._missed_key = self.ks.build_missed(group.removeprefix("retrain."))
            missed = self._missed(consumer)  # before reading: reading moves the group on
            events = consumer.read_all()
            fresh = {e.stream_id for e in events}
            missed = [e for e in missed if e.stream_id not in fresh]
            events = sorted(missed + events, key=lambda e: keys.stream_id_order(e.stream_id))
            mine, gathered = self._rated(events, parent, tenant)
        crash_point("after-collect")
        raw_queue = self.client.hgetall(self.ks.review(self.experiment))
        queued = {keys.text(k): orjson.loads(v) for k, v in raw_queue.items()}
        reviewed, review_used = reviewed_examples(queued)
        if self.workload or self.teacher:
            reviewed, review_used = [], []  # the experiment's own dataset takes them
        new = gathered.examples + reviewed
        return self._curate_and_write(
            dry_run, consumer, events, mine, parent, gathered, new, review_used
        )

    def _rated(
        self, events: list[RatingEvent], parent: Version | None, tenant: str | None
    ) -> tuple[list[RatingEvent], Gathered]:
        """Steps 1 and 2 of a ratings build: this experiment's new rating events (of the
        workload, when the build has one) and the examples made of them."""
        done_before = set(parent.manifest["feedback_events"]) if parent else set()
        since_ms = int(self.since.timestamp() * 1000) if self.since else 0
        mine = [
            e
            for e in events
            if e.record.get("experiment") == self.experiment
            and keys.stream_id_order(e.stream_id)[0] >= since_ms
            and e.stream_id not in done_before
            and (tenant is None or e.record.get("tenant") == tenant)
        ]
        interactions = self._interactions(sorted({e.record["response_id"] for e in mine}))
        if self.workload:
            mine = [e for e in mine if self._of_workload(interactions.get(e.record["response_id"]))]

        # 2. examples
        return mine, examples_from(
            mine,
            interactions,
            self.cfg,
            self.settings.feedback.failure_threshold,
            _teacher(self.settings),
        )

    def _of_workload(self, rec: InteractionRecord | None) -> bool:
        return rec is not None and rec.get("workload") == self.workload

    def _distill(self, parent: Version | None, tenant: str | None) -> Gathered:
        """Steps 1 and 2 of a distillation build: the teacher's answers logged since the
        parent version's, of the workload when the build has one, with their ratings →
        examples; and the stream id read up to (in the manifest).

        The interaction stream holds ``interaction_log.hot_s`` of them; what left it
        before a build read it (builds further apart than the hot window, or the first
        build of a teacher that has served for longer) comes from the archive, with its
        ratings there."""
        after = (parent.manifest.get("distill") or {}).get("until") if parent else None
        start = keys.stream_id_after(after) if after else "-"
        if self.since is not None:
            since = f"{int(self.since.timestamp() * 1000)}-0"
            start = since if start == "-" else max(start, since, key=keys.stream_id_order)
        oldest: Any = self.client.xrange(self.ks.interaction_stream, count=1)
        first_hot = keys.text(oldest[0][0]) if oldest else None
        archived: list[tuple[str, InteractionRecord]] = []
        if (
            first_hot is None
            or start == "-"
            or (keys.stream_id_order(start) < keys.stream_id_order(first_hot))
        ):  # some of what the build should read may have left the stream
            archived = self._teacher_archived(start, first_hot, tenant)
        ids: list[str] = []
        until = max((sid for sid, _ in archived), key=keys.stream_id_order, default=None)
        while True:
            entries: Any = self.client.xrange(self.ks.interaction_stream, min=start, count=1000)
            for sid, fields in entries:
                until = keys.text(sid)
                if keys.text(fields.get(b"arm", b"")) == self.teacher:
                    ids.append(keys.text(fields[b"id"]))
            if len(entries) < 1000:
                break
            start = keys.stream_id_after(keys.text(entries[-1][0]))
        wrong: Counter[str] = Counter()
        found = self._interactions(ids)
        from_archive = {rec["id"] for _, rec in archived}
        found.update((rec["id"], rec) for _, rec in archived)
        kept = [
            rec
            for rec in found.values()
            if rec is not None
            and rec.get("status") == "ok"
            and not rec.get("shadow_of")
            and (rec.get("answer") or rec.get("tool_calls"))
            and (self.workload is None or rec.get("workload") == self.workload)
            and (tenant is None or rec.get("tenant") == tenant)
        ]
        wrong["interaction_missing"] = sum(1 for rec in found.values() if rec is None)
        rated = ratings_of(self.client, self.ks, [rec["id"] for rec in kept])
        old = [rec for rec in kept if rec["id"] in from_archive]
        if old:  # their ratings may have left Redis too: the archive's, then Redis's
            first_day = min(archive_query.day_of(int(rec["created"] * 1000)) for rec in old)
            past = self._archive_reader().ratings([rec["id"] for rec in old], first_day)
            rated = [
                latest_per_rater(past.get(rec["id"], []), hot)
                for rec, hot in zip(kept, rated, strict=True)
            ]
        answers = [(rec, r) for rec, r in zip(kept, rated, strict=True)]
        screened, rejected = self._screen([rec for rec, r in answers if not r])
        gathered = distill_examples(
            answers, self.cfg, self.settings.feedback.failure_threshold, rejected
        )
        gathered.dropped.update(+wrong)
        self.distilled = {
            "teacher": self.teacher,
            "workload": self.workload,
            "until": until or after,
            "answers": len(kept),
            **({"judge": screened} if screened else {}),
        }
        return gathered

    def _screen(
        self, unrated: list[InteractionRecord]
    ) -> tuple[dict[str, Any] | None, frozenset[str]]:
        """The judge's screening of the teacher's unrated answers (``distill.judge``):
        what it said (for the manifest) and the ids it refused."""
        judge = self.cfg.distill.judge
        if judge is None or not self.cfg.distill.unrated or not unrated:
            return None, frozenset()
        from . import judge as judging
        from .gateway_client import Gateway

        items = [(rec["messages"], _answer_text(rec)) for rec in unrated]
        step = self.progress("judge unrated answers", len(items))
        with Gateway(self.settings) as gateway:
            verdicts = judging.screen(
                gateway.ask, judge, items, self.cfg.eval.judge_max_tokens, self.cfg.eval.concurrency
            )
        step(len(items))
        said = Counter(verdicts)
        summary = {
            "model": judge,
            "screened": len(items),
            "accepted": said["ACCEPT"],
            "rejected": said["REJECT"],
            "invalid": said["invalid"],  # kept: only a refusal leaves an answer out
        }
        refused = frozenset(
            rec["id"] for rec, v in zip(unrated, verdicts, strict=True) if v == "REJECT"
        )
        return summary, refused

    def _archive_reader(self) -> archive_query.ArchiveReader:
        return archive_query.reader(
            default_url(self.settings.data_dir, self.settings.archive.url),
            self.settings.archive.storage_options,
        )

    def _teacher_archived(
        self, start: str, before: str | None, tenant: str | None
    ) -> list[tuple[str, InteractionRecord]]:
        """The teacher's archived answers logged from the stream id ``start`` (``-``: any)
        and before ``before`` (the stream's oldest entry; None: an empty stream), of the
        build's workload and tenant: (stream id, record), newest first."""
        reader = self._archive_reader()
        since_ms = None if start == "-" else keys.stream_id_order(start)[0]
        low = None if start == "-" else keys.stream_id_order(start)
        out: list[tuple[str, InteractionRecord]] = []
        cursor = before
        while True:
            got, resume = reader.interactions(
                before=cursor,
                since_ms=since_ms,
                until_ms=None,
                limit=1000,
                arm=self.teacher or "",
                workload=self.workload or "",
                tenants=(tenant,) if tenant else (),
            )
            out += [
                (g.stream_id, g.record)
                for g in got
                if low is None or keys.stream_id_order(g.stream_id) >= low
            ]
            if resume is not None:
                cursor = resume
            elif len(got) < 1000:
                return out
            else:
                cursor = got[-1].stream_id

    def _curate_and_write(
        self,
        dry_run: bool,
        consumer: FeedbackConsumer | None,
        events: list[RatingEvent],
        mine: list[RatingEvent],
        parent: Version | None,
        gathered: Gathered,
        new: list[Example],
        review_used: list[str],
    ) -> BuildResult:
        # 3. curate
        counter = TokenCounter(tokens.for_training(self.settings))
        curator = Curator(
            counter,
            self.cfg.max_tokens,
            self.cfg.near_duplicate,
            self.cfg.redact,
            split_together=self.cfg.split_together,
        )
        curator.dropped.update(gathered.dropped)
        kept = parent.examples if parent else []
        if parent is not None and parent.manifest.get("tokenizer") != counter.name:
            for ex in kept:  # counted by another tokenizer: one version, one tokenizer
                ex.tokens = counter(ex)
        step = self.progress("curate", len(new))
        new = curator.clean(new)
        step(len(new))
        new = curator.deduplicate(kept, new)
        new = curator.cap_tags(kept, new, self.cfg.max_tag_share)

        # 4. accumulate and split
        assign_splits(kept, new, self.cfg, curator.links)
        examples = kept + new
        vid = dataset_id(examples)
        manifest = self._manifest(
            vid, parent, examples, new, curator, counter, mine, gathered, review_used, len(events)
        )

        # 5. check, write, acknowledge
        sft_count = sum(1 for ex in examples if ex.kind == SFT)
        if not dry_run:
            self._queue_for_review(gathered.review)
        if sft_count < self.cfg.min_examples:
            by_source = Counter(ex.source for ex in examples if ex.kind == SFT)
            waiting = self.client.hlen(self.ks.review(self.experiment))
            return BuildResult(
                "below-minimum",
                BELOW_MINIMUM,
                f"only {sft_count} supervised examples "
                f"({', '.join(f'{n} {s}' for s, n in sorted(by_source.items())) or 'none'}); "
                f"at least {self.cfg.min_examples} are needed. Collect more ratings with "
                f"corrections or well-rated answers, or correct the {waiting} failures waiting "
                f"in the review queue (retrain review export).",
                manifest,
            )
        over = [
            c
            for c in manifest["cost_estimates"]
            if self.cfg.cost_cap is not None and c["cost"] > self.cfg.cost_cap
        ]
        if over:
            worst = max(over, key=lambda c: c["cost"])
            return BuildResult(
                "over-cost-cap",
                OVER_COST_CAP,
                f"estimated training cost {worst['cost']:.2f} ({worst['provider']} "
                f"{worst['model']}, {worst['epochs']} epochs) is over the cap "
                f"{self.cfg.cost_cap:.2f} by {worst['cost'] - (self.cfg.cost_cap or 0):.2f}",
                manifest,
            )
        if dry_run:
            return BuildResult("dry-run", OK, "dry run: nothing written", manifest)
        if not new and parent is not None and vid == parent.id:
            if consumer is not None:
                consumer.ack(events)
                self.client.delete(self._missed_key)
            self._forget_reviewed(review_used)
            return BuildResult(
                "nothing-new", OK, f"nothing new: {vid} stays the latest", manifest, parent.path
            )
        path = write_version(self.root, vid, examples, manifest)
        crash_point("after-write")
        self._forget_reviewed(review_used)
        if consumer is not None:
            consumer.ack(events)
            self.client.delete(self._missed_key)
        return BuildResult("written", OK, f"wrote {vid}", manifest, path)

    def _queue_for_review(self, items: dict[str, ReviewItem]) -> None:
        if items:
            pipe = self.client.pipeline(transaction=False)
            for rid, item in items.items():  # never overwrite an item someone corrected
                pipe.hsetnx(self.ks.review(self.experiment), rid, orjson.dumps(item))
            pipe.execute()

    def _forget_reviewed(self, used: list[str]) -> None:
        if used:
            self.client.hdel(self.ks.review(self.experiment), *used)

    def _manifest(
        self,
        vid: str,
        parent: Version | None,
        examples: list[Example],
        new: list[Example],
        curator: Curator,
        counter: TokenCounter,
        events: list[RatingEvent],
        gathered: Gathered,
        review_used: list[str],
        events_read: int,
    ) -> Manifest:
        counts, per_file, by_source = tally(examples)
        costs: list[CostEstimate] = []
        for p in self.cfg.prices:
            priced = price_counter(self.settings, p, counter)
            trained = sum(
                ex.tokens if priced is counter else priced(ex) for ex in examples if trained_on(ex)
            )
            costs.append(
                {
                    "provider": p.provider,
                    "model": p.model,
                    "epochs": self.cfg.epochs,
                    "tokens": trained * self.cfg.epochs,
                    "tokenizer": priced.name,
                    "cost": round(trained * self.cfg.epochs * p.per_1m_tokens / 1e6, 4),
                }
            )
        return {
            "id": vid,
            "experiment": self.experiment,
            "parent": parent.id if parent else None,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "counts": counts,
            "new_examples": len(new),
            "by_source": by_source,
            "dropped": dict(curator.dropped),
            "neutral_ratings": gathered.neutral,
            "review_queue": {"added": len(gathered.review), "corrections_used": len(review_used)},
            "tokens": per_file,
            "tokenizer": counter.name,
            "tokens_exact": counter.exact,
            "cost_estimates": costs,
            "feedback_events": sorted({e.stream_id for e in events}, key=keys.stream_id_order),
            "events_read": events_read,
            "workload": self.workload,
            "distill": self.distilled,
            "rules": {
                "failure_threshold": self.settings.feedback.failure_threshold,
                "good_threshold": self.cfg.good_threshold,
                "keep_good_share": self.cfg.keep_good_share,
                "max_tokens": self.cfg.max_tokens,
                "near_duplicate": self.cfg.near_duplicate,
                "split_together": self.cfg.split_together,
                "split": self.cfg.split.model_dump(),
            },
        }
