"""The archiver's throughput: records/s from Redis to Parquet in one pass.

    .venv/bin/python -m bench.archiver [-n 50000] [--rated 0.1] [--passes 3] [--profile FILE]
        [--redis one|cluster] [--target dir|s3]

Starts its own ``redis-server`` (no persistence) — or, with ``--redis cluster``, a Redis
Cluster of 3 masters, the keys named for it as the gateway names them — and writes ``-n``
interactions the way the gateway does — records made by ``Turn.record()`` for 4-turn
conversations of one app (``bench/storage.py``'s workload: a system prompt, earlier
turns stored once as blocks), written by ``InteractionLog`` in batches of 500 — and a
rating for ``--rated`` of them on the feedback stream. Then it times
``Archiver.run_once`` (the default batch of 50,000) ``--passes`` times, each into a new
archive with the consumer group rewound: read both streams through the group, put the
blocks back, write Parquet (zstd), the manifest, acknowledge. It prints records/s (and
interactions/s) and the CPU per record of this process and of Redis (every node), and
checks that every record reached the archive. ``--profile FILE`` writes a cProfile of
the first pass. ``--target s3`` writes the archive to an S3-compatible server it starts
(moto, in memory: ``archive.url: s3://…`` with ``storage_options``) instead of a local
directory; the moto server's CPU is reported beside Redis's.
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
from gateway.ops.archive import Archive, Archiver, PassResult

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
    args = parser.parse_args()
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
            f"{result.files} files, {size / args.n:,.0f} B/interaction; load average {load:.1f}"
        )


if __name__ == "__main__":
    main()
