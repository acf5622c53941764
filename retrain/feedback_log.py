"""Reading what the gateway logged: the feedback stream and the interactions it rates.

:class:`FeedbackConsumer` reads the feedback stream as a member of a consumer group,
the way the retrain job must: events are acknowledged only after the caller has durably
used them, so a run that crashes loses nothing (its unacknowledged events are claimed
by the next run once idle for ``claim_idle_ms``) and a finished run never sees the
same event again. The stream is trimmed once archived and older than ``feedback.hot_s``,
whether a group read it or not: :meth:`FeedbackConsumer.trimmed_from` says from where a
group missed entries, which its reader then takes from the archive.
:func:`export_feedback` reads without a group, for people.
"""

from __future__ import annotations

import atexit
import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import redis
from redis.exceptions import RedisError

from gateway.core import keys
from gateway.core.records import FeedbackEvent, InteractionRecord, decode_feedback
from gateway.core.store import connect_sync, start_embedded
from gateway.ops import archive_query
from gateway.ops.archive import Archive, find_interactions, load_sync

from .config import RetrainSettings
from .errors import UsageError


def connect(settings: RetrainSettings) -> redis.Redis:
    """The gateway's Redis: ``redis_url``, or the embedded server under ``data_dir``.

    An embedded server this process had to start itself (no gateway running) is stopped
    when the process exits; a kill stops it too (its parent-death signal).
    """
    url = settings.redis_url
    if not url:
        embedded = start_embedded(settings.data_dir)
        atexit.register(embedded.stop)
        url = embedded.url
    return connect_sync(url, cluster=settings.redis_cluster and bool(settings.redis_url))


@dataclass(frozen=True)
class RatingEvent:
    """One entry of the feedback stream: the rating as stored, and whether it replaced one."""

    stream_id: str
    record: FeedbackEvent
    replaced: bool


def _event(stream_id: bytes | str, fields: dict[bytes, bytes]) -> RatingEvent:
    return RatingEvent(
        keys.text(stream_id), decode_feedback(fields[b"data"]), fields.get(b"replaced") == b"1"
    )


class FeedbackConsumer:
    def __init__(
        self,
        client: redis.Redis,
        ks: keys.Keyspace,
        *,
        group: str = "retrain",
        consumer: str | None = None,
        claim_idle_ms: int = 60_000,
    ) -> None:
        self.client = client
        self.ks = ks
        self.group = group
        self.consumer = consumer or f"retrain-{int(time.time() * 1000)}"
        self.claim_idle_ms = claim_idle_ms
        # Where the takeover of crashed runs' leftovers stands (None: done, only new events).
        self._claim_cursor: str | bytes | None = "0-0"
        try:
            client.xgroup_create(ks.feedback_stream, group, id="0", mkstream=True)
        except RedisError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def position(self) -> str | None:
        """Where the group stands: its oldest unacknowledged entry, else the first id after
        the last one it was given (None: no such group)."""
        groups: Any = self.client.xinfo_groups(self.ks.feedback_stream)
        group = next((g for g in groups if keys.text(g["name"]) == self.group), None)
        if group is None:
            return None
        if group.get("pending"):
            summary: Any = self.client.xpending(self.ks.feedback_stream, self.group)
            if summary.get("min") is not None:
                return keys.text(summary["min"])
        return keys.stream_id_after(keys.text(group["last-delivered-id"]))

    def trimmed_from(self) -> str | None:
        """The id from which the stream was trimmed past this group (entries it never
        acknowledged are gone from Redis: the archive has them), or None."""
        at = self.position()
        if at is None:
            return None
        head: Any = self.client.xrange(self.ks.feedback_stream, count=1)
        if head:
            first = keys.text(head[0][0])
        else:  # an empty stream: everything up to its last id was trimmed
            info: Any = self.client.xinfo_stream(self.ks.feedback_stream)
            first = keys.stream_id_after(keys.text(info["last-generated-id"]))
        return at if keys.stream_id_order(at) < keys.stream_id_order(first) else None

    def read(self, count: int = 500) -> list[RatingEvent]:
        """Up to ``count`` events: first those a crashed run left unacknowledged, then new ones."""
        out: list[RatingEvent] = []
        while self._claim_cursor is not None and len(out) < count:
            reply: Any = self.client.xautoclaim(
                self.ks.feedback_stream,
                self.group,
                self.consumer,
                min_idle_time=self.claim_idle_ms,
                start_id=self._claim_cursor,
                count=count - len(out),
            )
            self._claim_cursor, claimed = reply[0], reply[1]
            out += [_event(sid, f) for sid, f in claimed if f]
            if self._claim_cursor in (b"0-0", "0-0"):
                self._claim_cursor = None
        if len(out) < count:
            fresh: Any = self.client.xreadgroup(
                self.group, self.consumer, {self.ks.feedback_stream: ">"}, count=count - len(out)
            )
            for _, entries in fresh or []:
                out += [_event(sid, f) for sid, f in entries]
        return out

    def read_all(self, batch: int = 500) -> list[RatingEvent]:
        events: list[RatingEvent] = []
        while chunk := self.read(batch):
            events += chunk
        return events

    def ack(self, events: list[RatingEvent]) -> int:
        if not events:
            return 0
        return int(
            self.client.xack(self.ks.feedback_stream, self.group, *(e.stream_id for e in events))
        )


def interaction(client: redis.Redis, response_id: str) -> InteractionRecord | None:
    return load(client, [response_id])[0]


def load(client: redis.Redis, ids: list[str]) -> list[InteractionRecord | None]:
    """Interaction records by response id (None: unknown or past the hot window), their
    message blocks put back."""
    return load_sync(client, ids)


def ratings(client: redis.Redis, ks: keys.Keyspace, response_id: str) -> list[FeedbackEvent]:
    return _ratings(client.hgetall(ks.feedback(response_id)))


def ratings_of(
    client: redis.Redis, ks: keys.Keyspace, response_ids: list[str]
) -> list[list[FeedbackEvent]]:
    """The current ratings of many responses (one list per response, oldest first)."""
    out: list[list[FeedbackEvent]] = []
    for start in range(0, len(response_ids), 1000):
        pipe = client.pipeline(transaction=False)
        for rid in response_ids[start : start + 1000]:
            pipe.hgetall(ks.feedback(rid))
        out += [_ratings(stored) for stored in pipe.execute()]
    return out


def _ratings(stored: dict[Any, Any]) -> list[FeedbackEvent]:
    rows = [decode_feedback(v) for v in stored.values()]
    return sorted(rows, key=lambda r: (r["created"], r["rater"]))


def rated_since(
    client: redis.Redis,
    ks: keys.Keyspace,
    since: datetime,
    batch: int = 1000,
    archive: Archive | None = None,
) -> Iterator[str]:
    """Response ids rated at or after ``since``, each once, in order of first rating
    (with the ``archive``: those whose ratings left the stream too)."""
    seen: set[str] = set()
    start = f"{int(since.timestamp() * 1000)}-0"
    if archive is not None:
        reader = archive_query.ArchiveReader(archive)
        for _, event, _ in archive_query.feedback_events(reader, None, start):
            if event["response_id"] not in seen:
                seen.add(event["response_id"])
                yield event["response_id"]
    while True:
        entries: Any = client.xrange(ks.feedback_stream, min=start, count=batch)
        for _, fields in entries:
            rid = orjson.loads(fields[b"data"])["response_id"]
            if rid not in seen:
                seen.add(rid)
                yield rid
        if len(entries) < batch:
            return
        start = keys.stream_id_after(keys.text(entries[-1][0]))


def export_feedback(
    client: redis.Redis,
    ks: keys.Keyspace,
    since: datetime,
    out: Path,
    tenant: str | None = None,
    archive: Archive | None = None,
    chunk_size: int = 50_000,
) -> int:
    """Write one JSON line per rated response: the interaction and its current ratings
    (with ``tenant``: only that tenant's responses). An interaction past the hot window
    comes from the ``archive``: one query for each ``chunk`` of rated responses; so do
    ratings past ``feedback.hot_s``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    n = 0
    rated = rated_since(client, ks, since, archive=archive)
    reader = archive_query.ArchiveReader(archive) if archive is not None else None
    with open(tmp, "wb") as f:
        while chunk := list(itertools.islice(rated, chunk_size)):
            found = dict(zip(chunk, load(client, chunk), strict=True))
            gone = [rid for rid, ix in found.items() if ix is None]
            if gone and archive is not None:
                found.update(find_interactions(archive, gone))
            pipe = client.pipeline(transaction=False)
            for rid in chunk:
                pipe.hgetall(ks.feedback(rid))
            # ratings older than feedback.hot_s left Redis: the archive has them
            archived = reader.ratings(chunk) if reader is not None else {}
            for rid, stored in zip(chunk, pipe.execute(), strict=True):
                ix = found[rid]
                if tenant is not None and (ix["tenant"] if ix else None) != tenant:
                    continue
                current = _ratings(stored)
                recent = {r["rater"] for r in current}
                current += [r for r in archived.get(rid, []) if r["rater"] not in recent]
                current.sort(key=lambda r: (r["created"], r["rater"]))
                row = {"response_id": rid, "interaction": ix, "ratings": current}
                f.write(orjson.dumps(row) + b"\n")
                n += 1
    tmp.replace(out)
    return n


def parse_since(text: str) -> datetime:
    """An ISO date or date-time; naive values are taken as UTC (``--since``)."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"--since: not an ISO date: {text!r}") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)
