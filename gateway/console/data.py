"""What the console's pages show, read from Redis, the archive, the live state and
dataset files.

Reads only: every change goes through the admin API's code (:mod:`gateway.control.experiments`)
or the review store (:mod:`gateway.core.review`).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import orjson
import redis.asyncio as aioredis

from gateway.console.access import User
from gateway.control import report
from gateway.control.control import Control
from gateway.core import keys, paths, store
from gateway.core.config import Experiment
from gateway.core.documents import ArmReport, ExperimentState, HistoryEntry, ModelEntry
from gateway.core.records import (
    FeedbackEvent,
    InteractionRecord,
    JobRecord,
    decode_feedback,
    latest_per_rater,
    text_of,
)
from gateway.core.text import nfc
from gateway.ops.archive import find_interactions
from gateway.ops.archive_query import ArchiveReader, day_of, days_around, stream_id
from gateway.serving.interaction_log import load

SCAN_LIMIT = 20_000  # stream entries a filtered page reads at most before it stops
SCAN_BUDGET_S = 0.15  # ... and the time it spends reading them
MAX_BATCH = 1000
ARCHIVE_BUDGET_S = 2.0  # the time a page spends reading the archive (DuckDB, in a thread)


@dataclass
class Filters:
    experiment: str = ""
    arm: str = ""
    workload: str = ""  # the requests' metadata.workload
    rating: str = ""  # up, down, none, "" (any)
    corrected: bool = False
    tenant: str = ""
    q: str = ""  # text in prompt or answer
    since: str = ""  # YYYY-MM-DD (UTC)
    until: str = ""

    def query(self) -> dict[str, str]:
        return {
            k: str(v) if not isinstance(v, bool) else "1" for k, v in self.__dict__.items() if v
        }


@dataclass
class Page:
    rows: list[dict[str, Any]] = field(default_factory=list)
    next_cursor: str | None = None  # the stream id to continue before
    scanned: int = 0
    truncated: bool = False  # stopped at SCAN_LIMIT before the page was full
    archived: int = 0  # rows of this page read from the archive (past the hot window)


def _day_ms(day: str, end: bool = False) -> int | None:
    try:
        t = time.mktime(time.strptime(day, "%Y-%m-%d")) - time.timezone
    except ValueError:
        return None
    return int((t + (86400 if end else 0)) * 1000)


def _text(rec: InteractionRecord) -> str:
    parts = [text_of(m.get("content")) for m in rec.get("messages") or []]
    return nfc("\n".join([*parts, rec.get("answer") or ""])).lower()


def _rating_matches(f: Filters, mine: list[FeedbackEvent], threshold: float) -> bool:
    if f.rating and _rating(mine, threshold) != f.rating:
        return False
    return not f.corrected or any(r.get("correction") for r in mine)


def _rating(ratings: list[FeedbackEvent], threshold: float) -> str:
    if not ratings:
        return "none"
    mean = sum(r["score"] for r in ratings) / len(ratings)
    return "down" if mean < threshold else "up"


async def ratings_of(
    redis: aioredis.Redis, ks: keys.Keyspace, ids: list[str]
) -> list[list[FeedbackEvent]]:
    pipe = redis.pipeline(transaction=False)
    for rid in ids:
        pipe.hgetall(ks.feedback(rid))
    return [
        sorted((decode_feedback(v) for v in raw.values()), key=lambda r: (r["created"], r["rater"]))
        for raw in await pipe.execute()
    ]


async def ratings_merged(
    redis: aioredis.Redis,
    ks: keys.Keyspace,
    archive: ArchiveReader | None,
    recs: list[InteractionRecord],
) -> list[list[FeedbackEvent]]:
    """The current ratings of archived interactions: the archive's (latest per rater)
    and those only Redis has so far."""
    if not recs:
        return []
    ids = [r["id"] for r in recs]
    if archive is None:
        return await ratings_of(redis, ks, ids)
    first = min(day_of(int(r["created"]) * 1000) for r in recs)
    archived = await asyncio.to_thread(archive.ratings, ids, first)
    hot = await ratings_of(redis, ks, ids)
    return [latest_per_rater(archived.get(i, []), h) for i, h in zip(ids, hot, strict=True)]


async def _gone(
    archive: ArchiveReader | None, cand: list[tuple[str, str]]
) -> dict[str, InteractionRecord]:
    """Records of stream entries whose record left Redis (the stream is trimmed a
    little after the records expire): from the archive."""
    if archive is None or not cand:
        return {}
    days = set().union(*(days_around(stream_id(sid)[0] / 1000) for sid, _ in cand))
    ids = [rid for _, rid in cand]
    return await asyncio.to_thread(find_interactions, archive.archive, ids, days)


async def interactions(
    redis: aioredis.Redis,
    ks: keys.Keyspace,
    user: User,
    f: Filters,
    before: str | None,
    size: int,
    threshold: float,
    archive: ArchiveReader | None = None,
) -> Page:
    """One page of the interactions, newest first, filtered: from the interaction
    stream while Redis holds them, then (with an ``archive``) from the archive.

    Experiment, arm and time are read from the stream entries; tenant, workload and text
    from the records, fetched a batch at a time; ratings only for the records that pass those. A
    page reads at most ``SCAN_LIMIT`` entries and works at most ``SCAN_BUDGET_S``, so a
    filter that matches little never scans the whole store at once: the page says so and
    offers to go on.

    The cursor is an interaction-stream id, which the archive keeps (``stream_id``):
    what the stream still holds (its oldest entry and later) comes from Redis, what is
    older from the archive, so a row archived and still hot appears once, and paging
    goes on across the boundary.
    """
    page = Page()
    deadline = time.monotonic() + SCAN_BUDGET_S
    hi = "+" if before is None else f"({before}"
    if f.until and (ms := _day_ms(f.until, end=True)) is not None and before is None:
        hi = str(ms)
    lo = "-"
    if f.since and (ms := _day_ms(f.since)) is not None:
        lo = str(ms)
    last: str | None = None
    batch = size + 1  # unfiltered, one read fills the page; filtered, reads grow
    while len(page.rows) < size:
        entries: list[Any] = await redis.xrevrange(ks.interaction_stream, hi, lo, count=batch) or []
        page.scanned += len(entries)
        cand = []
        for sid, fields in entries:
            fd = {keys.text(k): keys.text(v) for k, v in fields.items()}
            if f.experiment and fd.get("experiment") != f.experiment:
                continue
            if f.arm and fd.get("arm") != f.arm:
                continue
            cand.append((keys.text(sid), fd["id"]))
        by_rating = bool(f.rating or f.corrected)
        rated_first: dict[str, list[FeedbackEvent]] = {}
        if by_rating and cand:  # the ratings narrow most: read them before the records
            ratings = await ratings_of(redis, ks, [rid for _, rid in cand])
            for (_, rid), rs in zip(cand, ratings, strict=True):
                mine = [r for r in rs if not user.tenant or r.get("tenant") == user.tenant]
                if _rating_matches(f, mine, threshold):
                    rated_first[rid] = mine
            cand = [(sid, rid) for sid, rid in cand if rid in rated_first]
        recs = await load(redis, [rid for _, rid in cand])
        gone = await _gone(archive, [c for c, r in zip(cand, recs, strict=True) if r is None])
        recs = [
            r if r is not None else gone.get(rid) for (_, rid), r in zip(cand, recs, strict=True)
        ]
        found = []
        for (sid, _), rec in zip(cand, recs, strict=True):
            if rec is None:
                continue
            if user.tenant and rec.get("tenant") != user.tenant:
                continue
            if f.tenant and rec.get("tenant") != f.tenant:
                continue
            if f.workload and rec.get("workload") != f.workload:
                continue
            if f.q and nfc(f.q).lower() not in _text(rec):
                continue
            found.append((sid, rec))
        if by_rating:
            rated = [rated_first[rec["id"]] for _, rec in found]
        else:
            rated = await ratings_of(redis, ks, [r["id"] for _, r in found]) if found else []
        full = False
        for (sid, rec), rs in zip(found, rated, strict=True):
            mine = [r for r in rs if not user.tenant or r.get("tenant") == user.tenant]
            page.rows.append(
                {**rec, "stream_id": sid, "ratings": mine, "rating": _rating(mine, threshold)}
            )
            page.archived += rec["id"] in gone
            last = sid
            if len(page.rows) == size:
                full = True
                break
        if full:
            break
        if len(entries) < batch:  # the start of the stream (or of the time range)
            last = None
            if archive is not None:  # older ones: from the archive
                oldest: Any = await redis.xrange(ks.interaction_stream, count=1)
                bound = keys.text(oldest[0][0]) if oldest else None
                if hi not in ("+", "-") and hi.startswith("("):
                    cursor = hi[1:]
                    bound = (
                        cursor if bound is None or stream_id(cursor) < stream_id(bound) else bound
                    )
                until_ms = _day_ms(f.until, end=True) if f.until else None
                since_ms = _day_ms(f.since) if f.since else None
                last = await _from_archive(
                    redis, ks, archive, user, f, bound, since_ms, until_ms, size, threshold, page
                )
            break
        batch = min(batch * 2, MAX_BATCH)
        last = keys.text(entries[-1][0])
        hi = f"({last}"
        if page.scanned >= SCAN_LIMIT or time.monotonic() > deadline:
            page.truncated = True
            break
    page.next_cursor = last
    return page


async def _from_archive(
    redis: aioredis.Redis,
    ks: keys.Keyspace,
    archive: ArchiveReader,
    user: User,
    f: Filters,
    before: str | None,
    since_ms: int | None,
    until_ms: int | None,
    size: int,
    threshold: float,
    page: Page,
) -> str | None:
    """Fill ``page`` from the archive with interactions before the stream id ``before``;
    the cursor to go on from (None: nothing older)."""
    deadline = time.monotonic() + ARCHIVE_BUDGET_S
    tenants = tuple(t for t in (user.tenant, f.tenant) if t)
    batch = size + 1
    cursor = before
    while True:
        got, resume = await asyncio.to_thread(
            archive.interactions,
            before=cursor,
            since_ms=since_ms,
            until_ms=until_ms,
            limit=batch,
            experiment=f.experiment,
            arm=f.arm,
            workload=f.workload,
            tenants=tenants,
            q=f.q,
            budget_s=max(0.0, deadline - time.monotonic()),
        )
        page.scanned += len(got)
        found = [g for g in got if not f.q or nfc(f.q).lower() in _text(g.record)]
        rated = await ratings_merged(redis, ks, archive, [g.record for g in found])
        for g, rs in zip(found, rated, strict=True):
            mine = [r for r in rs if not user.tenant or r.get("tenant") == user.tenant]
            if not _rating_matches(f, mine, threshold):
                continue
            page.rows.append(
                {
                    **g.record,
                    "stream_id": g.stream_id,
                    "ratings": mine,
                    "rating": _rating(mine, threshold),
                    "archived": True,
                }
            )
            page.archived += 1
            if len(page.rows) == size:
                return g.stream_id
        if resume is not None:  # the time ran out between two days
            page.truncated = True
            return resume
        if len(got) < batch:
            return None
        cursor = got[-1].stream_id
        batch = min(batch * 2, MAX_BATCH)
        if page.scanned >= SCAN_LIMIT or time.monotonic() > deadline:
            page.truncated = True
            return cursor


async def interaction(
    redis: aioredis.Redis,
    response_id: str,
    archive: ArchiveReader | None = None,
    issued: float | None = None,
) -> InteractionRecord | None:
    """One interaction: from Redis, else (past the hot window) from the archive's
    partitions of the day it was ``issued``."""
    rec = (await load(redis, [response_id]))[0]
    if rec is None and archive is not None and issued is not None:
        found = await asyncio.to_thread(
            find_interactions, archive.archive, [response_id], days_around(issued)
        )
        rec = found.get(response_id)
    return rec


async def overview(control: Control, redis: aioredis.Redis) -> list[dict[str, Any]]:
    """Each experiment's state with its report (arms, shares, ratings, decision, pin)."""
    out = []
    for state in await control.experiments.states():
        rep = await control.report(state["name"], languages=False)
        out.append({"state": state, "report": rep})
    return out


async def health(st: Any) -> dict[str, Any]:
    redis_problem = await store.ping(st.redis)
    upstreams = {name: pool.states() for name, pool in st.upstream.pools.items()}
    dropped = st.metrics.log_dropped._value.get()
    return {"redis": redis_problem or "ok", "upstreams": upstreams, "log_dropped": int(dropped)}


async def versions(
    redis: aioredis.Redis,
    ks: keys.Keyspace,
    name: str,
    history: list[HistoryEntry],
    state: ExperimentState,
    control: Control,
) -> list[dict[str, Any]]:
    """The report's per-arm summary under each version still counted: the plots' points."""
    models = control.router.models
    points: list[dict[str, Any]] = []
    for entry in history[-30:]:
        v = int(entry["version"])
        if points and points[-1]["version"] == v:
            continue  # a resume: audited, but the same version (and data) as before
        exp = Experiment.model_validate(entry["after"])
        raw = await report.collect(redis, ks, name, exp, v)
        total = sum(a.weight for a in exp.arms)
        arms: dict[str, ArmReport] = {}
        for arm in exp.arms:
            price = models[arm.model].price if arm.model in models else None
            counted = report.arm_data(arm.model, arm.weight, raw[arm.model], price)
            arms[arm.model] = report.arm_summary(counted, total, raw[arm.model])
        served = sum(s["requests"] for s in arms.values())
        for s in arms.values():
            s["traffic_share"] = s["requests"] / served if served else None
        points.append({"version": v, "at": entry["at"], "arms": arms})
    return points


def dataset_root(dataset_dir: Path, experiment: str) -> Path:
    return paths.under(dataset_dir, experiment, param="experiment")


def datasets(dataset_dir: Path, experiments: list[str]) -> list[dict[str, Any]]:
    """Each dataset version's manifest, newest first."""
    out = []
    for exp in experiments:
        if not paths.safe_part(exp):  # stored before names were strict: no dataset of it
            continue
        root = dataset_root(dataset_dir, exp)
        if not root.is_dir():
            continue
        for d in root.iterdir():
            m = d / "manifest.json"
            if d.is_dir() and m.is_file():
                doc = orjson.loads(m.read_bytes())
                doc["path"] = str(d)
                out.append(doc)
    by_id = {d["id"]: d for d in out}
    for d in out:  # the difference from the parent version, split by split
        parent = by_id.get(d.get("parent") or "")
        if parent is not None:
            splits = sorted(set(d["counts"]) | set(parent["counts"]))
            d["diff"] = {s: d["counts"].get(s, 0) - parent["counts"].get(s, 0) for s in splits}
    return sorted(out, key=lambda d: d.get("created", ""), reverse=True)


async def jobs(redis: aioredis.Redis, ks: keys.Keyspace, limit: int = 50) -> list[JobRecord]:
    ids: list[Any] = await redis.zrevrange(ks.jobs, 0, limit - 1)
    if not ids:
        return []
    raws = await redis.mget([ks.job(keys.text(i)) for i in ids])
    return [orjson.loads(r) for r in raws if r is not None]


async def job(redis: aioredis.Redis, ks: keys.Keyspace, job_id: str) -> JobRecord | None:
    return cast("JobRecord | None", keys.decode(await redis.get(ks.job(job_id))))


def _version_dir(dataset_dir: Path, experiment: str, vid: str) -> Path | None:
    try:
        path = paths.under(dataset_root(dataset_dir, experiment), vid).resolve()
    except paths.UnsafePath:
        return None
    return path if (path / "manifest.json").is_file() else None


def dataset_file(dataset_dir: Path, experiment: str, vid: str, split: str) -> Path | None:
    """A version's OpenAI JSONL file (``train``, ``validation``, ``test``, ``preference``)."""
    if split not in ("train", "validation", "test", "preference"):
        return None
    path = _version_dir(dataset_dir, experiment, vid)
    f = None if path is None else path / f"{split}.jsonl"
    return f if f is not None and f.is_file() else None


def examples_of(
    dataset_dir: Path, experiment: str | None, response_id: str
) -> list[dict[str, Any]]:
    """The training examples an interaction became, in the experiment's latest version."""
    if not experiment or not paths.safe_part(experiment):
        return []
    root = dataset_root(dataset_dir, experiment)
    pointer = root / "latest"
    try:
        vid = pointer.read_text().strip()
    except OSError:
        return []
    path = _version_dir(dataset_dir, experiment, vid)
    if path is None:
        return []
    needle = response_id.encode()
    out = []
    with open(path / "examples.jsonl", "rb") as f:
        for line in f:
            if needle in line:
                row = orjson.loads(line)
                if row.get("response_id") == response_id:
                    out.append({**row, "version": vid})
    return out


def lineage(
    models: list[ModelEntry], jobs: list[JobRecord], states: list[ExperimentState]
) -> list[dict[str, Any]]:
    """Dataset → job → model → experiment arm → outcome, for each job that made a model."""
    arms = {
        (s["name"], a["model"]): (s["name"], a["weight"], s["spec"].get("control"))
        for s in states
        for a in s["spec"]["arms"]
    }
    registered = {m["id"] for m in models}
    out = []
    for j in jobs:
        model = j.get("model_name")
        exp = arms.get((str(j.get("experiment")), model)) if model else None
        out.append(
            {
                "dataset": j.get("dataset_id"),
                "job": j["id"],
                "status": j.get("status"),
                "model": model if model in registered else None,
                "arm": f"{exp[0]} @ {exp[1]:g}" if exp else None,
                "outcome": (
                    "control"
                    if exp and exp[2] == model
                    else "serving"
                    if exp and exp[1] > 0
                    else "idle"
                    if exp
                    else j.get("status")
                ),
            }
        )
    return out
