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

import logging
import os
import socket
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import redis
from fsspec.implementations.local import LocalFileSystem

from . import keys, store
from .locks import alive
from .records import (
    FeedbackEvent,
    InteractionRecord,
    arrow_type,
    column_kinds,
    decode_feedback,
    from_row,
    interaction,
    resolve_all,
    to_row,
    unpack,
)

log = logging.getLogger(__name__)

INTERACTIONS, FEEDBACK = "interactions", "feedback"
MANIFEST = "manifest.json"
CRASH_ENV = "FLYWHEEL_ARCHIVE_CRASH_AT"  # fault injection for tests: a step name
STREAMS = {INTERACTIONS: keys.INTERACTION_STREAM, FEEDBACK: keys.FEEDBACK_STREAM}

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

    def __init__(self, url: str) -> None:
        import fsspec

        self.url = url.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.url)
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
        pq.write_table(table, sink, compression="zstd", compression_level=6)
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
    """Archived interactions by response id (only the ``days`` partitions, when given)."""
    if not ids:
        return {}
    import pyarrow.compute as pc
    import pyarrow.dataset as pads
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    files = [
        archive.path(f["path"])
        for f in archive.manifest()["files"]
        if f["kind"] == INTERACTIONS
        and (days is None or f["path"].split("/")[1].removeprefix("date=") in days)
    ]
    if not files:
        return {}
    fs = None if archive.local else PyFileSystem(FSSpecHandler(archive.fs))
    data = pads.dataset(files, schema=arrow_schema(INTERACTIONS), format="parquet", filesystem=fs)
    table = data.to_table(filter=pc.field("id").isin(sorted(set(ids))))
    out: dict[str, InteractionRecord] = {}
    for row in table.to_pylist():  # later copies (there are none) would win
        doc = from_row(row, COLUMNS[INTERACTIONS])
        doc.pop("stream_id", None)
        out[doc["id"]] = interaction(doc)
    return out


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
        archive: Archive,
        *,
        batch: int = 50_000,
        lock_ttl_s: float = 60.0,
        owner: str | None = None,
    ) -> None:
        self.client = client
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
        if self._hold(keys=[keys.ARCHIVE_LOCK], args=[self.owner, self.lock_ttl_ms, ""]):
            return None
        holder = keys.text(self.client.get(keys.ARCHIVE_LOCK) or b"?")
        host, pid = (holder.split(":") + ["", ""])[:2]
        if host == socket.gethostname() and pid.isdigit() and not alive(int(pid)):
            if self._hold(keys=[keys.ARCHIVE_LOCK], args=[self.owner, self.lock_ttl_ms, holder]):
                return None
        return holder

    def release(self) -> None:
        self._release(keys=[keys.ARCHIVE_LOCK], args=[self.owner])

    def ensure_groups(self) -> None:
        for stream in STREAMS.values():
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
        paused = self.client.get(keys.ARCHIVE_PAUSE)
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
            if max_wait_s and not self._due(STREAMS[kind], max_wait_s):
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
            for stream in STREAMS.values()
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
        stream = STREAMS[kind]
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
        rows = self._rows(kind, entries, result)
        crash_point("after-read")
        first, last = entries[0][0], entries[-1][0]
        by_part: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for row in rows:
            by_part[_partition(row.get("experiment"), row.get("created") or 0)].append(row)
        written = []
        import pyarrow as pa

        schema = arrow_schema(kind)
        for part, part_rows in sorted(by_part.items()):
            rel = f"{kind}/{part}/part-{first}.parquet"
            columns = {name: [row[name] for row in part_rows] for name in schema.names}
            table = pa.Table.from_pydict(columns, schema=schema)
            size = self.archive.write_parquet(rel, table)
            written.append(
                {
                    "path": rel,
                    "kind": kind,
                    "rows": len(part_rows),
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
        result.written[kind] += len(rows)
        result.files += len(written)
        return len(entries)

    def _rows(
        self, kind: str, entries: list[tuple[str, dict[bytes, bytes]]], result: PassResult
    ) -> list[dict[str, Any]]:
        cols = COLUMNS[kind]
        if kind == FEEDBACK:
            out = []
            for sid, fields in entries:
                rec: dict[str, Any] = dict(decode_feedback(fields[b"data"]))
                rec["stream_id"], rec["replaced"] = sid, fields.get(b"replaced") == b"1"
                out.append(to_row(rec, cols))
            return out
        ids = [keys.text(f[b"id"]) for _, f in entries]
        recs = load_sync(self.client, ids)
        out = []
        for (sid, _), ix in zip(entries, recs, strict=True):
            if ix is None:
                result.expired += 1
                continue
            row: dict[str, Any] = {**ix, "stream_id": sid}
            out.append(to_row(row, cols))
        if result.expired:
            log.warning("archive: %d interactions had left Redis before archiving", result.expired)
        return out


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
