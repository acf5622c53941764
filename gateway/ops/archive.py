"""The archive: interactions and ratings as two Delta Lake tables, long after Redis let them go.

Redis keeps interactions for ``interaction_log.hot_s`` only. The archiver reads the
interaction stream and the feedback stream through a consumer group (``archive``) and
appends what it read to two Delta Lake tables (delta-rs: Parquet files, zstd, and a
transaction log) under ``archive.url`` — a directory (by default ``data_dir/archive``) or
an object store (``s3://…``)::

    interactions/_delta_log/00000000000000000000.json …
    interactions/date=2026-11-30/exp=ab/part-00000-<uuid>-c000.zstd.parquet
    feedback/_delta_log/…
    feedback/date=2026-11-30/exp=ab/part-….zstd.parquet

The columns are the record definitions' (``records.py``): scalars typed, nested values
(messages, tools, usage…) JSON text, plus ``stream_id`` and the partition columns
``date`` (the day the request came, UTC) and ``exp`` (the experiment, ``-`` for direct
model requests, whose ``experiment`` column is null). The tables are the interface: any
engine that reads Delta reads them (DuckDB, Polars, Spark: docs/archive.md).

One pass, for each stream (crash-safe at every step; the tests kill it at each):

1. read what an earlier pass left unacknowledged, then new entries (``batch`` at most);
   entries the table already holds (at or below the version of the stream's
   transaction id, ``archiver-interactions`` / ``archiver-feedback``: the last stream
   id committed, as a number) were archived by a pass that died before acknowledging:
   they are acknowledged and skipped;
2. append the rows in one Delta commit that also sets the stream's transaction id to the
   batch's last stream id: the rows and the mark that they are in are one atomic commit
   (files written before a commit that never happened are named by no commit: vacuum
   removes them);
3. acknowledge the entries.

Then upkeep: a partition holding more than ``archive.compact_files`` files smaller than
half of ``archive.target_file_mb`` is compacted (``OPTIMIZE``: one commit replaces them
by files of about the target size), and the files a commit replaced are vacuumed once
they are ``archive.vacuum_retention_hours`` old (readers of an older snapshot keep theirs
until then). The log's commits older than ``archive.log_retention_hours`` are deleted by
the next checkpoint (delta-rs writes one every 100 commits; the transaction ids live on
in it), so the log on disk is bounded by that window.

An archive still in the earlier layout (Parquet files and ``manifest.json``) is copied
into the tables first (:func:`migrate_legacy`, exactly once, by the first pass, a forget
or ``retrain archive --migrate``).

Only one archiver runs at a time: it holds ``fw:archive:lock`` (renewed as a pass goes
on, free between the gateway's passes, it lapses ``lock_ttl_s`` after its holder dies),
so every gateway replica and worker may run one, and ``retrain archive`` may run beside
them. While ``fw:archive:pause`` is set (a forget wants the lock, ``forget.py``), a pass
releases the lock and does nothing. Only the lock holder writes the tables, so commits
never conflict.
"""

from __future__ import annotations

import gc
import logging
import os
import socket
import threading
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
    return Archive(
        default_url(data_dir, cfg.url),
        cfg.storage_options,
        target_file_mb=cfg.target_file_mb,
        compact_files=cfg.compact_files,
        vacuum_retention_hours=cfg.vacuum_retention_hours,
        log_retention_hours=cfg.log_retention_hours,
    )


@dataclass
class PassResult:
    written: dict[str, int] = field(default_factory=lambda: {INTERACTIONS: 0, FEEDBACK: 0})
    files: int = 0  # commits (one per batch and table)
    compacted: int = 0  # partitions compacted by the pass's upkeep
    migrated: int = 0  # rows copied from the earlier layout
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
    """The archive's two Delta tables at one URL (a directory or ``s3://…``)."""

    def __init__(
        self,
        url: str,
        storage_options: dict[str, Any] | None = None,
        *,
        target_file_mb: float = 64.0,
        compact_files: int = 16,
        vacuum_retention_hours: int = 1,
        log_retention_hours: int = 24,
    ) -> None:
        import fsspec

        self.url = url.rstrip("/")
        self.storage_options = dict(storage_options or {})
        self.delta_options = delta_options(self.storage_options)
        self.target_bytes = int(target_file_mb * 1024 * 1024)
        self.compact_files = compact_files
        self.vacuum_retention_hours = vacuum_retention_hours
        self.log_retention = f"interval {int(log_retention_hours)} hours"
        fs_options = {k: v for k, v in self.storage_options.items() if not k.isupper()}
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **fs_options)
        self.local = isinstance(self.fs, LocalFileSystem)
        if self.local:
            self.fs.makedirs(self.root, exist_ok=True)
        self._tables: dict[str, Any] = {}
        self._lock = threading.RLock()  # one DeltaTable per kind, shared by threads
        self._vacuumed: dict[str, float] = {}

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def uri(self, kind: str) -> str:
        """The table's URI (what delta-rs, Polars or Spark open)."""
        return self.path(kind) if self.local else self.fs.unstrip_protocol(self.path(kind))

    def table(self, kind: str) -> Any:
        """The table of ``kind`` at its latest version, or None before its first commit."""
        from deltalake import DeltaTable
        from deltalake.exceptions import TableNotFoundError

        with self._lock:
            dt = self._tables.get(kind)
            if dt is not None:
                dt.update_incremental()
                return dt
            try:
                dt = DeltaTable(self.uri(kind), storage_options=self.delta_options or None)
            except TableNotFoundError:
                return None
            self._tables[kind] = dt
            return dt

    def committed(self, kind: str, app_id: str | None = None) -> int | None:
        """The version of a transaction id in the table (default: the archiver's for
        ``kind``): the last stream id committed, as :func:`stream_version` numbers it."""
        with self._lock:
            dt = self.table(kind)
            if dt is None:
                return None
            version = dt.transaction_version(app_id or archiver_app(kind))
        return None if version is None else int(version)

    def append(self, kind: str, rows: Any, transactions: dict[str, int] | None = None) -> None:
        """Append ``rows`` (the archive's columns; ``date`` and ``exp`` added from
        ``created`` and ``experiment`` when missing) in one commit that also sets the
        given transaction ids (app id → version)."""
        from deltalake import CommitProperties, Transaction, write_deltalake

        rows = with_partitions(rows)
        props = CommitProperties(
            app_transactions=[
                Transaction(app_id=a, version=v) for a, v in (transactions or {}).items()
            ]
        )
        target = self.table(kind)
        # the table's properties are set by the commit that makes it
        configuration = self.properties(kind) if target is None else None
        write_deltalake(
            target if target is not None else self.uri(kind),
            rows,
            mode="append",
            partition_by=list(PARTITIONS),
            storage_options=None if target is not None else (self.delta_options or None),
            writer_properties=_writer_properties(rows.column_names),
            commit_properties=props,
            configuration=configuration,
            schema_mode="merge",  # a column a later record version adds joins the table
        )
        if target is None:
            self.table(kind)

    def properties(self, kind: str) -> dict[str, str | None]:
        """The table properties the archive keeps on ``kind``: the log's retention, and
        the retention of the log's record of replaced files (tombstones: a checkpoint
        carries them that long) tied to the vacuum's, so a checkpoint holds the live
        files and at most a vacuum window of replaced ones, not a week of them."""
        return {
            **TABLE_CONFIG[kind],
            "delta.logRetentionDuration": self.log_retention,
            "delta.deletedFileRetentionDuration": (
                f"interval {int(self.vacuum_retention_hours)} hours"
            ),
        }

    def files(self, kind: str) -> list[str]:
        """The files of the table's current snapshot, as paths or URLs (what readers
        read: never a file of an uncommitted write, nor one a commit replaced)."""
        return [f for f, _, _ in self.snapshot(kind)]

    def snapshot(self, kind: str) -> list[tuple[str, str, str]]:
        """The current snapshot's files with their partition (path or URL, date, exp)."""
        import pyarrow as pa

        with self._lock:
            dt = self.table(kind)
            if dt is None:
                return []
            adds = pa.table(dt.get_add_actions(flatten=True))
        if not adds.num_rows:
            return []
        base = self.uri(kind)
        return [
            (p if "://" in p or p.startswith("/") else f"{base}/{p}", d, e)
            for p, d, e in zip(
                adds["path"].to_pylist(),
                adds["partition.date"].to_pylist(),
                adds["partition.exp"].to_pylist(),
                strict=True,
            )
        ]

    def upkeep(self, kind: str, force: bool = False) -> dict[str, int]:
        """Compact each partition holding more than ``compact_files`` small files (all
        partitions with more than one small file when ``force``), then vacuum what a
        commit replaced ``vacuum_retention_hours`` ago or earlier."""
        dt = self.table(kind)
        out = {"compacted_partitions": 0, "files_removed": 0, "files_added": 0, "vacuumed": 0}
        if dt is None:
            return out
        wanted = self.properties(kind)
        held = dt.metadata().configuration
        if any(held.get(k) != v for k, v in wanted.items()):  # made before, or reconfigured
            dt.alter.set_table_properties(wanted)
        import pyarrow as pa

        adds = pa.table(dt.get_add_actions(flatten=True))
        small: dict[tuple[str, str], int] = defaultdict(int)
        for size, d, e in zip(
            adds["size_bytes"].to_pylist(),
            adds["partition.date"].to_pylist(),
            adds["partition.exp"].to_pylist(),
            strict=True,
        ):
            if size < self.target_bytes // 2:
                small[(d, e)] += 1
        limit = 1 if force else self.compact_files
        for (d, e), n in sorted(small.items()):
            if n <= limit:
                continue
            done = dt.optimize.compact(
                partition_filters=[("date", "=", d), ("exp", "=", e)],
                target_size=self.target_bytes,
            )
            out["compacted_partitions"] += 1
            out["files_removed"] += int(done.get("numFilesRemoved", 0))
            out["files_added"] += int(done.get("numFilesAdded", 0))
        if out["compacted_partitions"]:
            crash_point("after-compact")
        hours = self.vacuum_retention_hours
        last = self._vacuumed.get(kind, 0.0)
        if out["compacted_partitions"] or force or time.time() - last > max(hours * 3600, 60):
            out["vacuumed"] = len(self.vacuum(kind, hours))
        return out

    def vacuum(self, kind: str, retention_hours: int) -> list[str]:
        """Delete the files no longer in the table (replaced ``retention_hours`` ago or
        earlier, or written by a commit that never happened)."""
        dt = self.table(kind)
        if dt is None:
            return []
        gone: list[str] = dt.vacuum(
            retention_hours=int(retention_hours),
            enforce_retention_duration=False,
            dry_run=False,
        )
        self._vacuumed[kind] = time.time()
        return gone

    def log_bytes(self, kind: str) -> int:
        """The size of the table's transaction log (``_delta_log``)."""
        try:
            return sum(int(self.fs.size(p)) for p in self.fs.find(self.path(kind, "_delta_log")))
        except FileNotFoundError:
            return 0

    def legacy(self) -> dict[str, Any] | None:
        """The earlier layout's ``manifest.json``, while one is left to migrate."""
        try:
            with self.fs.open(self.path(MANIFEST), "rb") as f:
                doc: dict[str, Any] = orjson.loads(f.read())
                return doc
        except FileNotFoundError:
            return None


def delta_options(options: dict[str, Any]) -> dict[str, str]:
    """``archive.storage_options`` as delta-rs takes them: upper-case keys
    (``AWS_ENDPOINT_URL``…) as they are; s3fs's ``endpoint_url``, ``key``, ``secret``,
    ``token`` and ``client_kwargs.region_name`` translated (a plain-HTTP endpoint allowed)."""
    out = {k: str(v) for k, v in options.items() if k.isupper()}
    client = options.get("client_kwargs") or {}
    endpoint = options.get("endpoint_url") or client.get("endpoint_url")
    pairs = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": options.get("key"),
        "AWS_SECRET_ACCESS_KEY": options.get("secret"),
        "AWS_SESSION_TOKEN": options.get("token"),
        "AWS_REGION": client.get("region_name"),
    }
    for name, value in pairs.items():
        if value is not None:
            out.setdefault(name, str(value))
    if endpoint and str(endpoint).startswith("http://"):
        out.setdefault("AWS_ALLOW_HTTP", "true")
    if "AWS_ENDPOINT_URL" in out:
        out.setdefault("AWS_REGION", "us-east-1")
    return out


PARTITIONS = ("date", "exp")
# The table properties set when a table is made. The log keeps column statistics (min and
# max) for the listed columns only: ids and times, never text a person wrote, so a forget
# leaves none of it in the log.
TABLE_CONFIG: dict[str, dict[str, str | None]] = {
    INTERACTIONS: {"delta.dataSkippingStatsColumns": "stream_id,id,created"},
    FEEDBACK: {"delta.dataSkippingStatsColumns": "stream_id,response_id,created"},
}


def archiver_app(kind: str) -> str:
    """The transaction id (app id) of the archiver's commits to ``kind``."""
    return f"archiver-{kind}"


_SEQ_BITS = 20


def stream_version(sid: str) -> int:
    """A stream id as a transaction version: ms · 2^20 + seq (order kept while a
    millisecond holds fewer than a million entries)."""
    ms, _, seq = sid.partition("-")
    return (int(ms) << _SEQ_BITS) | min(int(seq or 0), (1 << _SEQ_BITS) - 1)


def version_stream_id(version: int) -> str:
    return f"{version >> _SEQ_BITS}-{version & ((1 << _SEQ_BITS) - 1)}"


def with_partitions(rows: Any) -> Any:
    """The rows with their ``date`` and ``exp`` columns (from ``created`` and
    ``experiment``) when they have none."""
    import pyarrow as pa

    if "date" in rows.column_names and "exp" in rows.column_names:
        return rows
    experiments = rows["experiment"].to_pylist()
    created = rows["created"].to_pylist()
    days, exps = [], []
    for part in _partitions(experiments, created):
        d, e = part.split("/")
        days.append(d.removeprefix("date="))
        exps.append(e.removeprefix("exp="))
    return rows.append_column("date", pa.array(days, pa.string())).append_column(
        "exp", pa.array(exps, pa.string())
    )


def _writer_properties(columns: list[str]) -> Any:
    from deltalake import ColumnProperties, WriterProperties

    return WriterProperties(
        compression="ZSTD",
        compression_level=3,
        column_properties={
            c: ColumnProperties(dictionary_enabled=False) for c in columns if c in _DISTINCT
        },
    )


def migrate_legacy(archive: Archive) -> dict[str, int]:
    """Copy an archive of the earlier layout (Parquet files listed by ``manifest.json``)
    into the tables, exactly once: each listed file is one commit with the transaction id
    ``migrate-<kind>`` at its position in the manifest (a rerun skips what is in), the
    last one also carrying the archiver's (the manifest's ``last_id``), then the manifest
    is renamed ``manifest.json.migrated`` (the old files are left to the next vacuum).
    Returns the rows copied per kind (nothing, without a manifest)."""
    import pyarrow.parquet as pq

    copied = {INTERACTIONS: 0, FEEDBACK: 0}
    doc = archive.legacy()
    if doc is None:
        return copied
    for kind in (INTERACTIONS, FEEDBACK):
        listed = [f for f in doc.get("files", []) if f.get("kind") == kind]
        app = f"migrate-{kind}"
        done = archive.committed(kind, app) or 0
        last_id = (doc.get("streams", {}).get(kind) or {}).get("last_id")
        for i, f in enumerate(listed, start=1):
            if i <= done:
                continue
            with archive.fs.open(archive.path(f["path"]), "rb") as fh:
                table = pq.read_table(fh)
            parts = dict(p.split("=", 1) for p in f["path"].split("/")[1:-1])
            import pyarrow as pa

            table = table.append_column(
                "date", pa.array([parts["date"]] * table.num_rows, pa.string())
            ).append_column("exp", pa.array([parts["exp"]] * table.num_rows, pa.string()))
            table = _conform(kind, table)
            txns = {app: i}
            if i == len(listed) and last_id is not None:
                txns[archiver_app(kind)] = max(
                    stream_version(last_id), archive.committed(kind) or 0
                )
            archive.append(kind, table, txns)
            copied[kind] += table.num_rows
            crash_point("migrate-after-file")
    archive.fs.pipe_file(archive.path(MANIFEST + ".migrated"), orjson.dumps(doc))
    archive.fs.rm(archive.path(MANIFEST))
    return copied


def _conform(kind: str, table: Any) -> Any:
    """An older file's rows in the archive's schema (a column it lacks: nulls)."""
    import pyarrow as pa

    schema = arrow_schema(kind)
    arrays = [
        table[f.name].cast(f.type)
        if f.name in table.column_names
        else pa.nulls(table.num_rows, f.type)
        for f in schema
    ]
    arrays += [table["date"], table["exp"]]
    names = [*schema.names, "date", "exp"]
    return pa.Table.from_arrays(arrays, names=names)


def find_interactions(
    archive: Archive, ids: list[str], days: set[str] | None = None
) -> dict[str, InteractionRecord]:
    """Archived interactions by response id (only the ``days`` partitions, when given).

    One DuckDB query over the committed files: the ids are joined to the files' ``id``
    column (a hash join, the ids its build side), so a build that joins 100,000 ratings
    reads the archive once, in parallel, streaming (bench/FINDINGS.md)."""
    if not ids:
        return {}
    files = [f for f, day, _ in archive.snapshot(INTERACTIONS) if days is None or day in days]
    if not files:
        return {}
    import duckdb
    import pyarrow as pa

    names = list(COLUMNS[INTERACTIONS])
    with duckdb.connect() as db:
        if not archive.local:
            db.register_filesystem(archive.fs)
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
        self._migrated = False

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
        if not self._migrated:  # an archive of the earlier layout: copied in first
            result.migrated = sum(migrate_legacy(self.archive).values())
            self._migrated = True
        for kind in (INTERACTIONS, FEEDBACK):
            if max_wait_s and not self._due(streams(self.ks)[kind], max_wait_s):
                continue
            while True:
                n = self._batch(kind, result)
                if n == 0 or not until_empty:
                    break
                if self.hold() is not None:  # lost the lock (a long stall): stop here
                    return result
            if self.hold() is not None:
                return result
            result.compacted += self.archive.upkeep(kind)["compacted_partitions"]
        return result

    def maintain(self, compact: bool = True) -> PassResult:
        """Under the lock, without reading the streams: copy an archive of the earlier
        layout in (``retrain archive --migrate``) and, with ``compact``, compact every
        partition holding more than one small file and vacuum (``--compact``)."""
        result = PassResult()
        if self.client.get(self.ks.archive_pause) is not None:
            self.release()
            result.held_by = keys.text(self.client.get(self.ks.archive_pause) or b"forget")
            return result
        holder = self.hold()
        if holder is not None:
            result.held_by = holder
            return result
        result.migrated = sum(migrate_legacy(self.archive).values())
        self._migrated = True
        if compact:
            for kind in (INTERACTIONS, FEEDBACK):
                if self.hold() is not None:
                    return result
                result.compacted += self.archive.upkeep(kind, force=True)["compacted_partitions"]
        return result

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

    def _batch(self, kind: str, result: PassResult) -> int:
        # The cyclic garbage collector waits while a batch is read and made a table: that
        # allocates hundreds of thousands of containers that all live until the table is
        # built, and would be traversed again and again (a fifth of a pass's CPU).
        enabled = gc.isenabled()
        gc.disable()
        try:
            return self._write_batch(kind, result)
        finally:
            if enabled:
                gc.enable()

    def _write_batch(self, kind: str, result: PassResult) -> int:
        stream = streams(self.ks)[kind]
        entries = self._read(stream)
        if not entries:
            return 0
        done = self.archive.committed(kind)
        if done is not None:
            old = [s for s, _ in entries if stream_version(s) <= done]
            if old:  # archived by a pass that died before acknowledging
                self.client.xack(stream, keys.ARCHIVE_GROUP, *old)
                result.skipped += len(old)
                entries = [(s, f) for s, f in entries if stream_version(s) > done]
                if not entries:
                    return len(old)
        table, parts = self._table(kind, entries, result)
        crash_point("after-read")
        days, exps = [], []
        for part in parts:
            d, e = part.split("/")
            days.append(d.removeprefix("date="))
            exps.append(e.removeprefix("exp="))
        import pyarrow as pa

        table = table.append_column("date", pa.array(days, pa.string())).append_column(
            "exp", pa.array(exps, pa.string())
        )
        if table.num_rows:
            self.archive.append(kind, table, {archiver_app(kind): stream_version(entries[-1][0])})
            result.files += 1
        crash_point("after-commit")
        self.client.xack(stream, keys.ARCHIVE_GROUP, *[s for s, _ in entries])
        crash_point("after-ack")
        result.written[kind] += len(parts)
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
