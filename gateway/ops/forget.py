"""Forgetting a user: their interactions, ratings and archive rows removed, audited.

``DELETE /admin/users/{user}`` and ``retrain forget --user U`` both run
:meth:`Forgetter.run`, which, holding the archiver's lock (``fw:archive:lock``: no
archive pass runs meanwhile, and two forgets never overlap):

0. asks the archivers to hand the lock over (``fw:archive:pause``: a pass that finds it
   set releases the lock and does nothing; it lapses by itself if the forget dies);
1. **finds** what is the user's: their interaction records (``user``, within the
   tenant when one is given) in Redis (the interaction stream names every hot record)
   and in the archive; the ratings they gave (``rater``) and the ratings of their
   interactions, in the feedback stream and the archive;
2. **writes the plan** (``fw:forget:pending``: the response ids and rating stream ids
   found) before deleting anything, so a run that dies midway is finished by a rerun
   even though what it deleted can no longer be found, and so ``retrain`` can remove
   the same examples from the dataset versions (the gateway does not see them);
3. **deletes in Redis**: the records (``fw:ix:*``) and their stream entries, the
   message blocks (``fw:blk:*``) no other live record refers to, the ratings
   (``fw:fb:*`` fields, or the whole hash of one of the user's interactions) and their
   stream entries, review-queue items of their interactions or group, and the user's
   unit in the per-version SRM sets (``fw:users:*``) and per-user score hashes
   (``fw:uagg:*``, its sums adjusted). Per-arm aggregates (``fw:agg:*``, ``fw:req:*``)
   stay: sums and counts over every user, nothing in them names anyone;
4. **deletes in the archive**: one Delta ``DELETE`` per table (the user's interactions,
   by response id or by user within the tenant; the ratings, by stream id or by
   response id) rewrites each file holding such rows without them, in one commit; then
   a vacuum with no retention deletes the files that commit replaced (and any a crash
   left), so no file holds the user's rows any more. A crash before the commit leaves
   the table as it was (the rerun deletes again); after it, the rerun finds nothing
   and vacuums again;
5. **audits** the run (``GET /admin/audit``, action ``user.forgotten``: who, when,
   which user and tenant, the counts removed per place).

Running it twice is harmless: the second run finds nothing and removes nothing. The
crash tests kill it at each step (``FLYWHEEL_ARCHIVE_CRASH_AT``: ``forget-after-plan``,
``forget-after-redis``, ``forget-after-delete``, ``forget-after-vacuum``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
import redis
from redis.exceptions import RedisError

from gateway.core import access, keys, store
from gateway.core.auth import Principal
from gateway.core.config import valid_name
from gateway.core.errors import Conflict, InvalidRequest, StoreUnavailable
from gateway.core.records import refs, unpack
from gateway.ops.archive import (
    FEEDBACK,
    INTERACTIONS,
    Archive,
    Archiver,
    crash_point,
    migrate_legacy,
    open_archive,
)

if TYPE_CHECKING:
    from gateway.state import GatewayState

MAX_USER_CHARS = 256
AUDIT_CAP = 10_000  # as the key audit (apikeys.py): the list is shared
CHUNK = 1000
log = logging.getLogger(__name__)
AOF_WAIT_S = 60.0  # how long a forget waits for Redis to rewrite its AOF

# Remove one unit from a per-user score hash (fw:uagg:*), its sums adjusted.
# KEYS[1]: the hash; ARGV[1]: the unit's field (u:{unit}). Returns 1 when removed.
_UNSCORE = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then return 0 end
local sp = string.find(cur, ' ')
local c = tonumber(string.sub(cur, 1, sp - 1))
local s = tonumber(string.sub(cur, sp + 1))
local m = s / c
redis.call('HINCRBYFLOAT', KEYS[1], 'mean_sum', -m)
redis.call('HINCRBYFLOAT', KEYS[1], 'mean_sq', -(m * m))
redis.call('HINCRBY', KEYS[1], 'ratings', -c)
redis.call('HINCRBY', KEYS[1], 'users', -1)
redis.call('HDEL', KEYS[1], ARGV[1])
return 1
"""

# Rebuild a stream without the entries XDEL marked deleted: XDEL only flags an entry in
# its listpack, whose bytes (the forgotten text) DUMP, RDB and AOF rewrites keep as they
# are. KEYS[1]: the stream, KEYS[2]: where it is rebuilt (same slot). The live entries are
# copied with their ids; the stream's last id, entries-added and max-deleted id are set
# as they were (no id is ever reused); each consumer group is made again where it stood
# (last-delivered id, entries-read), with its consumers and its pending entries (owner,
# idle time, delivery count; a pending entry that was deleted is dropped: nothing is
# left to deliver). Then the rebuilt stream replaces the original, in this one script.
# Returns the number of entries copied, or -1 when there is no stream.
_REWRITE = """
local src, dst = KEYS[1], KEYS[2]
if redis.call('EXISTS', src) == 0 then return -1 end
redis.call('DEL', dst)
local function fields(flat)
  local out = {}
  for i = 1, #flat, 2 do out[flat[i]] = flat[i + 1] end
  return out
end
local info = fields(redis.call('XINFO', 'STREAM', src))
local copied, cursor = 0, '-'
while true do
  local batch = redis.call('XRANGE', src, cursor, '+', 'COUNT', 1000)
  if #batch == 0 then break end
  for _, e in ipairs(batch) do
    redis.call('XADD', dst, e[1], unpack(e[2]))
    copied = copied + 1
  end
  cursor = '(' .. batch[#batch][1]
end
if copied == 0 then  -- an empty stream still exists, with its groups
  redis.call('XADD', dst, '0-1', 'x', '')
  redis.call('XDEL', dst, '0-1')
end
redis.call('XSETID', dst, info['last-generated-id'],
           'ENTRIESADDED', info['entries-added'], 'MAXDELETEDID', info['max-deleted-entry-id'])
for _, g in ipairs(redis.call('XINFO', 'GROUPS', src)) do
  local group = fields(g)
  local name = group['name']
  local read = group['entries-read']
  if read then
    redis.call('XGROUP', 'CREATE', dst, name, group['last-delivered-id'], 'ENTRIESREAD', read)
  else
    redis.call('XGROUP', 'CREATE', dst, name, group['last-delivered-id'])
  end
  for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', src, name)) do
    redis.call('XGROUP', 'CREATECONSUMER', dst, name, fields(c)['name'])
  end
  local from = '-'
  while true do
    local pel = redis.call('XPENDING', src, name, from, '+', 1000)
    if #pel == 0 then break end
    for _, p in ipairs(pel) do
      if #redis.call('XRANGE', dst, p[1], p[1]) == 1 then
        redis.call('XCLAIM', dst, name, p[2], 0, p[1], 'IDLE', p[3], 'RETRYCOUNT', p[4],
                   'FORCE', 'JUSTID')
      end
    end
    from = '(' .. pel[#pel][1]
  end
end
redis.call('RENAME', dst, src)
return copied
"""


def valid_user(user: Any) -> str:
    """The user id to forget, or an InvalidRequest naming what is wrong with it."""
    if not isinstance(user, str) or not user.strip():
        raise InvalidRequest("The user id to forget must not be empty.", param="user")
    if len(user) > MAX_USER_CHARS:
        raise InvalidRequest(
            f"The user id is {len(user)} characters long; the limit is {MAX_USER_CHARS}.",
            param="user",
        )
    if any(ord(c) < 32 or ord(c) == 127 for c in user):
        raise InvalidRequest("The user id must not hold control characters.", param="user")
    return user


def pending_field(user: str, tenant: str | None) -> str:
    return f"{tenant or ''}\x00{user}"


@dataclass
class Plan:
    """What belongs to the user: found by this run, or by an earlier one that died."""

    user: str
    tenant: str | None  # None: every tenant
    response_ids: set[str] = field(default_factory=set)
    events: set[str] = field(default_factory=set)  # rating stream ids (feedback)
    units: set[tuple[str, int, str, str]] = field(default_factory=set)  # exp, ver, arm, unit
    blocks: set[str] = field(default_factory=set)  # blocks the user's hot records refer to

    def owns(self, row: dict[str, Any]) -> bool:
        """An interaction record (or row) of the user."""
        return row.get("user") == self.user and (
            self.tenant is None or row.get("tenant") == self.tenant
        )

    def rated(self, rating: dict[str, Any]) -> bool:
        """A rating the user gave, or one of the user's interactions."""
        if rating.get("response_id") in self.response_ids:
            return True
        return rating.get("rater") == self.user and (
            self.tenant is None or rating.get("tenant") == self.tenant
        )

    def note_unit(self, rec: dict[str, Any]) -> None:
        unit, exp = rec.get("unit"), rec.get("experiment")
        if unit and exp and not rec.get("forced") and not rec.get("shadow_of"):
            arm = rec.get("assigned_arm") or rec.get("arm") or ""
            self.units.add((exp, int(rec.get("experiment_version") or 0), arm, unit))

    def doc(self, by: str) -> dict[str, Any]:
        return {
            "user": self.user,
            "tenant": self.tenant,
            "by": by,
            "at": time.time(),
            "response_ids": sorted(self.response_ids),
            "events": sorted(self.events, key=keys.stream_id_order),
            "units": sorted(self.units),
            "blocks": sorted(self.blocks),
        }


def pending(client: redis.Redis, ks: keys.Keyspace) -> list[dict[str, Any]]:
    """Users forgotten whose dataset versions are not rewritten yet (``retrain`` does it)."""
    raw: Any = client.hgetall(ks.forget_pending)
    return [orjson.loads(v) for _, v in sorted(raw.items())]


def done_pending(client: redis.Redis, ks: keys.Keyspace, user: str, tenant: str | None) -> None:
    client.hdel(ks.forget_pending, pending_field(user, tenant))


def audit(
    client: redis.Redis, ks: keys.Keyspace, by: str, by_tenant: str | None, plan: Plan, counts: Any
) -> None:
    """An entry in the key and tenant audit log (``GET /admin/audit``)."""
    entry = {
        "at": time.time(),
        "by": by,
        "by_tenant": by_tenant,
        "action": "user.forgotten",
        "target": plan.user,
        "tenant": plan.tenant,
        "before": None,
        "after": {"removed": counts},
    }
    pipe = client.pipeline(transaction=False)  # one key; on a cluster too
    pipe.rpush(ks.auth_audit, orjson.dumps(entry))
    pipe.ltrim(ks.auth_audit, -AUDIT_CAP, -1)
    pipe.execute()


class Forgetter:
    """Forgets users in one Redis and one archive (see the module's docstring)."""

    def __init__(
        self,
        client: redis.Redis,
        ks: keys.Keyspace,
        archive: Archive,
        *,
        experiments: Iterable[str] = (),
        lock_wait_s: float = 120.0,
        lock_ttl_s: float = 60.0,
    ) -> None:
        self.client = client
        self.ks = ks
        self.archive = archive
        self.experiments = set(experiments)
        self.lock_wait_s = lock_wait_s
        self.lock_ttl_s = lock_ttl_s
        self._unscore = client.register_script(_UNSCORE)
        self._rewrite = client.register_script(_REWRITE)

    def run(self, user: str, tenant: str | None, by: str) -> tuple[Plan, dict[str, Any]]:
        """Forget ``user`` (of ``tenant``; None: of every tenant) in Redis and the archive.

        Returns the plan (for the datasets) and the counts removed per place. Raises
        Conflict when the archive lock stays held by a running pass for ``lock_wait_s``.
        """
        user = valid_user(user)
        holder = self._holder = Archiver(
            self.client, self.ks, self.archive, lock_ttl_s=self.lock_ttl_s
        )
        deadline = time.monotonic() + self.lock_wait_s
        self._pause()  # the archivers hand the lock over at their next pass
        while (held_by := holder.hold()) is not None:
            if time.monotonic() >= deadline:
                self.client.delete(self.ks.archive_pause)
                raise Conflict(
                    f"The archiver ({held_by}) holds the archive lock; try again later.",
                    param="user",
                )
            self._pause()
            time.sleep(0.2)
        try:
            plan = self._plan(user, tenant)
            found = self._find(plan)
            field_ = pending_field(user, tenant)
            self.client.hset(self.ks.forget_pending, field_, orjson.dumps(plan.doc(by)))
            crash_point("forget-after-plan")
            counts: dict[str, Any] = {"redis": self._forget_redis(plan, found)}
            crash_point("forget-after-redis")
            self._renew()
            counts["archive"] = self._forget_archive(plan)
            redis_counts = counts["redis"]
            touched = any(redis_counts.values()) or bool(plan.events)
            redis_counts["aof_rewritten"] = int(touched and self._rewrite_aof() == "rewritten")
        finally:
            holder.release()
            self.client.delete(self.ks.archive_pause)
        return plan, counts

    def _rewrite_aof(self) -> str:
        """Have Redis rewrite its append-only file (``BGREWRITEAOF``), so that the files no
        longer hold the commands that wrote what was forgotten; wait for it (up to
        ``AOF_WAIT_S``). A rewrite already running started from memory as it was before
        the forget: it is let finish, then ours starts. Returns ``rewritten``, ``off``
        (no AOF), or what kept it from finishing (logged)."""
        c = self.client
        deadline = time.monotonic() + AOF_WAIT_S
        if self.ks.cluster:  # each master rewrites its own file: not from a cluster client
            log.warning("forget: run BGREWRITEAOF on the master of the shared slot")
            return "unknown"

        def persistence() -> dict[str, Any]:
            info: Any = c.info("persistence")
            return info if isinstance(info, dict) else {}

        try:
            info = persistence()
            if "aof_enabled" not in info:  # e.g. a cluster client: each node on its own
                log.warning("forget: run BGREWRITEAOF on the node of the shared slot")
                return "unknown"
            if not int(info["aof_enabled"]):
                return "off"
            while int(persistence().get("aof_rewrite_in_progress", 0)):
                if time.monotonic() >= deadline:
                    log.warning("forget: an AOF rewrite is still running; run BGREWRITEAOF")
                    return "busy"
                time.sleep(0.05)
            c.bgrewriteaof()
            while time.monotonic() < deadline:
                info = persistence()
                if not int(info.get("aof_rewrite_in_progress", 0)) and not int(
                    info.get("aof_rewrite_scheduled", 0)
                ):
                    if info.get("aof_last_bgrewrite_status") == "ok":
                        return "rewritten"
                    log.warning("forget: the AOF rewrite failed; run BGREWRITEAOF")
                    return "failed"
                time.sleep(0.05)
            log.warning("forget: the AOF rewrite is still running after %.0f s", AOF_WAIT_S)
            return "in progress"
        except RedisError as exc:
            log.warning("forget: the AOF rewrite could not be started (%s)", exc)
            return "failed"

    def _pause(self) -> None:
        """Ask the archivers to pause (for ``lock_ttl_s``, renewed as the run goes on, so
        a forget that dies lets them go on by themselves)."""
        ttl_ms = int(self.lock_ttl_s * 1000)
        self.client.set(self.ks.archive_pause, self._holder.owner, px=ttl_ms)

    def _renew(self) -> None:
        """Keep the archive lock through a long run; one lost (a stall past its ttl, and
        an archiver took it) stops the run before it commits anything to the archive."""
        self._pause()
        if (holder := self._holder.hold()) is not None:
            raise Conflict(
                f"The archive lock passed to {holder} during the run; run it again to finish.",
                param="user",
            )

    # -- finding -----------------------------------------------------------------------

    def _plan(self, user: str, tenant: str | None) -> Plan:
        plan = Plan(user, tenant)
        raw: Any = self.client.hget(self.ks.forget_pending, pending_field(user, tenant))
        if raw is not None:  # an earlier run died: what it found may be deleted already
            earlier = orjson.loads(raw)
            plan.response_ids.update(earlier.get("response_ids") or [])
            plan.events.update(earlier.get("events") or [])
            plan.units.update(tuple(u) for u in earlier.get("units") or [])
            plan.blocks.update(earlier.get("blocks") or [])
        return plan

    def _find(self, plan: Plan) -> _Found:
        found = _Found()
        migrate_legacy(self.archive)  # an archive of the earlier layout: copied in first
        for rows in self._archived(INTERACTIONS, _IX_COLUMNS):
            for row in rows:
                if plan.owns(row):
                    plan.response_ids.add(row["id"])
                    plan.note_unit(row)
        self._find_redis_interactions(plan, found)
        for rows in self._archived(FEEDBACK, _FB_COLUMNS):
            for row in rows:
                if plan.rated(row):
                    plan.events.add(row["stream_id"])
                    found.rated[row["response_id"]].add(row["rater"])
        cursor = "-"
        while True:
            entries: Any = self.client.xrange(self.ks.feedback_stream, min=cursor, count=CHUNK)
            for sid, fields in entries:
                if not fields or b"data" not in fields:
                    continue
                rating = orjson.loads(fields[b"data"])
                if plan.rated(rating):
                    plan.events.add(keys.text(sid))
                    found.rating_entries.append(keys.text(sid))
                    found.rated[rating["response_id"]].add(rating["rater"])
            if len(entries) < CHUNK:
                break
            cursor = keys.stream_id_after(keys.text(entries[-1][0]))
            self._renew()
        return found

    def _find_redis_interactions(self, plan: Plan, found: _Found) -> None:
        """The hot records of the user, through the stream that names every one; the
        blocks the others refer to (those stay)."""
        cursor = "-"
        while True:
            entries: Any = self.client.xrange(self.ks.interaction_stream, min=cursor, count=CHUNK)
            ids = [(keys.text(sid), keys.text(f[b"id"])) for sid, f in entries if f]
            raws = store.mget_sync(self.client, [keys.interaction(rid) for _, rid in ids])
            for (sid, rid), raw in zip(ids, raws, strict=True):
                rec = unpack(raw, rid)
                if rec is None:
                    if rid in plan.response_ids:  # deleted by an earlier run that died
                        found.ix_entries.append(sid)
                    continue
                row: dict[str, Any] = dict(rec)
                if plan.owns(row) or rid in plan.response_ids:
                    plan.response_ids.add(rid)
                    plan.note_unit(row)
                    found.records.append(rid)
                    found.ix_entries.append(sid)
                    plan.blocks.update(refs(rec))
                else:
                    found.shared_blocks.update(refs(rec))
            if len(entries) < CHUNK:
                break
            cursor = keys.stream_id_after(keys.text(entries[-1][0]))
            self._renew()

    def _archived(self, kind: str, columns: list[str]) -> Iterable[list[dict[str, Any]]]:
        """The table's rows (only ``columns``), a batch at a time."""
        dt = self.archive.table(kind)
        if dt is None:
            return
        for batch in dt.to_pyarrow_dataset().to_batches(columns=columns, batch_size=CHUNK * 10):
            yield batch.to_pylist()
            self._renew()

    # -- Redis -------------------------------------------------------------------------

    def _forget_redis(self, plan: Plan, found: _Found) -> dict[str, int]:
        c = self.client
        counts = dict.fromkeys(
            ("interactions", "blocks", "ratings", "rating_events", "review_items", "user_stats"),
            0,
        )
        # records first, their stream entries after: a crash between leaves entries
        # that name nothing (the archiver skips them), never a record nobody finds
        counts["interactions"] = self._delete([keys.interaction(r) for r in found.records])
        for start in range(0, len(found.ix_entries), CHUNK):
            c.xdel(self.ks.interaction_stream, *found.ix_entries[start : start + CHUNK])
        own = sorted(plan.blocks - found.shared_blocks)
        counts["blocks"] = self._delete([keys.block(h) for h in own])
        # ratings: the whole hash of one of the user's interactions, else the user's field
        hashes = [self.ks.feedback(rid) for rid in sorted(plan.response_ids)]
        for start in range(0, len(hashes), CHUNK):
            pipe = c.pipeline(transaction=False)
            for name in hashes[start : start + CHUNK]:
                pipe.hlen(name)
            counts["ratings"] += sum(int(n) for n in pipe.execute())
        self._delete(hashes)
        for rid, raters in sorted(found.rated.items()):
            if rid not in plan.response_ids:
                counts["ratings"] += int(c.hdel(self.ks.feedback(rid), *sorted(raters)))
        for start in range(0, len(found.rating_entries), CHUNK):
            chunk = found.rating_entries[start : start + CHUNK]
            counts["rating_events"] += int(c.xdel(self.ks.feedback_stream, *chunk))
        if found.rating_entries or plan.events:  # the ratings' text out of the stream's bytes
            stream = self.ks.feedback_stream
            self._rewrite(keys=[stream, keys.stream_rewrite(stream)])
        counts["review_items"] = self._forget_review(plan)
        for exp, version, arm, unit in sorted(plan.units):
            counts["user_stats"] += int(c.srem(self.ks.version_users(exp, version, arm), unit))
            counts["user_stats"] += int(
                self._unscore(keys=[self.ks.user_scores(exp, version, arm)], args=[f"u:{unit}"])
            )
        return counts

    def _delete(self, names: list[str]) -> int:
        """Delete keys (one pipeline per chunk: on a cluster they may lie anywhere)."""
        removed = 0
        for start in range(0, len(names), CHUNK):
            pipe = self.client.pipeline(transaction=False)
            for name in names[start : start + CHUNK]:
                pipe.delete(name)
            removed += sum(int(n) for n in pipe.execute())
        return removed

    def _forget_review(self, plan: Plan) -> int:
        tenants = self._experiment_tenants()
        names = set(tenants) | self.experiments | {u[0] for u in plan.units}
        removed = 0
        for exp in sorted(names):
            raw: Any = self.client.hgetall(self.ks.review(exp))
            by_group = plan.tenant is None or tenants.get(exp) == plan.tenant
            gone = [
                keys.text(rid)
                for rid, item in raw.items()
                if keys.text(rid) in plan.response_ids
                or (by_group and orjson.loads(item).get("group") == f"user:{plan.user}")
            ]
            if gone:
                removed += int(self.client.hdel(self.ks.review(exp), *gone))
        return removed

    def _experiment_tenants(self) -> dict[str, str | None]:
        raw: Any = self.client.hgetall(self.ks.experiments)
        out: dict[str, str | None] = {}
        for name, state in raw.items():
            out[keys.text(name)] = (orjson.loads(state).get("spec") or {}).get("tenant")
        return out

    # -- archive -----------------------------------------------------------------------

    def _forget_archive(self, plan: Plan) -> dict[str, int]:
        """One Delta DELETE per table (in chunks of ids), then a vacuum with no retention:
        no file keeps the user's rows."""
        counts = {"interactions": 0, "ratings": 0, "files_rewritten": 0}
        ids = ", ".join(_sql(i) for i in sorted(plan.response_ids))
        events = ", ".join(_sql(e) for e in sorted(plan.events))
        # by ids only (found in step 1): the log keeps each commit's predicate, and it
        # must not name the user
        predicates = {
            INTERACTIONS: [f"id IN ({ids})"] if ids else [],
            FEEDBACK: ([f"response_id IN ({ids})"] if ids else [])
            + ([f"stream_id IN ({events})"] if events else []),
        }
        for kind, wheres in predicates.items():
            dt = self.archive.table(kind)
            if dt is None or not wheres:
                continue
            done = dt.delete(" OR ".join(wheres))  # one commit: each file rewritten once
            counts["interactions" if kind == INTERACTIONS else "ratings"] += int(
                done.get("num_deleted_rows", 0)
            )
            counts["files_rewritten"] += int(done.get("num_removed_files", 0))
            self._renew()
        crash_point("forget-after-delete")
        for kind in (INTERACTIONS, FEEDBACK):
            self.archive.vacuum(kind, 0)  # what the deletes replaced, at once
        crash_point("forget-after-vacuum")
        return counts


def _sql(text: str) -> str:
    """A string literal of Delta's SQL predicates."""
    return "'" + text.replace("'", "''") + "'"


_IX_COLUMNS = [
    "id",
    "user",
    "tenant",
    "experiment",
    "experiment_version",
    "assigned_arm",
    "arm",
    "unit",
    "forced",
    "shadow_of",
]
_FB_COLUMNS = ["stream_id", "response_id", "rater", "tenant"]


@dataclass
class _Found:
    records: list[str] = field(default_factory=list)  # response ids of hot records
    ix_entries: list[str] = field(default_factory=list)  # their interaction stream ids
    shared_blocks: set[str] = field(default_factory=set)  # blocks others refer to
    rating_entries: list[str] = field(default_factory=list)  # feedback stream ids
    rated: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))


def scope(by: Principal, tenant: str | None) -> str | None:
    """Whose user to forget (the access rule's :func:`gateway.core.access.users_scope`),
    after the tenant's name is checked."""
    if tenant is not None and not valid_name(tenant):
        raise InvalidRequest(f"'{tenant:.128}' is not a valid tenant name.", param="tenant")
    return access.users_scope(by, tenant)


async def forget_user(st: GatewayState, user: str, tenant: str | None, by: Principal) -> Any:
    """``DELETE /admin/users/{user}``: Redis and the archive now, the datasets by
    ``retrain`` (``fw:forget:pending``); the counts removed per place."""
    user = valid_user(user)
    tenant = scope(by, tenant)
    settings = st.settings

    def work() -> dict[str, Any]:
        client = store.connect_sync(st.redis_url, cluster=st.ks.cluster)
        try:
            archive = open_archive(settings.data_dir, settings.archive)
            forgetter = Forgetter(
                client,
                st.ks,
                archive,
                experiments=st.control.router.experiments,
                lock_ttl_s=settings.archive.lock_ttl_s,
            )
            plan, counts = forgetter.run(user, tenant, by.name)
            counts["datasets"] = {"pending": True}
            audit(client, st.ks, by.name, None if by.all_tenants else by.tenant, plan, counts)
        except RedisError as exc:
            raise store.unavailable(exc) from None
        except OSError as exc:  # the archive's files (a rerun finishes the work)
            raise StoreUnavailable(f"The archive is unavailable: {exc}") from None
        finally:
            client.close()
        return {"object": "user.forgotten", "user": user, "tenant": tenant, "removed": counts}

    return await asyncio.to_thread(work)
