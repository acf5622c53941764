"""The archive: interactions and ratings as Parquet files, long after Redis let them go.

Redis keeps interactions for ``interaction_log.hot_s`` only. The archiver reads the
interaction stream and the feedback stream through a consumer group (``archive``) and
writes what it read as Parquet (zstd) to ``archive.url`` — a directory (by default
``data_dir/archive``) or any fsspec URL (``s3://…``, ``gs://…``)::

    interactions/date=2026-11-30/exp=ab/part-<stream id>.parquet
    feedback/date=2026-11-30/exp=ab/part-<stream id>.parquet
    manifest.json

The columns are the record definitions' (``records.py``): scalars typed, nested values
(messages, tools, usage…) JSON text, plus ``stream_id``. The partition keys are named
apart from the columns (``exp``: the experiment, ``-`` for direct model requests, whose
``experiment`` column is null), so an engine's hive partitioning adds ``date`` and
``exp`` without shadowing a column. The files are the interface: any engine that reads Parquet reads
them (docs/archive.md).

One pass, for each stream (crash-safe at every step; the tests kill it at each):

1. read what an earlier pass left unacknowledged, then new entries (``batch`` at most);
   entries the manifest already covers (at or below its ``last_id`` for the stream) were
   archived by a pass that died before acknowledging: they are acknowledged and skipped;
2. write each partition's rows to a temporary file, fsynced, then rename it to its final
   name, which is derived from the batch's first stream id: a retry of the same batch
   (the same unacknowledged entries, in the same order) writes the same names again;
3. replace ``manifest.json`` (temp file + rename): the files, and the stream's ``last_id``;
4. acknowledge the entries.

A file whose name is not in the manifest belongs to a pass that died before step 3: the
next pass deletes it (its rows are still unacknowledged in Redis and are written again).
Readers that want exactly the committed rows read the manifest's file list; a glob over
the directory is right except for the moment of such a crash.

Only one archiver runs at a time: it holds ``fw:archive:lock`` (renewed as a pass goes
on, free between the gateway's passes, it lapses ``lock_ttl_s`` after its holder dies),
so every gateway replica and worker may run one, and ``retrain archive`` may run beside
them. While ``fw:archive:pause`` is set (a forget wants the lock, ``forget.py``), a pass
releases the lock and does nothing.
"""

from __future__ import annotations

import gc
import logging
import os
import socket
import time
import uuid
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import redis
from fsspec.implementations.local import LocalFileSystem

from gateway.core import keys, store
from gateway.core.locks import alive
from gateway.core.records import (
    EXCHANGE,
    INTERACTION_FIELDS,
    JSON_COLUMN,
    REF,
    FeedbackEvent,
    InteractionRecord,
    arrow_type,
    column_kinds,
    decode_feedback,
    interaction,
    messages_json,
    resolve_all,
    unpack,
    unpack_values,
)

if TYPE_CHECKING:
    from gateway.core.config import ArchiveConfig

log = logging.getLogger(__name__)

_MESSAGES = INTERACTION_FIELDS.index("messages")
# Columns whose values hardly repeat: no dictionary encoding (it would be tried, then dropped).
_DISTINCT = {"stream_id", "id", "request_id", "messages", "answer", "tool_calls", "choices"}

INTERACTIONS, FEEDBACK = "interactions", "feedback"
MANIFEST = "manifest.json"
CRASH_ENV = "FLYWHEEL_ARCHIVE_CRASH_AT"  # fault injection for tests: a step name


def streams(ks: keys.Keyspace) -> dict[str, str]:
    """The stream each kind is archived from, in the keyspace the archiver was given."""
    return {INTERACTIONS: ks.interaction_stream, FEEDBACK: ks.feedback_stream}


# Renew the lock while it is ours; take it when free (or from ARGV[3], a dead holder).
_HOLD = """
local cur = redis.call('GET', KEYS[1])
if cur == false or cur == ARGV[1] or cur == ARGV[3] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def crash_point(step: str) -> None:
    """Die here, as if killed, when ``FLYWHEEL_ARCHIVE_CRASH_AT`` names this step."""
    if os.environ.get(CRASH_ENV) == step:
        os._exit(137)


def default_url(data_dir: Path, url: str | None) -> str:
    return url or str(Path(data_dir) / "archive")


def open_archive(data_dir: Path, cfg: ArchiveConfig) -> Archive:
    """The configured archive: ``archive.url`` (default ``data_dir/archive``) opened with
    ``archive.storage_options``."""
    return Archive(default_url(data_dir, cfg.url), cfg.storage_options)


@dataclass
class PassResult:
    written: dict[str, int] = field(default_factory=lambda: {INTERACTIONS: 0, FEEDBACK: 0})
    files: int = 0
    expired: int = 0  # interaction entries whose record had left Redis unarchived
    skipped: int = 0  # entries an earlier pass had archived but not acknowledged
    held_by: str | None = None  # another archiver holds the lock: nothing done


def _columns() -> dict[str, dict[str, str]]:
    ix = {"stream_id": "string", **column_kinds(InteractionRecord)}
    fb = {"stream_id": "string", "replaced": "bool", **column_kinds(FeedbackEvent)}
    return {INTERACTIONS: ix, FEEDBACK: fb}


COLUMNS = _columns()


def arrow_schema(kind: str) -> Any:
    import pyarrow as pa

    return pa.schema([(n, arrow_type(k)) for n, k in COLUMNS[kind].items()])


class Archive:
    """The archive's files and manifest at one fsspec URL."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        import fsspec

        self.url = url.rstrip("/")
        self.storage_options = dict(storage_options or {})
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **self.storage_options)
        self.local = isinstance(self.fs, LocalFileSystem)
        self.fs.makedirs(self.root, exist_ok=True)

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def manifest(self) -> dict[str, Any]:
        try:
            with self.fs.open(self.path(MANIFEST), "rb") as f:
                doc: dict[str, Any] = orjson.loads(f.read())
                return doc
        except FileNotFoundError:
            return {"format": 1, "streams": {}, "files": []}

    def _put(self, final: str, data: bytes) -> None:
        """Write ``data`` so that ``final`` appears whole or not at all."""
        if not self.local:  # an object store: one PUT is atomic
            with self.fs.open(final, "wb") as f:
                f.write(data)
            return
        self.fs.makedirs(os.path.dirname(final), exist_ok=True)
        tmp = self.path(f".tmp-{uuid.uuid4().hex}")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        _fsync_dir(os.path.dirname(final))

    def write_manifest(self, doc: dict[str, Any]) -> None:
        self._put(self.path(MANIFEST), orjson.dumps(doc, option=orjson.OPT_INDENT_2))

    def write_parquet(self, relative: str, table: Any) -> int:
        import pyarrow as pa
        import pyarrow.parquet as pq

        sink = pa.BufferOutputStream()
        pq.write_table(
            table,
            sink,
            compression="zstd",
            compression_level=3,
            use_dictionary=[n for n in table.column_names if n not in _DISTINCT],
        )
        data = sink.getvalue().to_pybytes()
        self._put(self.path(relative), data)
        return len(data)

    def clean(self, manifest: dict[str, Any]) -> int:
        """Delete files no manifest names (a pass died before committing them) and temps."""
        committed = {f["path"] for f in manifest["files"]}
        removed = 0
        for kind in (INTERACTIONS, FEEDBACK):
            for path in self.fs.glob(self.path(kind, "**", "*.parquet")):
                rel = path[len(self.root) + 1 :] if path.startswith(self.root) else path
                if rel not in committed:
                    self.fs.rm(path)
                    removed += 1
        if self.local:
            for path in self.fs.glob(self.path(".tmp-*")):
                self.fs.rm(path)
        return removed

    def files(self, kind: str) -> list[str]:
        """The committed files of one kind, as paths or URLs (what readers should read)."""
        paths = [self.path(f["path"]) for f in self.manifest()["files"] if f["kind"] == kind]
        return paths if self.local else [self.fs.unstrip_protocol(p) for p in paths]


def find_interactions(
    archive: Archive, ids: list[str], days: set[str] | None = None
) -> dict[str, InteractionRecord]:
    """Archived interactions by response id (only the ``days`` partitions, when given).

    One DuckDB query over the committed files: the ids are joined to the files' ``id``
    column (a hash join, the ids its build side), so a build that joins 100,000 ratings
    reads the archive once, in parallel, streaming (bench/FINDINGS.md)."""
    if not ids:
        return {}
    files = [
        archive.path(f["path"])
        for f in archive.manifest()["files"]
        if f["kind"] == INTERACTIONS
        and (days is None or f["path"].split("/")[1].removeprefix("date=") in days)
    ]
    if not files:
        return {}
    import duckdb
    import pyarrow as pa

    names = list(COLUMNS[INTERACTIONS])
    with duckdb.connect() as db:
        if not archive.local:
            db.register_filesystem(archive.fs)
            files = [archive.fs.unstrip_protocol(f) for f in files]
        db.register("wanted", pa.table({"id": sorted(set(ids))}))
        source = "read_parquet($files, union_by_name = true, hive_partitioning = false)"
        # Files written before a field existed lack its column: it reads as its default.
        present = set(db.sql(f"SELECT * FROM {source} LIMIT 0", params={"files": files}).columns)
        select = ", ".join(f'"{n}"' for n in names if n != "stream_id" and n in present)
        found = db.sql(
            f"SELECT {select} FROM {source} WHERE id IN (SELECT id FROM wanted)",
            params={"files": files},
        )
        out: dict[str, InteractionRecord] = {}
        # (duckdb < 1.4 names it fetch_arrow_reader)
        reader = getattr(found, "to_arrow_reader", None) or found.fetch_arrow_reader
        for batch in reader(10_000):  # streamed: rows become records a batch at a time
            out.update((rec["id"], rec) for rec in records_of(batch))
    return out


def records_of(table: Any) -> list[InteractionRecord]:
    """Interaction records from archived rows (an Arrow table or record batch of the
    archive's columns), converted column by column."""
    kinds = COLUMNS[INTERACTIONS]
    names = [n for n in table.column_names if n in kinds and n != "stream_id"]
    columns = []
    for name in names:
        values = table.column(name).to_pylist()
        if kinds[name] == JSON_COLUMN:
            values = [None if v is None else orjson.loads(v) for v in values]
        columns.append(values)
    return [interaction(dict(zip(names, row, strict=True))) for row in zip(*columns, strict=True)]


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _partition(experiment: str | None, created: float) -> str:
    day = datetime.fromtimestamp(created, UTC).strftime("%Y-%m-%d")
    return f"date={day}/exp={_safe(experiment or keys.NO_EXPERIMENT)}"


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


class Archiver:
    """Drains the interaction and feedback streams into an :class:`Archive` (one pass at a
    time, under the archive lock)."""

    def __init__(
        self,
        client: redis.Redis,
        ks: keys.Keyspace,
        archive: Archive,
        *,
        batch: int = 50_000,
        lock_ttl_s: float = 60.0,
        owner: str | None = None,
    ) -> None:
        self.client = client
        self.ks = ks
        self.archive = archive
        self.batch = batch
        self.lock_ttl_ms = int(lock_ttl_s * 1000)
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.consumer = self.owner
        self._hold = client.register_script(_HOLD)
        self._release = client.register_script(_RELEASE)
        self._groups_ready = False
        self._cleaned = False

    def hold(self) -> str | None:
        """Take or renew the lock: None when ours, else who holds it. A lock whose holder
        died on this host is taken over at once; one held elsewhere lapses by itself."""
        if self._hold(keys=[self.ks.archive_lock], args=[self.owner, self.lock_ttl_ms, ""]):
            return None
        holder = keys.text(self.client.get(self.ks.archive_lock) or b"?")
        host, pid = (holder.split(":") + ["", ""])[:2]
        if host == socket.gethostname() and pid.isdigit() and not alive(int(pid)):
            if self._hold(keys=[self.ks.archive_lock], args=[self.owner, self.lock_ttl_ms, holder]):
                return None
        return holder

    def release(self) -> None:
        self._release(keys=[self.ks.archive_lock], args=[self.owner])

    def ensure_groups(self) -> None:
        for stream in streams(self.ks).values():
            try:
                self.client.xgroup_create(stream, keys.ARCHIVE_GROUP, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        self._groups_ready = True

    def run_once(self, until_empty: bool = True, max_wait_s: float = 0.0) -> PassResult:
        """One pass: each stream drained (``until_empty``) or one batch of each.

        With ``max_wait_s``, a stream is left for a later pass while fewer than ``batch``
        entries wait and the oldest has waited less than that: files stay few and large.
        """
        result = PassResult()
        paused = self.client.get(self.ks.archive_pause)
        if paused is not None:  # a forget waits for the lock: hand it over
            self.release()
            result.held_by = keys.text(paused)
            return result
        holder = self.hold()
        if holder is not None:
            result.held_by = holder
            return result
        if not self._groups_ready:
            self.ensure_groups()
        manifest = self.archive.manifest()
        if not self._cleaned or self._interrupted():
            self.archive.clean(manifest)  # files of a pass that died before committing
            self._cleaned = True
        for kind in (INTERACTIONS, FEEDBACK):
            if max_wait_s and not self._due(streams(self.ks)[kind], max_wait_s):
                continue
            while True:
                n = self._batch(kind, manifest, result)
                if n == 0 or not until_empty:
                    break
                if self.hold() is not None:  # lost the lock (a long stall): stop here
                    return result
        return result

    def _interrupted(self) -> bool:
        """An earlier pass read entries and did not acknowledge them (it died)."""
        return any(
            self.client.xpending(stream, keys.ARCHIVE_GROUP)["pending"]
            for stream in streams(self.ks).values()
        )

    def _due(self, stream: str, max_wait_s: float) -> bool:
        """Enough entries wait for a full file, or the oldest has waited ``max_wait_s``."""
        if self.client.xpending(stream, keys.ARCHIVE_GROUP)["pending"]:
            return True
        group = next(
            g
            for g in self.client.xinfo_groups(stream)
            if keys.text(g["name"]) == keys.ARCHIVE_GROUP
        )
        lag = group.get("lag")
        if lag is not None and lag >= self.batch:
            return True
        after = keys.stream_id_after(keys.text(group["last-delivered-id"]))
        first: Any = self.client.xrange(stream, min=after, count=1)
        if not first:
            return False
        waited_ms = time.time() * 1000 - keys.stream_id_order(keys.text(first[0][0]))[0]
        return waited_ms >= max_wait_s * 1000 or (lag is None and len(first) >= self.batch)

    def _read(self, stream: str) -> list[tuple[str, dict[bytes, bytes]]]:
        """Unacknowledged entries first (an earlier pass died), then new ones."""
        out: list[tuple[str, dict[bytes, bytes]]] = []
        cursor: Any = "0-0"
        while len(out) < self.batch:
            reply: Any = self.client.xautoclaim(
                stream,
                keys.ARCHIVE_GROUP,
                self.consumer,
                min_idle_time=0,
                start_id=cursor,
                count=self.batch - len(out),
            )
            cursor = reply[0]
            out += [(keys.text(sid), f) for sid, f in reply[1] if f]
            if keys.text(cursor) == "0-0":
                break
        if len(out) < self.batch:
            fresh: Any = self.client.xreadgroup(
                keys.ARCHIVE_GROUP, self.consumer, {stream: ">"}, count=self.batch - len(out)
            )
            for _, entries in fresh or []:
                out += [(keys.text(sid), f) for sid, f in entries]
        return out

    def _batch(self, kind: str, manifest: dict[str, Any], result: PassResult) -> int:
        # The cyclic garbage collector waits while a batch is read and made a table: that
        # allocates hundreds of thousands of containers that all live until the table is
        # built, and would be traversed again and again (a fifth of a pass's CPU).
        enabled = gc.isenabled()
        gc.disable()
        try:
            return self._write_batch(kind, manifest, result)
        finally:
            if enabled:
                gc.enable()

    def _write_batch(self, kind: str, manifest: dict[str, Any], result: PassResult) -> int:
        stream = streams(self.ks)[kind]
        entries = self._read(stream)
        if not entries:
            return 0
        done = manifest["streams"].get(kind, {}).get("last_id")
        if done is not None:
            bound = keys.stream_id_order(done)
            old = [s for s, _ in entries if keys.stream_id_order(s) <= bound]
            if old:  # archived by a pass that died before acknowledging
                self.client.xack(stream, keys.ARCHIVE_GROUP, *old)
                result.skipped += len(old)
                entries = [(s, f) for s, f in entries if keys.stream_id_order(s) > bound]
                if not entries:
                    return len(old)
        table, parts = self._table(kind, entries, result)
        crash_point("after-read")
        first, last = entries[0][0], entries[-1][0]
        by_part: dict[str, list[int]] = defaultdict(list)
        for i, part in enumerate(parts):
            by_part[part].append(i)
        written = []
        for part, rows in sorted(by_part.items()):
            rel = f"{kind}/{part}/part-{first}.parquet"
            size = self.archive.write_parquet(rel, table if len(by_part) == 1 else table.take(rows))
            written.append(
                {
                    "path": rel,
                    "kind": kind,
                    "rows": len(rows),
                    "bytes": size,
                    "first_id": first,
                    "last_id": last,
                }
            )
            crash_point("after-file")
        manifest["files"] = [*manifest["files"], *written]
        manifest["streams"][kind] = {"last_id": last, "updated": time.time()}
        self.archive.write_manifest(manifest)
        crash_point("after-manifest")
        self.client.xack(stream, keys.ARCHIVE_GROUP, *[s for s, _ in entries])
        crash_point("after-ack")
        result.written[kind] += len(parts)
        result.files += len(written)
        return len(entries)

    def _table(
        self, kind: str, entries: list[tuple[str, dict[bytes, bytes]]], result: PassResult
    ) -> tuple[Any, list[str]]:
        """The entries' rows as an Arrow table (built column by column), and each row's
        partition."""
        if kind == FEEDBACK:
            docs: list[dict[str, Any]] = []
            for sid, fields in entries:
                rec: dict[str, Any] = dict(decode_feedback(fields[b"data"]))
                rec["stream_id"], rec["replaced"] = sid, fields.get(b"replaced") == b"1"
                docs.append(rec)
            cols = COLUMNS[FEEDBACK]
            table = arrow_table(kind, {n: [d.get(n) for d in docs] for n in cols})
            return table, _partitions(
                [d.get("experiment") for d in docs], [d.get("created") for d in docs]
            )
        sids, rows, refs = interaction_values(
            self.client, [(sid, keys.text(f[b"id"])) for sid, f in entries]
        )
        result.expired += len(entries) - len(rows)
        if result.expired:
            log.warning("archive: %d interactions had left Redis before archiving", result.expired)
        columns: dict[str, list[Any]] = {"stream_id": sids}
        for name, values in zip(
            INTERACTION_FIELDS,
            zip(*rows, strict=True) if rows else [[] for _ in INTERACTION_FIELDS],
            strict=True,
        ):
            columns[name] = list(values)
        columns["messages"] = [messages_json(m, refs) for m in columns["messages"]]
        table = arrow_table(kind, columns)
        return table, _partitions(columns["experiment"], columns["created"])


def arrow_table(kind: str, columns: dict[str, list[Any]]) -> Any:
    """A table of the archive's schema from Python values (nested values still objects,
    except ``bytes``: JSON text already)."""
    import pyarrow as pa

    arrays = []
    for name, kind_of in COLUMNS[kind].items():
        values = columns[name]
        if kind_of == JSON_COLUMN:
            values = [v if v is None or isinstance(v, bytes) else orjson.dumps(v) for v in values]
        arrays.append(pa.array(values, type=arrow_type(kind_of)))
    return pa.Table.from_arrays(arrays, schema=arrow_schema(kind))


def _partitions(experiments: list[str | None], created: list[Any]) -> list[str]:
    """Each row's partition (``date=…/exp=…``), each one formatted once."""
    names: dict[tuple[int, str | None], str] = {}
    out = []
    for exp, when in zip(experiments, created, strict=True):
        key = (int(when or 0) // 86400, exp)
        if key not in names:
            names[key] = _partition(exp, key[0] * 86400)
        out.append(names[key])
    return out


def interaction_values(
    client: redis.Redis, entries: list[tuple[str, str]]
) -> tuple[list[str], list[list[Any]], dict[str, bytes | None]]:
    """The packed values of interactions (stream id, response id) still in Redis: their
    stream ids, their values in field order, and the blocks they refer to (hash → JSON)."""
    sids: list[str] = []
    rows: list[list[Any]] = []
    for start in range(0, len(entries), 5000):
        chunk = entries[start : start + 5000]
        raws = store.mget_sync(client, [keys.interaction(rid) for _, rid in chunk])
        for (sid, rid), raw in zip(chunk, raws, strict=True):
            values = unpack_values(raw, rid)
            if values is not None:
                sids.append(sid)
                rows.append(values)
    wanted: list[str] = sorted(
        {
            str(m.get(REF) or m.get(EXCHANGE))
            for values in rows
            for m in values[_MESSAGES]
            if isinstance(m, dict) and (REF in m or EXCHANGE in m)
        }
    )
    blocks: dict[str, bytes | None] = {}
    for start in range(0, len(wanted), 5000):
        hashes = wanted[start : start + 5000]
        raws = store.mget_sync(client, [keys.block(h) for h in hashes])
        blocks.update(
            {
                h: None if raw is None else zlib.decompress(raw)
                for h, raw in zip(hashes, raws, strict=True)
            }
        )
    return sids, rows, blocks


def load_sync(client: redis.Redis, ids: list[str]) -> list[InteractionRecord | None]:
    """Interaction records by response id from Redis (sync client), blocks put back."""
    if not ids:
        return []
    recs: list[InteractionRecord | None] = []
    for start in range(0, len(ids), 1000):
        chunk = ids[start : start + 1000]
        raws = store.mget_sync(client, [keys.interaction(i) for i in chunk])
        recs += [unpack(raw, rid) for raw, rid in zip(raws, chunk, strict=True)]

    def fetch(hashes: list[str]) -> list[Any]:
        out: list[Any] = []
        for start in range(0, len(hashes), 1000):
            out += store.mget_sync(client, [keys.block(h) for h in hashes[start : start + 1000]])
        return out

    return resolve_all(recs, fetch)
