"""The console's page times with 100,000 interactions in the store (target: < 300 ms each).

    .venv/bin/python -m bench.console [--interactions 100000] [--repeat 20]

Starts its own ``redis-server`` and a gateway (``python -m gateway serve``), writes the
interactions with the gateway's own log writer (records shaped by ``Turn.record()``,
with the per-arm and per-version counters it keeps), rates one in ten (feedback records
as the gateway stores them, a third of them failures), queues 50 failures for review,
then asks each console page ``--repeat`` times with an admin key and prints the median
and the slowest time of each. Times are measured at the client over loopback, so they
include the HTTP round trip (well under a millisecond here).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import orjson
import redis
import redis.asyncio as aioredis

from gateway.core import keys
from gateway.serving.interaction_log import InteractionLog
from gateway.serving.metrics import Metrics
from tests.services import GatewayProcess, RedisProcess

from .logwriter import make_records
from .report import table
from .systems import ID_SECRET

KS = keys.PLAIN_KEYSPACE  # the benches run on one Redis


ADMIN_KEY = "sk-bench-admin-0123456789"


async def fill(redis_url: str, n: int) -> None:
    """``n`` records through the gateway's own log writer (records, stream, counters)."""
    client = aioredis.Redis.from_url(redis_url)
    metrics = Metrics()
    log = InteractionLog(
        client, metrics, ks=KS, queue_size=n, batch_size=256, retention_s=7 * 86400
    )
    log.start()
    for i, rec in enumerate(make_records(n)):
        log.submit(rec)
        if i % 256 == 255:
            await asyncio.sleep(0)
    while (metrics.registry.get_sample_value("flywheel_log_written_total") or 0) < n:
        await asyncio.sleep(0.05)
    await log.stop()
    await client.aclose()


def rate(client: redis.Redis, every: int = 10) -> str:
    """Rate every ``every``-th interaction; queue 50 failures. Returns a rated id."""
    ids: list[str] = []
    cursor = "-"
    while True:
        chunk = client.xrange(KS.interaction_stream, cursor, "+", count=10_000)
        ids += [f[b"id"].decode() for _, f in chunk]
        if len(chunk) < 10_000:
            break
        cursor = keys.stream_id_after(chunk[-1][0].decode())
    pipe = client.pipeline(transaction=False)
    now = int(time.time())
    for i, rid in enumerate(ids[::every]):
        score = 0.0 if i % 3 == 0 else 1.0
        record = {
            "id": f"fb-{i}",
            "object": "feedback",
            "response_id": rid,
            "rater": "bench",
            "rating": "down" if score == 0 else "up",
            "score": score,
            "failure": score < 0.5,
            "has_correction": False,
            "comment": None,
            "correction": None,
            "tags": [],
            "tenant": "bench",
            "experiment": "ab",
            "arm": "m0",
            "created": now,
        }
        pipe.hset(KS.feedback(rid), "bench", orjson.dumps(record))
        if i < 50 and score == 0:
            item = {
                "response_id": rid,
                "experiment": "ab",
                "arm": "m0",
                "messages": [{"role": "user", "content": "hello"}],
                "answer": "Hello!",
                "comment": None,
                "tags": [],
                "group": "u0",
                "correction": None,
            }
            pipe.hsetnx(KS.review("ab"), rid, orjson.dumps(item))
    pipe.execute()
    return ids[0]


def main() -> None:
    parser = argparse.ArgumentParser(description="Console page times")
    parser.add_argument("--interactions", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisProcess(Path(tmp) / "redis")
        server.start()
        gw = GatewayProcess(
            {
                "redis_url": server.url,
                "id_secret": ID_SECRET,
                "auth": {"admin_keys": [{"key": ADMIN_KEY, "name": "bench"}]},
                "upstreams": {"fixed": {"kind": "vllm", "base_url": "http://127.0.0.1:9/v1"}},
                "models": {
                    "m0": {"upstream": "fixed", "model": "m0"},
                    "m1": {"upstream": "fixed", "model": "m1"},
                },
                "experiments": {
                    "ab": {"arms": [{"model": "m0", "weight": 50}, {"model": "m1", "weight": 50}]}
                },
            },
            Path(tmp) / "gw",
        )
        try:
            t0 = time.perf_counter()
            asyncio.run(fill(server.url, args.interactions))
            rid = rate(redis.Redis(port=server.port))
            print(f"filled {args.interactions} interactions in {time.perf_counter() - t0:.1f} s")
            gw.start()
            pages = {
                "overview": "/ui/",
                "experiment": "/ui/experiments/ab",
                "interactions": "/ui/interactions",
                "interactions, rating down": "/ui/interactions?rating=down",
                "interactions, arm m1": "/ui/interactions?arm=m1",
                "interactions, text (no match)": "/ui/interactions?q=no-such-text",
                "interaction": f"/ui/interactions/{rid}",
                "review queue": "/ui/review",
                "review item": "/ui/review/next",
                "datasets": "/ui/datasets",
                "jobs & models": "/ui/jobs",
            }
            rows = []
            with httpx.Client(
                base_url=gw.url, timeout=30, headers={"Authorization": f"Bearer {ADMIN_KEY}"}
            ) as c:
                for name, path in pages.items():
                    assert c.get(path).status_code == 200, path  # warm
                    times = []
                    for _ in range(args.repeat):
                        s = time.perf_counter()
                        r = c.get(path)
                        times.append((time.perf_counter() - s) * 1000)
                        assert r.status_code == 200, (path, r.status_code)
                    rows.append(
                        [
                            name,
                            f"{statistics.median(times):.1f}",
                            f"{max(times):.1f}",
                            "yes" if max(times) < 300 else "NO",
                        ]
                    )
            print(table(["page", "median ms", "slowest ms", "< 300 ms"], rows))
        finally:
            gw.stop()
            server.stop()


if __name__ == "__main__":
    main()
