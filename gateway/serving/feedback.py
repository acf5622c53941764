"""``POST /v1/feedback`` and ``GET /v1/feedback/{response_id}``: ratings, stored durably.

A rating is checked, joined to the interaction it rates (the experiment and arm come
from there), and stored by one Lua script, so that each of these happens completely or
not at all:

* the rater's record in ``fw:fb:{response_id}`` is set (a second rating by the same
  rater replaces the first: the response says ``replaced``);
* the arm's aggregate (count, score sum, failures, corrections) is corrected for the
  replaced rating, if any, and updated with the new one;
* for experiment traffic assigned by weight, the rated user's scores under the version
  and arm that served the response (``fw:uagg``), with the sums of per-user means that
  the decider's test reads (its unit is the user);
* a rating event (fields ``data``: the record, ``replaced``: 0 or 1) is appended to the
  feedback stream that the retrain job consumes; a replaced rating appears again, and
  the latest event per (response, rater) is the one that counts.

A rating may come after the interaction left Redis (``interaction_log.hot_s``): it is
then joined to the archived record (``archive.py``), read from that day's Parquet files.
A rating may also arrive before its interaction record reaches Redis (the instant a stream
ends). Response ids are signed and time-stamped (``ids.py``), so the gateway knows an id
it issued: it looks in the log writer's unwritten records, then in Redis, and for a
recent id waits up to ``feedback.join_wait_s`` for the record to land.

Ratings leave Redis too, after ``feedback.hot_s``: the rater's record expires that long
after the response's last rating, and the stream's entries are trimmed once archived
and that old (:func:`trim_feedback_stream`), whatever a consumer group does. What stays
for the retention is the per-arm and per-user aggregates; Redis holds one window of
ratings. A rating that replaces one older than the window finds the earlier one in the
archive (which keeps both; readers take the latest per response and rater), and the
aggregates are corrected the same.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.core import access, keys, store
from gateway.core.auth import Principal
from gateway.core.config import FeedbackConfig
from gateway.core.errors import InvalidRequest, NotFound, StoreUnavailable
from gateway.core.ids import IdIssuer
from gateway.core.records import (
    SCHEMA_VERSION,
    FeedbackEvent,
    InteractionRecord,
    decode_feedback,
    last_user_text,
)
from gateway.core.text import nfc
from gateway.serving.bodies import json_object
from gateway.serving.interaction_log import InteractionLog, load
from gateway.serving.metrics import Metrics

THUMBS = {"down": 0.0, "up": 1.0}
FIELDS = frozenset(
    {
        "response_id",
        "rating",
        "comment",
        "correction",
        "user",
        "tags",
        "relevant",
        "irrelevant",
        "query",
    }
)
MAX_PASSAGES = 100  # of each kind in one retrieval feedback
MAX_PASSAGE_CHARS = 8000

# KEYS: feedback hash, aggregate hash, feedback stream, aggregate index, user scores hash
# ARGV: rater, record JSON, score, failure (0/1), has correction (0/1),
#       aggregate index member, ttl seconds, thumbs (0/1), user field ('' = not counted),
#       hot seconds (the rater's record's expiry), the earlier rating found in the
#       archive ('' = none: a rating older than the hot window that this one replaces)
# The aggregate keeps count, score_sum, score_sq (for variances), thumbs (ratings that
# were up/down), failures and corrections. The user scores hash (the experiment version
# and arm the rated response was served under) keeps each user's rating count and score
# sum, and the sums of the per-user means and of their squares: the decider's sample is
# one mean score per user.
_STORE = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
if not old and ARGV[11] ~= '' then old = ARGV[11] end
local replaced = 0
local o = nil
if old then
  replaced = 1
  o = cjson.decode(old)
  redis.call('HINCRBY', KEYS[2], 'count', -1)
  redis.call('HINCRBYFLOAT', KEYS[2], 'score_sum', -o['score'])
  redis.call('HINCRBYFLOAT', KEYS[2], 'score_sq', -(o['score'] * o['score']))
  if type(o['rating']) == 'string' then redis.call('HINCRBY', KEYS[2], 'thumbs', -1) end
  if o['failure'] == true then redis.call('HINCRBY', KEYS[2], 'failures', -1) end
  if o['has_correction'] == true then redis.call('HINCRBY', KEYS[2], 'corrections', -1) end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HINCRBY', KEYS[2], 'count', 1)
redis.call('HINCRBYFLOAT', KEYS[2], 'score_sum', ARGV[3])
redis.call('HINCRBYFLOAT', KEYS[2], 'score_sq', ARGV[3] * ARGV[3])
redis.call('HINCRBY', KEYS[2], 'thumbs', ARGV[8])
redis.call('HINCRBY', KEYS[2], 'failures', ARGV[4])
redis.call('HINCRBY', KEYS[2], 'corrections', ARGV[5])
redis.call('SADD', KEYS[4], ARGV[6])
redis.call('EXPIRE', KEYS[1], ARGV[10])
local uf = ARGV[9]
if uf ~= '' then
  local cur = redis.call('HGET', KEYS[5], uf)
  local c, s = 0, 0
  if cur then
    local sp = string.find(cur, ' ')
    c = tonumber(string.sub(cur, 1, sp - 1))
    s = tonumber(string.sub(cur, sp + 1))
    local m = s / c
    redis.call('HINCRBYFLOAT', KEYS[5], 'mean_sum', -m)
    redis.call('HINCRBYFLOAT', KEYS[5], 'mean_sq', -(m * m))
    if o then
      c = c - 1
      s = s - o['score']
      redis.call('HINCRBY', KEYS[5], 'ratings', -1)
    end
  else
    redis.call('HINCRBY', KEYS[5], 'users', 1)
  end
  c = c + 1
  s = s + tonumber(ARGV[3])
  local m = s / c
  redis.call('HINCRBYFLOAT', KEYS[5], 'mean_sum', m)
  redis.call('HINCRBYFLOAT', KEYS[5], 'mean_sq', m * m)
  redis.call('HINCRBY', KEYS[5], 'ratings', 1)
  redis.call('HSET', KEYS[5], uf, string.format('%d %.17g', c, s))
  redis.call('EXPIRE', KEYS[5], ARGV[7])
end
local id = redis.call('XADD', KEYS[3], '*', 'data', ARGV[2], 'replaced', replaced)
return {replaced, id}
"""


def normalise(rating: Any) -> float:
    """``up``/``down`` → 1/0; stars 1–5 → (n-1)/4. Raises InvalidRequest naming ``rating``."""
    if isinstance(rating, str) and rating in THUMBS:
        return THUMBS[rating]
    if isinstance(rating, int) and not isinstance(rating, bool) and 1 <= rating <= 5:
        return (rating - 1) / 4
    raise InvalidRequest(
        f'\'rating\' must be "up", "down" or an integer from 1 to 5, not {rating!r:.40}.',
        param="rating",
    )


def feedback_id(response_id: str, rater: str) -> str:
    digest = hashlib.sha256(f"{response_id}\x00{rater}".encode()).hexdigest()
    return "fb-" + digest[:24]


def _text(doc: dict[str, Any], name: str, limit: int) -> str | None:
    value = doc.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidRequest(f"'{name}' must be a string.", param=name)
    if len(value) > limit:
        raise InvalidRequest(
            f"'{name}' is {len(value)} characters long; the limit is {limit}.", param=name
        )
    return value


def parse_feedback(body: bytes, cfg: FeedbackConfig) -> dict[str, Any]:
    doc = json_object(body)
    unknown = sorted(set(doc) - FIELDS)
    if unknown:
        raise InvalidRequest(f"Unknown field '{unknown[0]:.64}'.", param=unknown[0][:64])
    rid = doc.get("response_id")
    if not isinstance(rid, str) or not rid:
        raise InvalidRequest(
            "'response_id' is required: the id of the rated response.", param="response_id"
        )
    retrieval = {name: _passages(doc, name) for name in ("relevant", "irrelevant")}
    if "rating" not in doc and not any(retrieval.values()):
        raise InvalidRequest(
            "'rating' is required (or 'relevant'/'irrelevant': the passages that helped "
            "and those that did not).",
            param="rating",
        )
    score = normalise(doc["rating"]) if "rating" in doc else None
    query = _text(doc, "query", MAX_PASSAGE_CHARS)
    if query is not None and not query.strip():
        raise InvalidRequest("'query' must not be empty.", param="query")
    correction = _text(doc, "correction", cfg.max_correction_chars)
    if correction is not None and not correction.strip():
        raise InvalidRequest("'correction' must not be empty.", param="correction")
    tags = doc.get("tags")
    if tags is None:
        tags = []
    if not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
        raise InvalidRequest("'tags' must be an array of non-empty strings.", param="tags")
    if len(tags) > cfg.max_tags or any(len(t) > cfg.max_tag_chars for t in tags):
        raise InvalidRequest(
            f"'tags' allows at most {cfg.max_tags} tags of {cfg.max_tag_chars} characters.",
            param="tags",
        )
    return {
        "response_id": rid,
        "rating": doc.get("rating"),
        "score": score,
        "relevant": retrieval["relevant"],
        "irrelevant": retrieval["irrelevant"],
        "query": query,
        "comment": _text(doc, "comment", cfg.max_comment_chars),
        "correction": correction,
        "user": _text(doc, "user", 256),
        "tags": tags,
    }


def _passages(doc: dict[str, Any], name: str) -> list[str | int]:
    """``relevant``/``irrelevant``: passage texts, or indices into the rated embeddings
    request's ``input``."""
    value = doc.get(name)
    if value is None:
        return []
    bad = InvalidRequest(
        f"'{name}' must be an array of passages: texts, or indices into the embeddings "
        "request's 'input'.",
        param=name,
    )
    if not isinstance(value, list):
        raise bad
    if len(value) > MAX_PASSAGES:
        raise InvalidRequest(
            f"'{name}' has {len(value)} passages; the limit is {MAX_PASSAGES}.", param=name
        )
    for item in value:
        if isinstance(item, bool) or not isinstance(item, str | int):
            raise bad
        if isinstance(item, int) and item < 0:
            raise InvalidRequest(f"'{name}' holds a negative index ({item}).", param=name)
        if isinstance(item, str) and not item.strip():
            raise InvalidRequest(f"'{name}' holds an empty passage.", param=name)
        if isinstance(item, str) and len(item) > MAX_PASSAGE_CHARS:
            raise InvalidRequest(
                f"'{name}' holds a passage of {len(item)} characters; the limit is "
                f"{MAX_PASSAGE_CHARS}.",
                param=name,
            )
    return list(value)


def retrieval_event(
    fb: dict[str, Any], record: InteractionRecord, rater: str, tenant: str | None
) -> dict[str, Any]:
    """A retrieval feedback as stored: the query and the passages as NFC texts.

    The query is the feedback's ``query``, else the rated request's: an embeddings
    request's first input, a chat request's last user message. Indices name inputs of
    the rated embeddings request.
    """
    embeddings = (record.get("params") or {}).get("endpoint") == "embeddings"
    inputs = [m.get("content") for m in record.get("messages") or []]

    def text_of(item: str | int, name: str) -> str:
        if isinstance(item, str):
            return nfc(item)
        if not embeddings:
            raise InvalidRequest(
                f"'{name}' holds an index ({item}), but the rated response is a chat "
                "answer: give the passages' texts.",
                param=name,
            )
        text = inputs[item] if item < len(inputs) else None
        if not isinstance(text, str):
            raise InvalidRequest(
                f"'{name}' holds the index {item}, but the embeddings request had "
                f"{len(inputs)} text input(s).",
                param=name,
            )
        return nfc(text)

    relevant = [text_of(p, "relevant") for p in fb["relevant"]]
    irrelevant = [text_of(p, "irrelevant") for p in fb["irrelevant"]]
    query = fb["query"]
    if query is None:
        if embeddings:
            query = inputs[0] if inputs and isinstance(inputs[0], str) else None
        else:
            query = last_user_text(record.get("messages") or [])
    if not query:
        raise InvalidRequest(
            "The rated request has no text query: give it as 'query'.", param="query"
        )
    return {
        "v": SCHEMA_VERSION,
        "response_id": record["id"],
        "rater": rater,
        "tenant": tenant,
        "model": record["arm"],
        "experiment": record.get("experiment"),
        "query": nfc(query),
        "relevant": relevant,
        "irrelevant": irrelevant,
        "created": int(time.time()),
    }


class FeedbackService:
    def __init__(
        self,
        *,
        redis: aioredis.Redis,
        ks: keys.Keyspace,
        ids: IdIssuer,
        log: InteractionLog,
        metrics: Metrics,
        config: FeedbackConfig,
        max_age_s: float,
        fresh_s: float,
        hot_s: float | None = None,
        archive_url: str | None = None,
        archive_options: dict[str, Any] | None = None,
    ) -> None:
        self.redis = redis
        self.ks = ks
        self.ids = ids
        self.log = log
        self.metrics = metrics
        self.config = config
        self.max_age_s = max_age_s  # interaction retention: older ids have expired
        self.fresh_s = fresh_s  # an id this young may still be on its way to Redis
        self.hot_s = hot_s if hot_s is not None else max_age_s
        self.archive_url = archive_url
        self.archive_options = archive_options
        self._archive: Any = None
        self._store = redis.register_script(_STORE)

    def _archived(self, response_id: str, issued: float) -> InteractionRecord | None:
        """An interaction past the hot window, from the archive (run in a thread)."""
        from gateway.ops.archive import Archive, find_interactions

        if self._archive is None:
            assert self.archive_url is not None
            self._archive = Archive(self.archive_url, self.archive_options)
        days = {time.strftime("%Y-%m-%d", time.gmtime(issued + d)) for d in (0, 86400)}
        return find_interactions(self._archive, [response_id], days).get(response_id)

    def _archived_ratings(self, response_id: str, issued: float) -> list[FeedbackEvent]:
        """A response's current ratings in the archive (run in a thread): those older than
        ``feedback.hot_s`` are only there."""
        from gateway.ops import archive_query

        assert self.archive_url is not None
        reader = archive_query.reader(self.archive_url, self.archive_options)
        first_day = min(archive_query.days_around(issued))
        return reader.ratings([response_id], first_day).get(response_id, [])

    def _past_window(self, response_id: str) -> float | None:
        """When the response was issued, if its ratings may have left Redis (an earlier
        rating may be older than ``feedback.hot_s``) and an archive may hold them."""
        issued = self.ids.issued_at(response_id)
        if issued is None or not self.archive_url:
            return None
        margin = min(120.0, self.config.hot_s / 10)  # clocks of replicas and Redis differ
        return issued if time.time() - issued > self.config.hot_s - margin else None

    async def _from_archive(self, response_id: str, issued: float) -> list[FeedbackEvent]:
        from gateway.ops.archive_query import ArchiveError

        try:
            return await asyncio.to_thread(self._archived_ratings, response_id, issued)
        except (ArchiveError, OSError, ValueError) as exc:
            raise StoreUnavailable(f"The archive is unavailable: {exc}") from None

    async def _earlier_rating(self, response_id: str, rater: str) -> bytes:
        """The rater's earlier rating of the response that left Redis (JSON, from the
        archive), so that this one replaces it in the aggregates; ``b""``: none."""
        issued = self._past_window(response_id)
        if issued is None:
            return b""
        with store.translated("The feedback store"):
            if await self.redis.hexists(self.ks.feedback(response_id), rater):
                return b""  # still in Redis: the script replaces it
        for event in await self._from_archive(response_id, issued):
            if event["rater"] == rater:
                return orjson.dumps(event)
        return b""

    async def interaction(self, response_id: str, principal: Principal) -> InteractionRecord:
        """The rated interaction, or NotFound for an id that is unknown, expired or not yours."""
        missing = NotFound(
            f"No response with id '{response_id:.80}': unknown or expired.", param="response_id"
        )
        issued = self.ids.issued_at(response_id)
        if issued is None or time.time() - issued > self.max_age_s:
            raise missing
        deadline = time.monotonic() + (
            self.config.join_wait_s if time.time() - issued < self.fresh_s else 0
        )
        while True:
            record = self.log.unwritten(response_id)
            if record is None:
                with store.translated("The feedback store"):
                    record = (await load(self.redis, [response_id]))[0]
            if (
                record is None
                and self.archive_url
                and time.monotonic() >= deadline
                and time.time() - issued > self.hot_s - 120  # it may have left Redis
            ):
                try:
                    record = await asyncio.to_thread(self._archived, response_id, issued)
                except (OSError, ValueError) as exc:
                    raise StoreUnavailable(f"The archive is unavailable: {exc}") from None
            if record is not None:
                owner = record.get("tenant")
                if not access.allows(
                    principal, "rate", access.Resource("interaction", response_id, owner)
                ):
                    raise missing
                return record
            if time.monotonic() >= deadline:
                raise missing
            await asyncio.sleep(0.05)

    async def rate(self, body: bytes, principal: Principal) -> dict[str, Any]:
        fb = parse_feedback(body, self.config)
        rid = fb["response_id"]
        record = await self.interaction(rid, principal)
        rater = fb["user"] or record.get("user") or f"key:{principal.name}"
        result: dict[str, Any] = {
            "id": feedback_id(rid, rater),
            "object": "feedback",
            "response_id": rid,
            "rater": rater,
            "score": fb["score"],
            "replaced": False,
        }
        if fb["relevant"] or fb["irrelevant"]:
            event = retrieval_event(fb, record, rater, principal.tenant)
            result["relevant"], result["irrelevant"] = (
                len(event["relevant"]),
                len(event["irrelevant"]),
            )
            with store.translated("The feedback store"):
                await self.redis.xadd(self.ks.retrieval_stream, {"data": orjson.dumps(event)})
            self.metrics.feedback.labels("", record["arm"], "retrieval").inc()
        if fb["score"] is None:
            return result
        result["replaced"] = await self.store_rating(record, fb, rater, principal.tenant)
        return result

    async def store_rating(
        self, record: InteractionRecord, fb: dict[str, Any], rater: str, tenant: str | None
    ) -> bool:
        """Store a checked rating (``parse_feedback``) of a joined interaction: the rater's
        record, the aggregates and the stream entry, in one script. True: it replaced the
        rater's earlier rating."""
        rid = record["id"]
        experiment, arm = record.get("experiment"), record["arm"]
        # the decider's sample: randomised traffic of an experiment, by the assigned arm
        # and the version it was served under (intention to treat: a fallback answer
        # counts for the arm the user was assigned to)
        unit = record.get("unit") if experiment and not record.get("forced") else None
        scores_key = (
            self.ks.user_scores(
                experiment, record.get("experiment_version") or 0, record.get("assigned_arm") or arm
            )
            if experiment and unit
            else self.ks.aggregate(experiment, arm)
        )
        stored: FeedbackEvent = {
            "v": SCHEMA_VERSION,
            "id": feedback_id(rid, rater),
            "object": "feedback",
            "response_id": rid,
            "rater": rater,
            "rating": fb["rating"],
            "score": fb["score"],
            "failure": fb["score"] < self.config.failure_threshold,
            "has_correction": fb["correction"] is not None,
            "comment": fb["comment"],
            "correction": fb["correction"],
            "tags": fb["tags"],
            "tenant": tenant,
            "experiment": experiment,
            "arm": arm,
            "created": int(time.time()),
        }
        earlier = await self._earlier_rating(rid, rater)
        with store.translated("The feedback store"):
            replaced, _ = await self._store(
                keys=[
                    self.ks.feedback(rid),
                    self.ks.aggregate(experiment, arm),
                    self.ks.feedback_stream,
                    self.ks.aggregate_index,
                    scores_key,  # not written unless a user field is given
                ],
                args=[
                    rater,
                    orjson.dumps(stored),
                    repr(fb["score"]),
                    int(stored["failure"]),
                    int(stored["has_correction"]),
                    keys.aggregate_member(experiment, arm),
                    int(self.config.retention_days * 86400),
                    int(isinstance(fb["rating"], str)),
                    f"u:{unit}" if unit else "",
                    max(1, int(self.config.hot_s)),
                    earlier,
                ],
            )
        exp_label = experiment or ""
        self.metrics.feedback.labels(exp_label, arm, str(fb["rating"])).inc()
        self.metrics.feedback_score.labels(exp_label, arm).observe(fb["score"])
        return bool(replaced)

    async def ratings(self, response_id: str, principal: Principal) -> list[FeedbackEvent]:
        if self.ids.issued_at(response_id) is None:
            raise NotFound(f"No response with id '{response_id:.80}'.", param="response_id")
        with store.translated("The feedback store"):
            raw = await self.redis.hgetall(self.ks.feedback(response_id))
        out = [decode_feedback(v) for v in raw.values()]
        issued = self._past_window(response_id)
        if issued is not None:  # ratings older than the hot window: from the archive
            recent = {r["rater"] for r in out}
            out += [
                r for r in await self._from_archive(response_id, issued) if r["rater"] not in recent
            ]
        out = [
            r
            for r in out
            if access.allows(
                principal, "rate", access.Resource("rating", response_id, r.get("tenant"))
            )
        ]
        if not out:
            await self.interaction(response_id, principal)  # 404 unless it exists and is yours
        return sorted(out, key=lambda r: (r["created"], r["rater"]))


async def ensure_groups(redis: aioredis.Redis, ks: keys.Keyspace, groups: list[str]) -> None:
    """Create the consumer groups (from the stream's start) so no event is trimmed unread."""
    for group in groups:
        try:
            await redis.xgroup_create(ks.feedback_stream, group, id="0", mkstream=True)
        except RedisError as exc:
            if "BUSYGROUP" not in str(exc):
                raise


async def maintain(
    redis: aioredis.Redis,
    ks: keys.Keyspace,
    cfg: FeedbackConfig,
    experiments: Callable[[], Iterable[str]],
    every_s: float = 60.0,
    extra_groups: list[str] | None = None,
) -> None:
    """Background task: keep the consumer groups and trim the stream, while Redis answers.

    Each experiment has its retrain group (``retrain.<experiment>``), created as soon as
    the experiment is known; a build whose group fell behind the trim reads what it
    missed from the archive (``retrain/dataset.py``).
    """
    log = logging.getLogger(__name__)
    while True:
        try:
            groups = [keys.retrain_group(e) for e in experiments()] + cfg.consumer_groups
            groups += extra_groups or []
            await ensure_groups(redis, ks, groups)
            await trim_feedback_stream(redis, ks, cfg.retention_days * 86400, cfg.hot_s)
            bound_ms = int((time.time() - cfg.retention_days * 86400) * 1000)
            await redis.xtrim(ks.retrieval_stream, minid=f"{bound_ms}-0", approximate=False)
        except (RedisError, OSError) as exc:
            log.warning("feedback stream maintenance skipped: %s", exc)
        await asyncio.sleep(every_s)


def group_position(group: dict[Any, Any], pending_min: Any) -> str:
    """Where a consumer group stands: its oldest unacknowledged entry, else the first id
    after the last one it was given (``XINFO GROUPS`` entry, ``XPENDING``'s ``min``)."""
    if group.get("pending") and pending_min is not None:
        return keys.text(pending_min)
    return keys.stream_id_after(keys.text(group["last-delivered-id"]))


async def trim_feedback_stream(
    redis: aioredis.Redis, ks: keys.Keyspace, retention_s: float, hot_s: float | None = None
) -> str:
    """Trim the feedback stream; returns the MINID used.

    Once an archiver reads the stream (its group ``archive`` exists) and ``hot_s`` is
    given, entries go once archived and older than ``hot_s`` — MINID the older of where
    the archive stands and now - ``hot_s`` — whatever the other groups do: a group that
    lags or was abandoned (a retrain group of an experiment nobody builds) cannot hold
    the stream, it reads what it missed from the archive. Without an archiver the stream
    is the only copy: entries older than the retention go once every group has
    acknowledged them.
    """
    now_ms = int(time.time() * 1000)
    try:
        groups = await redis.xinfo_groups(ks.feedback_stream)
    except RedisError:
        return f"{int(now_ms - retention_s * 1000)}-0"  # no stream yet
    archived = next((g for g in groups if keys.text(g["name"]) == keys.ARCHIVE_GROUP), None)
    if archived is not None and hot_s is not None:
        summary = await redis.xpending(ks.feedback_stream, keys.ARCHIVE_GROUP)
        minid = min(
            group_position(archived, summary["min"]),
            f"{int(now_ms - min(hot_s, retention_s) * 1000)}-0",
            key=keys.stream_id_order,
        )
    else:
        minid = f"{int(now_ms - retention_s * 1000)}-0"
        for g in groups:
            summary = await redis.xpending(ks.feedback_stream, g["name"])
            keep = group_position(g, summary["min"])
            if keys.stream_id_order(keep) < keys.stream_id_order(minid):
                minid = keep
    await redis.xtrim(ks.feedback_stream, minid=minid, approximate=False)
    return minid
