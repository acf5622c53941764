"""The archiver's throughput (records/s from Redis to the Delta tables in one pass), and
what steady traffic leaves behind (files per partition, the log's size).

    .venv/bin/python -m bench.archiver [-n 50000] [--rated 0.1] [--passes 3] [--profile FILE]
        [--redis one|cluster] [--target dir|s3]
    .venv/bin/python -m bench.archiver --steady 300 [--per-pass 5] [--target dir|s3]

Starts its own ``redis-server`` (no persistence) — or, with ``--redis cluster``, a Redis
Cluster of 3 masters, the keys named for it as the gateway names them — and writes
``-n`` interactions the way the gateway does — records made by ``Turn.record()`` for
4-turn conversations of one app (``bench/storage.py``'s workload: a system prompt,
earlier turns stored once as blocks), written by ``InteractionLog`` in batches of 500 —
and a rating for ``--rated`` of them on the feedback stream. Then it times
``Archiver.run_once`` (the default batch of 50,000) ``--passes`` times, each into a new
archive with the consumer group rewound: read both streams through the group, put the
blocks back, append to the Delta tables (zstd Parquet, one commit each), acknowledge. It
prints records/s (and interactions/s) and the CPU per record of this process and of
Redis (every node), and checks that every record reached the archive. ``--profile FILE``
writes a cProfile of the first pass. ``--target s3`` writes the archive to an
S3-compatible server it starts (moto, in memory: ``archive.url: s3://…`` with
``storage_options``) instead of a local directory; the moto server's CPU is reported
beside Redis's.

``--steady PASSES`` measures the tiny-file problem instead: each pass comes after
``--per-pass`` new interactions (a steady trickle, as the gateway's archiver sees with
``max_wait_s: 0``), and the same entries are archived twice — by the archiver into the
Delta tables (with its upkeep: compaction past ``compact_files`` small files and vacuum)
and by the same archiver into the earlier layout (one Parquet file per partition and
pass, and ``manifest.json`` listing every file, rewritten each commit: ``LegacyArchive``
below reproduces that writer). It prints, for both, the files per partition, the files
and bytes on disk, and the size of the manifest or of ``_delta_log``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import redis
import redis.asyncio as aioredis

from gateway.core import keys, store
from gateway.core.records import SCHEMA_VERSION, FeedbackEvent, InteractionRecord, encode_feedback
from gateway.ops.archive import (
    Archive,
    Archiver,
    PassResult,
    stream_version,
    version_stream_id,
    with_partitions,
)

from .procs import Processes, group_cpu_seconds
from .storage import conversations, interaction_log
from .systems import ObjectStore, start_redis, start_redis_cluster, start_s3

BUCKET = "flywheel-bench"


def rating(rec: InteractionRecord, i: int, rng: random.Random) -> FeedbackEvent:
    """A rating of ``rec`` as ``POST /v1/feedback`` stores it."""
    up = rng.random() < 0.6
    return {
        "v": SCHEMA_VERSION,
        "id": f"fb-{i:012d}",
        "object": "feedback",
        "response_id": rec["id"],
        "rater": rec["user"] or "anonymous",
        "rating": "up" if up else "down",
        "score": 1.0 if up else 0.0,
        "failure": not up,
        "has_correction": False,
        "comment": None if up else "the answer missed the point",
        "correction": None,
        "tags": ["bench"],
        "tenant": None,
        "experiment": rec["experiment"],
        "arm": rec["arm"],
        "created": rec["created"],
    }


async def fill(url: str, recs: list[InteractionRecord], rated: float, cluster: bool) -> int:
    """Write ``recs`` as the interaction log does, and ratings for a share of them."""
    client: aioredis.Redis = (
        store.connect(url, cluster=True) if cluster else aioredis.Redis.from_url(url)
    )
    ks = keys.for_redis(cluster)
    log = interaction_log(client, len(recs), ks)
    rng = random.Random(3)
    n = 0
    for start in range(0, len(recs), 500):
        batch = recs[start : start + 500]
        await log._write(batch)
        pipe = client.pipeline(transaction=False)
        for rec in batch:
            if rng.random() < rated:
                data = encode_feedback(rating(rec, n, rng))
                pipe.xadd(ks.feedback_stream, {"data": data, "replaced": "0"})
                n += 1
        await pipe.execute()
    await client.aclose()
    return n


def one_pass(
    client: redis.Redis,
    nodes: list[redis.Redis],
    root: str,
    s3: ObjectStore | None,
    args: argparse.Namespace,
    first: bool,
) -> tuple[PassResult, dict[str, int], int, float, float, float, float, float]:
    """One timed pass into a new archive at ``root`` (a directory, or an s3:// URL on
    ``s3``), after the group is rewound to the streams' start (what the previous pass
    acknowledged is read again)."""
    ks = keys.for_redis(len(nodes) > 1)  # a cluster's nodes, or the one Redis
    archive = Archive(root, s3.storage_options() if s3 else None)
    archiver = Archiver(client, ks, archive, batch=args.batch)
    archiver.ensure_groups()  # as a running archiver has: not timed
    for stream in (ks.interaction_stream, ks.feedback_stream):
        client.xgroup_setid(stream, keys.ARCHIVE_GROUP, id="0")
    profiler = cProfile.Profile() if args.profile and first else None
    load = os.getloadavg()[0]
    redis0 = sum(redis_cpu(n) for n in nodes)
    store0 = group_cpu_seconds(s3.proc.pid) if s3 else 0.0
    cpu0, t0 = time.process_time(), time.perf_counter()
    if profiler:
        profiler.enable()
    result = archiver.run_once()
    if profiler:
        profiler.disable()
        profiler.dump_stats(args.profile)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    served = sum(redis_cpu(n) for n in nodes) - redis0
    stored_cpu = group_cpu_seconds(s3.proc.pid) - store0 if s3 else 0.0
    archiver.release()
    fs = archive.fs

    def rows(path: str) -> int:
        with fs.open(path, "rb") as f:
            return int(pq.read_metadata(f).num_rows)

    stored = {
        kind: sum(rows(p) for p in archive.files(kind)) for kind in ("interactions", "feedback")
    }
    size = sum(fs.size(p) for p in archive.files("interactions"))
    fs.rm(archive.root, recursive=True)
    return result, stored, size, seconds, cpu, served, stored_cpu, load


class LegacyArchive(Archive):
    """The earlier layout's writer, for comparison: each commit writes one Parquet file
    per partition (``part-<first stream id>.parquet``) and rewrites ``manifest.json``
    with every file listed; no compaction."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        super().__init__(url, storage_options)
        self.doc: dict[str, Any] = {"format": 1, "streams": {}, "files": []}

    def committed(self, kind: str, app_id: str | None = None) -> int | None:
        last = self.doc["streams"].get(kind, {}).get("last_id")
        return None if last is None else stream_version(last)

    def append(self, kind: str, rows: Any, transactions: dict[str, int] | None = None) -> None:
        import orjson
        import pyarrow.compute as pc

        rows = with_partitions(rows)
        version = max((transactions or {}).values())
        first = rows["stream_id"][0].as_py()
        parts = zip(rows["date"].to_pylist(), rows["exp"].to_pylist(), strict=True)
        for d, e in sorted(set(parts)):
            mask = pc.and_(pc.equal(rows["date"], d), pc.equal(rows["exp"], e))
            part = rows.filter(mask).drop_columns(["date", "exp"])
            rel = f"{kind}/date={d}/exp={e}/part-{first}.parquet"
            self.fs.makedirs(self.path(rel).rsplit("/", 1)[0], exist_ok=True)
            with self.fs.open(self.path(rel), "wb") as f:
                pq.write_table(part, f, compression="zstd", compression_level=3)
            self.doc["files"].append(
                {"path": rel, "kind": kind, "rows": part.num_rows, "first_id": first}
            )
        self.doc["streams"][kind] = {"last_id": version_stream_id(version), "updated": 0.0}
        with self.fs.open(self.path("manifest.json"), "wb") as f:
            f.write(orjson.dumps(self.doc, option=orjson.OPT_INDENT_2))

    def upkeep(self, kind: str, force: bool = False) -> dict[str, int]:
        return {"compacted_partitions": 0}


def layout(archive: Archive, kind: str) -> dict[str, float]:
    """Files per partition (most, mean), Parquet files and bytes on disk, and the size of
    the table's log (the manifest, or ``_delta_log``)."""
    from collections import Counter

    fs = archive.fs
    fs.invalidate_cache()
    on_disk = [p for p in fs.find(archive.path(kind)) if p.endswith(".parquet")]
    on_disk = [p for p in on_disk if "/_delta_log/" not in p]
    if isinstance(archive, LegacyArchive):
        parts = Counter(
            f["path"].rsplit("/", 1)[0] for f in archive.doc["files"] if f["kind"] == kind
        )
        log = float(fs.size(archive.path("manifest.json")))
        log_files = 1.0
    else:
        parts = Counter((d, e) for _, d, e in archive.snapshot(kind))
        import orjson

        logs = list(fs.find(archive.path(kind, "_delta_log")))
        log = float(sum(fs.size(p) for p in logs))
        log_files = float(len(logs))
        try:  # what opening the table reads: the last checkpoint and the commits after it
            with fs.open(archive.path(kind, "_delta_log", "_last_checkpoint"), "rb") as f:
                since = int(orjson.loads(f.read())["version"])
        except FileNotFoundError:
            since = -1
        read = 0.0
        for p in logs:
            name = p.rsplit("/", 1)[1]
            version = int(name.split(".", 1)[0]) if name[:1].isdigit() else -2
            if (version == since and ".checkpoint" in name) or (
                version > since and name.endswith(".json")
            ):
                read += fs.size(p)
    return {
        "partitions": float(len(parts)),
        "most": float(max(parts.values(), default=0)),
        "mean": sum(parts.values()) / max(len(parts), 1),
        "files": float(len(on_disk)),
        "bytes": float(sum(fs.size(p) for p in on_disk)),
        "log_bytes": log,
        "log_files": log_files,
        "log_read": log if isinstance(archive, LegacyArchive) else read,
    }


def steady(args: argparse.Namespace) -> None:
    """``--steady``: see the module's docstring."""
    recs = conversations(args.steady * args.per_pass, 4)
    work = Path(tempfile.mkdtemp(prefix="flywheel-bench-steady-"))
    try:
        with Processes(work / "logs") as procs:
            server = start_redis(procs)
            s3 = start_s3(procs, BUCKET) if args.target == "s3" else None
            options = s3.storage_options() if s3 else None
            base = f"s3://{BUCKET}" if s3 else str(work)
            delta = Archive(f"{base}/delta", options, vacuum_retention_hours=args.vacuum_hours)
            legacy = LegacyArchive(f"{base}/legacy", options)
            client = store.connect_sync(server.url(), socket_timeout=120)
            ks = keys.for_redis(False)
            new, old = Archiver(client, ks, delta), Archiver(client, ks, legacy)
            seconds = {"delta": 0.0, "legacy": 0.0}
            rows = 0
            for k in range(args.steady):
                chunk = recs[k * args.per_pass : (k + 1) * args.per_pass]
                asyncio.run(fill(server.url(), chunk, args.rated, False))
                new.ensure_groups()
                starts = {
                    s: keys.text(
                        next(
                            g
                            for g in client.xinfo_groups(s)
                            if keys.text(g["name"]) == keys.ARCHIVE_GROUP
                        )["last-delivered-id"]
                    )
                    for s in (ks.interaction_stream, ks.feedback_stream)
                }
                t0 = time.perf_counter()
                done = new.run_once()
                new.release()  # as the gateway's archiver does between passes
                seconds["delta"] += time.perf_counter() - t0
                for stream, start in starts.items():  # the same entries, again
                    client.xgroup_setid(stream, keys.ARCHIVE_GROUP, id=start)
                t0 = time.perf_counter()
                again = old.run_once()
                old.release()
                seconds["legacy"] += time.perf_counter() - t0
                assert done.written == again.written, (done, again)
                rows += done.written["interactions"]
            client.close()
            where = "S3 (moto)" if s3 else "a local directory"
            print(
                f"{args.steady} passes of {args.per_pass} interactions each "
                f"(+{args.rated:.0%} rated), {rows:,} interactions, to {where}:"
            )
            for name, archive in (("manifest layout", legacy), ("Delta tables", delta)):
                for kind in ("interactions", "feedback"):
                    m = layout(archive, kind)
                    print(
                        f"  {name:15} {kind:12}: {m['partitions']:.0f} partitions, files per "
                        f"partition most {m['most']:.0f} mean {m['mean']:.1f}; "
                        f"{m['files']:.0f} Parquet files on disk, "
                        f"{m['bytes'] / max(rows, 1):,.0f} B/interaction; log "
                        f"{m['log_bytes'] / 1024:,.1f} KiB in {m['log_files']:.0f} files, "
                        f"{m['log_read'] / 1024:,.1f} KiB read to open it"
                    )
                key = "delta" if archive is delta else "legacy"
                print(f"  {name:15} passes took {seconds[key]:.1f} s in all")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def redis_cpu(client: redis.Redis) -> float:
    """The Redis server's CPU seconds so far (``INFO cpu``)."""
    info: Any = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def warm_up() -> None:
    """What a running archiver has done once already (pyarrow's first table imports
    pandas): not timed."""
    import pyarrow as pa

    pa.Table.from_pydict({"a": [1]})


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.archiver", description=__doc__)
    parser.add_argument("-n", type=int, default=50_000, help="interactions")
    parser.add_argument("--rated", type=float, default=0.1, help="share of them rated")
    parser.add_argument("--batch", type=int, default=50_000, help="the archiver's batch")
    parser.add_argument("--passes", type=int, default=3, help="timed passes over the same data")
    parser.add_argument("--profile", default=None, metavar="FILE", help="cProfile the pass")
    parser.add_argument(
        "--redis", choices=["one", "cluster"], default="one", help="one Redis or a 3-master cluster"
    )
    parser.add_argument(
        "--target", choices=["dir", "s3"], default="dir", help="a local directory or S3 (moto)"
    )
    parser.add_argument(
        "--steady", type=int, default=0, metavar="PASSES", help="steady small passes instead"
    )
    parser.add_argument("--per-pass", type=int, default=5, help="interactions per steady pass")
    parser.add_argument(
        "--vacuum-hours",
        type=int,
        default=1,
        help="archive.vacuum_retention_hours of the steady run's tables",
    )
    args = parser.parse_args()
    if args.steady:
        steady(args)
        return
    cluster = args.redis == "cluster"
    recs = conversations(args.n, 4)
    warm_up()
    work = Path(tempfile.mkdtemp(prefix="flywheel-bench-archiver-"))
    try:
        with Processes(work / "logs") as procs:
            server = start_redis_cluster(procs) if cluster else start_redis(procs)
            node_urls = (
                [f"redis://127.0.0.1:{p}" for p in server.ports] if cluster else [server.url()]
            )
            s3 = start_s3(procs, BUCKET) if args.target == "s3" else None
            t0 = time.perf_counter()
            ratings = asyncio.run(fill(server.url(), recs, args.rated, cluster))
            filled = time.perf_counter() - t0
            client = store.connect_sync(server.url(), cluster=cluster, socket_timeout=120)
            nodes = [redis.Redis.from_url(u) for u in node_urls]
            passes = []
            for k in range(args.passes):
                root = f"s3://{BUCKET}/archive-{k}" if s3 else str(work / f"archive-{k}")
                passes.append(one_pass(client, nodes, root, s3, args, k == 0))
            client.close()
            for node in nodes:
                node.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    total = args.n + ratings
    where = "a Redis Cluster of 3 masters" if cluster else "one Redis"
    target = "S3 (moto)" if args.target == "s3" else "a local directory"
    print(
        f"{args.n:,} interactions and {ratings:,} ratings written to {where} in "
        f"{filled:.1f} s; archiving to {target}"
    )
    for k, (result, stored, size, seconds, cpu, served, stored_cpu, load) in enumerate(passes):
        assert result.written == {"interactions": args.n, "feedback": ratings}, result
        assert stored == result.written, stored
        print(
            f"pass {k + 1}: {total:,} records in {seconds:.2f} s = {total / seconds:,.0f} "
            f"records/s ({args.n / seconds:,.0f} interactions/s); CPU per record: this "
            f"process {cpu / total * 1e6:.0f} µs, Redis {served / total * 1e6:.0f} µs"
            + (f", S3 server {stored_cpu / total * 1e6:.0f} µs" if args.target == "s3" else "")
            + "; "
            f"{result.files} commits, {size / args.n:,.0f} B/interaction; "
            f"load average {load:.1f}"
        )


if __name__ == "__main__":
    main()
