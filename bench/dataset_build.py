"""How long ``retrain build`` takes for 100,000 feedback events (the target: under a minute).

    .venv/bin/python -m bench.dataset_build [--events 100000]

Starts its own ``redis-server``, fills it with interactions and rating events shaped
exactly as the gateway writes them (40% failures with a correction, 30% well rated,
20% failures without one, 10% neutral; every text distinct), then runs the real
builder and prints the time of each stage and in all.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import redis

from gateway import keys
from gateway.config import build_settings
from retrain.config import RetrainSettings
from retrain.dataset import Builder
from tests.services import RedisProcess

WORDS = [f"w{i}" for i in range(20_000)]


def text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def fill(client: redis.Redis, experiment: str, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    pipe = client.pipeline(transaction=False)
    for i in range(n):
        rid = f"chatcmpl-bench-{i}"
        kind = rng.random()
        messages = [{"role": "user", "content": text(rng, 20)}]
        interaction = {
            "id": rid,
            "experiment": experiment,
            "arm": "base",
            "user": f"u{i % 5000}",
            "messages": messages,
            "answer": text(rng, 30),
            "status": "ok",
            "tenant": "default",
        }
        score, correction = (0.0, text(rng, 30)) if kind < 0.4 else (1.0, None)
        if 0.7 <= kind < 0.9:
            score = 0.0
        elif kind >= 0.9:
            score = 0.5
        record: dict[str, Any] = {
            "id": f"fb-{i}",
            "object": "feedback",
            "response_id": rid,
            "rater": f"u{i % 5000}",
            "rating": "down" if score == 0 else ("up" if score == 1 else 3),
            "score": score,
            "failure": score < 0.5,
            "has_correction": correction is not None,
            "comment": None,
            "correction": correction,
            "tags": [f"topic-{i % 7}"],
            "tenant": "default",
            "experiment": experiment,
            "arm": "base",
            "created": int(time.time()),
        }
        pipe.set(keys.interaction(rid), orjson.dumps(interaction))
        pipe.xadd(keys.FEEDBACK_STREAM, {"data": orjson.dumps(record), "replaced": 0})
        if i % 2000 == 1999:
            pipe.execute()
    pipe.execute()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisProcess(Path(tmp) / "redis")
        server.start()
        try:
            client = redis.Redis.from_url(server.url)
            t0 = time.perf_counter()
            fill(client, "bench", args.events)
            filled = time.perf_counter() - t0
            settings = build_settings(
                {
                    "redis_url": server.url,
                    "upstreams": {"local": {"kind": "vllm", "base_url": "http://127.0.0.1:1/v1"}},
                    "models": {"base": {"upstream": "local", "model": "base"}},
                    "retrain": {"dataset_dir": str(Path(tmp) / "datasets"), "keep_good_share": 1.0},
                },
                RetrainSettings,
            )
            stages: dict[str, float] = {}
            last = [time.perf_counter()]

            def progress(stage: str, total: int) -> Any:
                now = time.perf_counter()
                stages[f"before {stage}"] = now - last[0]
                last[0] = now
                return lambda _n: None

            t0 = time.perf_counter()
            result = Builder(client, settings, "bench", progress=progress).run()
            took = time.perf_counter() - t0
        finally:
            server.stop()
    m = result.manifest
    print(f"{args.events} events written to Redis in {filled:.1f} s (setup, not measured)")
    print(f"retrain build: {result.status} in {took:.1f} s ({args.events / took:,.0f} events/s)")
    print(f"  counts: {m['counts']}")
    print(f"  dropped: {m['dropped']}; review queue: +{m['review_queue']['added']}")
    print(f"  stage boundaries: {', '.join(f'{k} {v:.1f} s' for k, v in stages.items())}")


if __name__ == "__main__":
    main()
