"""What ratings cost Redis over time: used_memory past the hot window, bytes per rating.

``python -m bench.hotratings [--rate R] [--seconds S] [--hot-s H]`` starts its own
``redis-server`` and, for each of two settings, rates ``R`` responses a second for ``S``
seconds straight through the gateway's feedback writer
(``FeedbackService.store_rating``: the rater's record, the per-arm and per-user
aggregates and the stream entry, one script), while the archiver (``archive.py``) writes
Parquet every 5 s and the feedback stream is trimmed every 5 s as the gateway does
(``trim_feedback_stream``). A retrain consumer group exists that nobody reads (an
experiment nobody builds). Each rating carries a short comment, a tag and one of 5,000
users (a day compressed into minutes):

* **before**: ``feedback.hot_s`` = the retention (365 days): what earlier versions did
  (each rating's record kept for the retention, the stream never trimmed past a group
  that did not read it);
* **now**: ``feedback.hot_s`` = ``H`` (default 60 s).

Every 15 s it prints Redis's ``used_memory`` (over an empty Redis), the rating records
and the stream's length; at the end, bytes per rating (growth over the ratings) and what
Redis holds once the window has passed.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import redis
import redis.asyncio as aioredis

from gateway.core import keys
from gateway.core.config import FeedbackConfig
from gateway.core.ids import IdIssuer
from gateway.core.records import InteractionRecord
from gateway.ops.archive import Archive, Archiver
from gateway.serving.feedback import (
    FeedbackService,
    ensure_groups,
    parse_feedback,
    trim_feedback_stream,
)
from gateway.serving.interaction_log import InteractionLog
from gateway.serving.metrics import Metrics

from .procs import Processes
from .systems import start_redis

KS = keys.PLAIN_KEYSPACE
RETENTION_S = 365 * 86400
USERS = 5000
COMMENTS = [
    "The answer was right but it took two tries to get there.",
    "Wrong order number, the refund window is 30 days not 14.",
    "Perfect, thanks!",
    "Too long; I only wanted the tracking link.",
]


def record_of(rid: str, rng: random.Random) -> InteractionRecord:
    arm = rng.choice(("support-v1", "support-v2"))
    unit = f"{rng.randrange(USERS):016x}"
    return {  # type: ignore[typeddict-item]  # what store_rating reads of the record
        "id": rid,
        "experiment": "support",
        "experiment_version": 1,
        "arm": arm,
        "assigned_arm": arm,
        "unit": unit,
        "forced": False,
    }


async def run(
    url: str, hot_s: float, rate: float, seconds: float, archive: Path
) -> list[dict[str, Any]]:
    client = redis.Redis.from_url(url)
    client.flushall()
    aio = aioredis.Redis(
        connection_pool=aioredis.BlockingConnectionPool.from_url(url, max_connections=32)
    )
    cfg = FeedbackConfig(hot_s=hot_s)
    ids = IdIssuer(b"bench-hot-ratings")
    metrics = Metrics()
    log = InteractionLog(aio, metrics, ks=KS, queue_size=1, batch_size=1, retention_s=RETENTION_S)
    svc = FeedbackService(
        redis=aio,
        ks=KS,
        ids=ids,
        log=log,
        metrics=metrics,
        config=cfg,
        max_age_s=RETENTION_S,
        fresh_s=0,
        archive_url=str(archive),
    )
    await ensure_groups(aio, KS, [keys.retrain_group("support"), keys.ARCHIVE_GROUP])
    base = int(client.info("memory")["used_memory"])
    stop = threading.Event()
    archiver = Archiver(redis.Redis.from_url(url), KS, Archive(str(archive)), lock_ttl_s=60)

    def archive_loop() -> None:
        while not stop.wait(5):
            archiver.run_once(True, 0)
            archiver.release()

    thread = threading.Thread(target=archive_loop, daemon=True)
    thread.start()
    rng = random.Random(7)
    rated = 0
    samples: list[dict[str, Any]] = []
    t0 = time.monotonic()
    next_trim = next_sample = 0.0
    try:
        while (elapsed := time.monotonic() - t0) < seconds:
            due = int(elapsed * rate) - rated
            batch = []
            for _ in range(min(500, max(0, due))):  # behind: caught up a batch at a time
                rid = ids.new()
                body = {
                    "response_id": rid,
                    "rating": rng.choice(["up", "down", 1, 2, 3, 4, 5]),
                    "comment": rng.choice(COMMENTS),
                    "tags": [rng.choice(["billing", "delivery", "returns"])],
                }
                fb = parse_feedback(orjson.dumps(body), cfg)
                batch.append(svc.store_rating(record_of(rid, rng), fb, f"user-{rid[-6:]}", None))
            await asyncio.gather(*batch)
            rated += len(batch)
            if elapsed >= next_trim:
                await trim_feedback_stream(aio, KS, RETENTION_S, hot_s)
                next_trim += 5
            if elapsed >= next_sample:
                samples.append(sample(client, elapsed, rated, base))
                next_sample += 15
            await asyncio.sleep(0.02)
        await trim_feedback_stream(aio, KS, RETENTION_S, hot_s)
        samples.append(sample(client, time.monotonic() - t0, rated, base))
        samples[-1].update(composition(client))
    finally:
        stop.set()
        thread.join()
        await aio.aclose()
        client.close()
    return samples


def sample(client: redis.Redis, elapsed: float, rated: int, base: int) -> dict[str, Any]:
    streams = {KS.feedback_stream.encode(), KS.retrieval_stream.encode()}
    records = sum(1 for k in client.scan_iter(match="fw:fb:*", count=1000) if k not in streams)
    return {
        "t": elapsed,
        "rated": rated,
        "used": int(client.info("memory")["used_memory"]) - base,
        "records": records,  # fw:fb:{response_id} hashes
        "stream": int(client.xlen(KS.feedback_stream)),
    }


def composition(client: redis.Redis) -> dict[str, float]:
    """What one rating in the window costs: its stream entry, and its record's hash (the
    mean ``MEMORY USAGE`` of up to 500 of them)."""
    length = int(client.xlen(KS.feedback_stream))
    stream = int(client.memory_usage(KS.feedback_stream, samples=0) or 0)
    streams = {KS.feedback_stream.encode(), KS.retrieval_stream.encode()}
    sizes = []
    for k in client.scan_iter(match="fw:fb:*", count=1000):
        if k not in streams:
            sizes.append(int(client.memory_usage(k) or 0))
            if len(sizes) >= 500:
                break
    return {
        "entry_bytes": stream / length if length else 0.0,
        "record_bytes": sum(sizes) / len(sizes) if sizes else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.hotratings", description=__doc__)
    parser.add_argument("--rate", type=float, default=150.0, help="ratings per second")
    parser.add_argument("--seconds", type=float, default=180.0, help="how long each run rates")
    parser.add_argument("--hot-s", type=float, default=60.0, help="feedback.hot_s of 'now'")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="flywheel-bench-hotratings-"))
    results = {}
    try:
        with Processes(work / "logs") as procs:
            server = start_redis(procs)
            for name, hot in (("before", float(RETENTION_S)), ("now", args.hot_s)):
                archive = work / f"archive-{name}"
                results[name] = asyncio.run(
                    run(server.url(), hot, args.rate, args.seconds, archive)
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"{args.rate:g} ratings/s for {args.seconds:g} s; 'now': feedback.hot_s = "
        f"{args.hot_s:g} s; 'before': the retention\n"
    )
    print(
        "| s | ratings | before: used_memory MiB | records | stream "
        "| now: used_memory MiB | records | stream |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for b, n in zip(results["before"], results["now"], strict=False):
        print(
            f"| {b['t']:.0f} | {b['rated']:,} | {b['used'] / 2**20:.1f} | {b['records']:,} "
            f"| {b['stream']:,} | {n['used'] / 2**20:.1f} | {n['records']:,} | {n['stream']:,} |"
        )
    for name, rows in results.items():
        last = rows[-1]
        print(
            f"\n{name}: {last['used'] / max(1, last['rated']):,.0f} B of Redis per rating "
            f"({last['used'] / 2**20:.1f} MiB for {last['rated']:,} ratings); in Redis now, "
            f"per rating: its stream entry {last['entry_bytes']:,.0f} B, its record's hash "
            f"{last['record_bytes']:,.0f} B"
        )
    half = [r for r in results["now"] if r["t"] >= args.seconds / 2]
    if len(half) >= 2:
        grew = (half[-1]["used"] - half[0]["used"]) / max(1, half[-1]["rated"] - half[0]["rated"])
        print(
            f"now, second half of the run: {grew:,.0f} B per rating "
            "(about 0 once the window is full)"
        )


if __name__ == "__main__":
    main()
