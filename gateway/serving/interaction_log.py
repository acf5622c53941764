"""The interaction log: a bounded queue drained by one background writer.

Requests only ever call :meth:`InteractionLog.submit`, which never blocks and never
touches Redis. The writer writes batches (``SET`` with expiry + ``XADD`` to the
time-ordered stream, and the per-arm counters): on one Redis as a single ``EVALSHA``
per batch, on a cluster as a pipeline. Records are kept for ``hot_s`` only, compactly encoded
(``records.pack``); the archiver (``archive.py``) copies them to Parquet before that.
When Redis is unavailable it keeps its current batch and
retries with backoff while the queue absorbs new records; once the queue is full,
new records are dropped and counted in ``flywheel_log_dropped_total`` — never
silently. Writing resumes by itself when Redis is back.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import defaultdict
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import NoScriptError, RedisError, ResponseError

from gateway.core import keys, stats, store
from gateway.core.records import (
    InteractionRecord,
    Packed,
    block_candidates,
    pack,
    resolve_all,
    unpack,
)
from gateway.core.records import refs as _refs
from gateway.core.redact import redact_all
from gateway.serving.metrics import Metrics

log = logging.getLogger(__name__)

Record = InteractionRecord


class InteractionLog:
    def __init__(
        self,
        client: aioredis.Redis,
        metrics: Metrics,
        *,
        ks: keys.Keyspace,
        queue_size: int,
        batch_size: int,
        retention_s: float,
        hot_s: float | None = None,
        redact: bool = False,
    ) -> None:
        self._client = client
        self.ks = ks
        self._metrics = metrics
        self._queue: asyncio.Queue[Record] = asyncio.Queue(maxsize=queue_size)
        self._batch_size = batch_size
        self._retention_s = retention_s
        self._hot_s = min(hot_s or retention_s, retention_s)
        self._task: asyncio.Task[None] | None = None
        self._pending: list[Record] = []  # the batch being written (kept across retries)
        self._unwritten: dict[str, Record] = {}  # queued or pending, by response id
        self._redis_ok = True
        self._redact = redact
        self._conn: AbstractConnection | None = None  # the writer's own (one Redis)

    def unwritten(self, response_id: str) -> Record | None:
        """A record accepted but not yet in Redis (a rating may arrive that soon)."""
        return self._unwritten.get(response_id)

    def submit(self, record: Record) -> None:
        if self._redact:
            for field in ("messages", "answer", "tool_calls", "choices"):
                record[field] = redact_all(record.get(field))
        try:
            self._queue.put_nowait(record)
            self._unwritten[record["id"]] = record
        except asyncio.QueueFull:
            self._metrics.log_dropped.inc()
            log.warning("interaction log queue full: dropped record %s", record.get("id"))
        self._metrics.log_queue_depth.set(self._queue.qsize())

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="interaction-log-writer")

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Flush what is queued (up to ``timeout_s``), then stop; count what is left."""
        if self._task is None:
            return
        deadline = time.monotonic() + timeout_s
        while (self._queue.qsize() or self._pending) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)  # stop() stays cancellable
        if self._conn is not None:
            await self._conn.disconnect()
            self._conn = None
        lost = len(self._pending) + self._queue.qsize()
        if lost:
            self._metrics.log_dropped.inc(lost)
            log.error("interaction log: %d records not written at shutdown", lost)

    async def _run(self) -> None:
        backoff = 0.05
        while True:
            if not self._pending:
                self._pending.append(await self._queue.get())
                # one turn of the loop: records of requests ending in it join this batch
                # (a batch's write costs the writer more than its records: bench/FINDINGS.md)
                await asyncio.sleep(0)
                while len(self._pending) < self._batch_size and not self._queue.empty():
                    self._pending.append(self._queue.get_nowait())
                self._metrics.log_queue_depth.set(self._queue.qsize())
            try:
                await self._write(self._pending)
            except (RedisError, OSError) as exc:
                self._metrics.log_write_errors.inc()
                if self._redis_ok:
                    log.error("interaction log: Redis unavailable (%s); buffering", exc)
                self._redis_ok = False
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            if not self._redis_ok:
                log.warning("interaction log: Redis is back; writing resumed")
            self._redis_ok = True
            backoff = 0.05
            self._metrics.log_written.inc(len(self._pending))
            for rec in self._pending:
                self._unwritten.pop(rec["id"], None)
            self._pending = []

    async def _known_blocks(self, batch: list[Record], hot: int) -> set[str]:
        """Which earlier turns of the batch's conversations are blocks in Redis already (one
        round trip per batch, none for single-turn traffic). A block about to expire counts
        as unknown, so a reference never outlives what it names."""
        wanted = sorted({h for rec in batch for h in block_candidates(rec)})
        if not wanted:
            return set()
        pipe = self._client.pipeline(transaction=False)
        for h in wanted:
            pipe.ttl(keys.block(h))
        ttls = await pipe.execute()
        return {h for h, ttl in zip(wanted, ttls, strict=True) if ttl > min(60, hot // 2)}

    async def _write(self, batch: list[Record]) -> None:
        ttl, hot = int(self._retention_s), max(1, int(self._hot_s))
        oldest_ms = int((time.time() - self._hot_s) * 1000)
        known = await self._known_blocks(batch, hot)
        packs = await _pack_all(batch, known)
        blocks: dict[str, bytes] = {}
        refreshed: set[str] = set()
        for packed in packs:
            blocks.update(packed.blocks)
            refreshed.update(packed.refreshed)
        refreshed.difference_update(blocks)
        statistics = arm_statistics(self.ks, batch)
        users = arm_users(self.ks, batch)
        if self.ks.cluster:  # records and blocks spread over the masters: no one script
            await self._pipelined(batch, packs, blocks, refreshed, statistics, users, ttl, hot)
            return
        # One Redis: the whole batch is one EVALSHA, every command runs inside Redis
        # (bench/FINDINGS.md: a command each cost the writer more than the record).
        args: list[Any] = [hot, ttl, oldest_ms, len(batch), len(blocks), len(refreshed)]
        n_fields = sum(len(fields) for fields in statistics.values())
        per_version = [key for key in statistics if keys.is_per_version(key)]
        args += [n_fields, len(per_version), len(users)]
        for rec, packed in zip(batch, packs, strict=True):
            args += (keys.interaction(rec["id"]), packed.record, rec["id"])
            args += (rec["experiment"] or "", rec["arm"])
        for h, block in blocks.items():
            args += (keys.block(h), block)
        args += [keys.block(h) for h in refreshed]
        for key, fields in statistics.items():
            for name, n in fields.items():
                args += (key, name, n)
        args += per_version
        for key, units in users.items():
            args += (key, len(units), *units)
        await self._eval(self.ks.interaction_stream, args)

    async def _eval(self, stream: str, args: list[Any]) -> None:
        """``WRITE_BATCH`` on the writer's own connection, made like the pool's and retried
        as the client retries a command: one command and its reply, without the client's
        per-command work (taking a connection from the pool and checking it, observability
        hooks: bench/FINDINGS.md). A failure other than Redis's own answer drops the
        connection (a reply may be left unread); the next try connects again."""
        conn = self._conn
        if conn is None:
            pool = self._client.connection_pool
            conn = self._conn = pool.connection_class(**pool.connection_kwargs)

        async def call() -> None:
            await conn.send_command("EVALSHA", _WRITE_BATCH_SHA, 1, stream, *args)
            try:
                await conn.read_response()
            except NoScriptError:  # a restarted or flushed Redis: send the script itself
                await conn.send_command("EVAL", WRITE_BATCH, 1, stream, *args)
                await conn.read_response()

        try:
            await conn.retry.call_with_retry(call, lambda _: conn.disconnect())
        except ResponseError:
            raise
        except BaseException:
            await conn.disconnect(nowait=True)
            raise

    async def _pipelined(
        self,
        batch: list[Record],
        packs: list[Packed],
        blocks: dict[str, bytes],
        refreshed: set[str],
        statistics: dict[str, dict[str, int]],
        users: dict[str, set[str]],
        ttl: int,
        hot: int,
    ) -> None:
        """The batch as one pipeline of single-key commands (what a cluster can route)."""
        oldest_ms = int((time.time() - self._hot_s) * 1000)
        pipe = self._client.pipeline(transaction=False)
        for rec, packed in zip(batch, packs, strict=True):
            pipe.set(keys.interaction(rec["id"]), packed.record, ex=hot)
            pipe.xadd(
                self.ks.interaction_stream,
                {"id": rec["id"], "experiment": rec["experiment"] or "", "arm": rec["arm"]},
                minid=oldest_ms,
                approximate=True,
            )
        for h, block in blocks.items():  # (re)set: its expiry moves on with each use
            pipe.set(keys.block(h), block, ex=hot)
        for h in refreshed:
            pipe.expire(keys.block(h), hot)
        for key, fields in statistics.items():
            for name, n in fields.items():
                pipe.hincrby(key, name, n)
            if keys.is_per_version(key):
                pipe.expire(key, ttl)
        for key, units in users.items():
            pipe.sadd(key, *units)
            pipe.expire(key, ttl)
        await pipe.execute()


# The batch write on one Redis. ARGV: hot (records' and blocks' expiry), ttl (counters'),
# the stream's MINID, then the counts of records, blocks, refreshed blocks, counter
# increments, per-version counters and user sets, then each group in that order:
# (key, packed, id, experiment, arm), (key, block), key, (key, field, n), key,
# (key, number of units, units…). Blocks are (re)set: a block's expiry moves on with each
# use, so it outlives every record that refers to it.
WRITE_BATCH = """
local hot, ttl, minid = ARGV[1], ARGV[2], ARGV[3]
local i = 10
for _ = 1, tonumber(ARGV[4]) do
  redis.call('SET', ARGV[i], ARGV[i + 1], 'EX', hot)
  redis.call('XADD', KEYS[1], 'MINID', '~', minid, '*',
             'id', ARGV[i + 2], 'experiment', ARGV[i + 3], 'arm', ARGV[i + 4])
  i = i + 5
end
for _ = 1, tonumber(ARGV[5]) do
  redis.call('SET', ARGV[i], ARGV[i + 1], 'EX', hot)
  i = i + 2
end
for _ = 1, tonumber(ARGV[6]) do
  redis.call('EXPIRE', ARGV[i], hot)
  i = i + 1
end
for _ = 1, tonumber(ARGV[7]) do
  redis.call('HINCRBY', ARGV[i], ARGV[i + 1], ARGV[i + 2])
  i = i + 3
end
for _ = 1, tonumber(ARGV[8]) do
  redis.call('EXPIRE', ARGV[i], ttl)
  i = i + 1
end
for _ = 1, tonumber(ARGV[9]) do
  local n = tonumber(ARGV[i + 1])
  redis.call('SADD', ARGV[i], unpack(ARGV, i + 2, i + 1 + n))
  redis.call('EXPIRE', ARGV[i], ttl)
  i = i + 2 + n
end
return 0
"""
_WRITE_BATCH_SHA = hashlib.sha1(WRITE_BATCH.encode()).hexdigest()

PACK_SLICE = 16  # records packed between two turns of the event loop


async def _pack_all(batch: list[Record], known: set[str]) -> list[Packed]:
    """Pack a batch on the event loop, giving it back every few records: a small record
    costs less to pack than a hand-over to a thread (bench/FINDINGS.md)."""
    out = []
    for n, rec in enumerate(batch, 1):
        packed = pack(rec, known)
        known.update(packed.blocks)  # a later turn in the same batch refers to it
        out.append(packed)
        if n % PACK_SLICE == 0 and n < len(batch):
            await asyncio.sleep(0)
    return out


def arm_statistics(ks: keys.Keyspace, batch: list[Record]) -> dict[str, dict[str, int]]:
    """The per-arm counters a batch adds (``fw:req:*`` and ``fw:vreq:*``, see keys.py).

    Summed per batch, so a batch of 256 records costs a handful of HINCRBYs, not 256.
    Experiment traffic is counted twice: in total, and under the experiment version that
    served it (what the decider reads). Summed once per (experiment, version, arm) and
    named at the end: a record costs a few dict updates.
    """
    groups: dict[tuple[str | None, int, str], dict[str, int]] = {}
    for rec in batch:
        if rec.get("shadow_of"):
            continue  # a shadow answer is nobody's traffic
        exp, version = rec.get("experiment"), rec.get("experiment_version") or 0
        c = groups.get((exp, version, rec["arm"]))
        if c is None:
            c = groups[(exp, version, rec["arm"])] = {}
        c["requests"] = c.get("requests", 0) + 1
        status = rec["status"]
        if status == "error" or status == "cancelled":
            name = "errors" if status == "error" else "cancelled"
            c[name] = c.get(name, 0) + 1
        usage = rec.get("usage") or {}
        for kind in ("prompt_tokens", "completion_tokens"):
            n = usage.get(kind)
            if isinstance(n, int):
                c[kind] = c.get(kind, 0) + n
        name = f"lat:{stats.bucket(rec['latency_ms'])}"
        c[name] = c.get(name, 0) + 1
        if (ttft := rec.get("ttft_ms")) is not None:
            name = f"ttft:{stats.bucket(ttft)}"
            c[name] = c.get(name, 0) + 1
        if rec.get("fallback"):
            c = groups.get((exp, version, rec["assigned_arm"]))
            if c is None:
                c = groups[(exp, version, rec["assigned_arm"])] = {}
            c["failed_over"] = c.get("failed_over", 0) + 1
    out: dict[str, dict[str, int]] = {}
    for (exp, version, arm), fields in groups.items():
        names = [ks.requests(exp, arm)]
        if exp:
            names.append(ks.version_requests(exp, version, arm))
        for key in names:
            total = out.get(key)
            if total is None:
                out[key] = dict(fields)
            else:  # (a record without a version and one of version 0 name the same key)
                for name, n in fields.items():
                    total[name] = total.get(name, 0) + n
    return out


def arm_users(ks: keys.Keyspace, batch: list[Record]) -> dict[str, set[str]]:
    """The units (users) a batch assigned to each arm by weight (``fw:users:*``): the SRM
    test counts users, not requests, so one heavy user cannot fake a mismatch."""
    out: dict[str, set[str]] = defaultdict(set)
    for rec in batch:
        exp = rec.get("experiment")
        unit = rec.get("unit")
        if exp and not rec.get("forced") and not rec.get("shadow_of") and unit:
            version = rec.get("experiment_version") or 0
            out[ks.version_users(exp, version, rec["assigned_arm"])].add(unit)
    return out


async def load(client: aioredis.Redis, ids: list[str]) -> list[Record | None]:
    """Interaction records by response id (None: unknown or past the hot window), their
    message blocks put back: two round trips for any number of ids."""
    if not ids:
        return []
    raws = await store.mget(client, [keys.interaction(i) for i in ids])
    recs = [unpack(raw, rid) for raw, rid in zip(raws, ids, strict=True)]
    wanted = sorted({h for r in recs if r is not None for h in _refs(r)})
    blocks = await store.mget(client, [keys.block(h) for h in wanted]) if wanted else []
    return resolve_all(recs, lambda _: blocks)
