"""What forgetting one user costs: ``DELETE /admin/users/{user}`` / ``retrain forget``.

``python -m bench.forget [--hot 50000] [--rows 1000000] [--users 100000]`` starts a
``redis-server``, writes ``--hot`` interactions into it as the interaction log does (4-turn
conversations of one app, 1.7 KB requests; 10% of them rated), writes an archive of
``--rows`` interactions (20 files of 50,000 rows, the archiver's schema and settings), the
rows spread over ``--users`` users, and times :meth:`gateway.ops.forget.Forgetter.run` for one
user: it reads every hot record and the deciding columns of every archive file, and
rewrites the files that hold the user's rows. Prints the time, what it removed, and this
process's peak RSS. Every process it starts is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import shutil
import tempfile
import time
from pathlib import Path

import orjson
import redis

from gateway.core import keys
from gateway.core.config import InteractionLogConfig
from gateway.core.records import to_row
from gateway.ops.archive import COLUMNS, INTERACTIONS, Archive, arrow_schema
from gateway.ops.forget import Forgetter
from gateway.serving.interaction_log import InteractionLog
from gateway.serving.metrics import Metrics

from .procs import Processes
from .storage import conversations
from .systems import start_redis

KS = keys.PLAIN_KEYSPACE  # the benches run on one Redis


PER_FILE = 50_000


def write_hot(url: str, n: int, users: int) -> None:
    import redis.asyncio as aioredis

    recs = conversations(n, 4)
    for i, rec in enumerate(recs):
        rec["user"] = f"u{i % users}"

    async def write() -> None:
        client = aioredis.Redis.from_url(url)
        cfg = InteractionLogConfig()
        log = InteractionLog(
            client,
            Metrics(),
            ks=KS,
            queue_size=n,
            batch_size=500,
            retention_s=cfg.retention_days * 86400,
            hot_s=cfg.hot_s,
        )
        for start in range(0, n, 500):
            await log._write(recs[start : start + 500])
        await client.aclose()

    asyncio.run(write())
    sync = redis.Redis.from_url(url)
    pipe = sync.pipeline(transaction=False)
    for rec in recs[::10]:
        rating = {"response_id": rec["id"], "rater": rec["user"], "tenant": rec["tenant"]}
        pipe.hset(KS.feedback(rec["id"]), rec["user"], orjson.dumps(rating))
        pipe.xadd(KS.feedback_stream, {"data": orjson.dumps(rating), "replaced": 0})
    pipe.execute()
    sync.close()


def write_archive(root: str, rows: int, users: int) -> None:
    import pyarrow as pa

    archive = Archive(root)
    template = conversations(PER_FILE, 4, only_last=True)
    schema = arrow_schema(INTERACTIONS)
    for n in range(0, rows, PER_FILE):
        day = f"2026-11-{1 + (n * 10 // rows):02d}"
        batch = [
            to_row(
                {**rec, "id": f"chatcmpl-a{n + i:012d}", "user": f"u{(n + i) % users}"}
                | {"stream_id": f"{n + i}-0"},
                COLUMNS[INTERACTIONS],
            )
            for i, rec in enumerate(template[: min(PER_FILE, rows - n)])
        ]
        table = pa.Table.from_pydict({c: [r[c] for r in batch] for c in schema.names}, schema)
        at = pa.array([day] * table.num_rows, pa.string())
        table = table.append_column("date", at).append_column(
            "exp", pa.array(["ab"] * table.num_rows, pa.string())
        )
        archive.append(INTERACTIONS, table)  # one commit (and file) per batch


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.forget", description=__doc__)
    parser.add_argument("--hot", type=int, default=50_000, help="interactions in Redis")
    parser.add_argument("--rows", type=int, default=1_000_000, help="interactions archived")
    parser.add_argument("--users", type=int, default=100_000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="flywheel-bench-forget-"))
    try:
        with Processes(work / "logs") as procs:
            url = start_redis(procs).url()
            t0 = time.perf_counter()
            write_hot(url, args.hot, args.users)
            write_archive(str(work / "archive"), args.rows, args.users)
            prepared = time.perf_counter() - t0
            client = redis.Redis.from_url(url)
            forgetter = Forgetter(client, KS, Archive(str(work / "archive")))
            rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            t0 = time.perf_counter()
            _, counts = forgetter.run("u7", None, "bench")
            seconds = time.perf_counter() - t0
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            client.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"prepared {args.hot:,} hot and {args.rows:,} archived interactions in {prepared:.0f} s")
    print(f"forgot one of {args.users:,} users in {seconds:.1f} s: {orjson.dumps(counts).decode()}")
    print(f"peak RSS {rss / 1024:,.0f} MiB (before the forget: {rss0 / 1024:,.0f} MiB)")


if __name__ == "__main__":
    main()
