"""How long ``retrain build`` takes for 100,000 feedback events (the target: under a minute).

    .venv/bin/python -m bench.dataset_build [--events 100000] [--workload mixed|english]
    .venv/bin/python -m bench.dataset_build --archived 1000000 [--events 100000]

Starts its own ``redis-server``, fills it with interactions and rating events shaped
exactly as the gateway writes them (40% failures with a correction, 30% well rated,
20% failures without one, 10% neutral; every text distinct), then runs the real
builder and prints the time of each stage and in all.

The workload ``mixed`` (the default) writes 30% of the rated conversations' questions,
answers and corrections in Thai (dictionary words, no spaces but between phrases) and
10% in Vietnamese (syllables of real support-desk text), the rest in English-like words;
``english`` writes them all in English-like words (what this bench measured before).

With ``--archived N``, the interactions are past the hot window: an archive of ``N``
interactions (``bench/archive_join.py``: 1.7 KB conversations, files of 50,000 in 10 daily
partitions) and only the ``--events`` ratings of random ones among them in Redis. The
builder of ``retrain build`` then runs in a process of its own, and the bench prints
its wall time, stages and peak RSS.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import redis

from gateway.core import keys
from gateway.core.config import build_settings
from retrain.config import RetrainSettings
from retrain.dataset import Builder
from tests.services import RedisProcess

KS = keys.PLAIN_KEYSPACE  # the benches run on one Redis


WORDS = [f"w{i}" for i in range(20_000)]
WORKLOADS = {"mixed": (("th", 0.3), ("vi", 0.1)), "english": ()}  # shares not English


def text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def language(key: int, workload: str) -> str:
    """The language of a rated conversation (by its number: the same for its question,
    answer and correction)."""
    u = int.from_bytes(hashlib.sha256(str(key).encode()).digest()[:8], "big") / 2**64
    for lang, share in WORKLOADS[workload]:
        if u < share:
            return lang
        u -= share
    return "en"


def words_in(lang: str, rng: random.Random, n: int) -> str:
    """About ``n`` words' worth of text (English: ``n`` words as this bench always wrote)."""
    if lang == "en":
        return text(rng, n)
    return written(lang, rng, n * 6)


def written(lang: str, rng: random.Random, chars: int) -> str:
    """At most ``chars`` characters of random words of ``lang``: Thai dictionary words
    with a space after every four to eight (as Thai writers end a phrase), Vietnamese
    syllables."""
    vocabulary = _vocabulary(lang)
    out: list[str] = []
    size, phrase = 0, rng.randint(4, 8)
    while size < chars:
        word = rng.choice(vocabulary)
        if lang == "vi" or (phrase := phrase - 1) == 0:
            phrase = rng.randint(4, 8)
            word += " "
        out.append(word)
        size += len(word)
    return "".join(out)[:chars].strip()


@functools.cache
def _vocabulary(lang: str) -> list[str]:
    if lang == "th":
        from importlib.resources import files

        listed = (files("pythainlp") / "corpus" / "words_th.txt").read_text().split("\n")
        return sorted({w.strip() for w in listed if w.strip() and " " not in w.strip()})
    from tests.support_desk import PAIRS

    return sorted({w.strip(".,?").lower() for q, a in PAIRS[lang] for w in f"{q} {a}".split()})


def fill(
    client: redis.Redis, experiment: str, n: int, seed: int = 0, workload: str = "mixed"
) -> None:
    rng = random.Random(seed)
    pipe = client.pipeline(transaction=False)
    for i in range(n):
        rid = f"chatcmpl-bench-{i}"
        kind = rng.random()
        lang = language(i, workload)
        messages = [{"role": "user", "content": words_in(lang, rng, 20)}]
        interaction = {
            "id": rid,
            "experiment": experiment,
            "arm": "base",
            "user": f"u{i % 5000}",
            "messages": messages,
            "answer": words_in(lang, rng, 30),
            "status": "ok",
            "tenant": "default",
        }
        score, correction = (0.0, words_in(lang, rng, 30)) if kind < 0.4 else (1.0, None)
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
        pipe.xadd(KS.feedback_stream, {"data": orjson.dumps(record), "replaced": 0})
        if i % 2000 == 1999:
            pipe.execute()
    pipe.execute()


def rating(
    i: int, rid: str, experiment: str, rng: random.Random, lang: str = "en"
) -> dict[str, Any]:
    """A rating event as ``POST /v1/feedback`` streams it (the mix in this module's doc)."""
    kind = rng.random()
    score, correction = (0.0, words_in(lang, rng, 30)) if kind < 0.4 else (1.0, None)
    if 0.7 <= kind < 0.9:
        score = 0.0
    elif kind >= 0.9:
        score = 0.5
    return {
        "v": 2,
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
        "tenant": None,
        "experiment": experiment,
        "arm": "m0",
        "created": int(time.time()),
    }


def archived(rows: int, events: int, profile: str | None = None, workload: str = "mixed") -> None:
    """``retrain build`` with every rated interaction in the archive, none in Redis."""
    from .archive_join import _text, build_archive

    def conversation(row: int, rng: random.Random, chars: int) -> str:
        lang = language(row, workload)
        return _text(rng, chars) if lang == "en" else written(lang, rng, chars)

    rated = random.Random(5).sample(range(rows), events)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        ids = build_archive(str(work / "archive"), rows, fresh=set(rated), text=conversation)
        built = time.perf_counter() - t0
        server = RedisProcess(work / "redis")
        server.start()
        try:
            client = redis.Redis.from_url(server.url)
            rng = random.Random(0)
            pipe = client.pipeline(transaction=False)
            for i, row in enumerate(rated):
                record = rating(i, ids[row], "ab", rng, language(row, workload))
                pipe.xadd(KS.feedback_stream, {"data": orjson.dumps(record), "replaced": 0})
                if i % 2000 == 1999:
                    pipe.execute()
            pipe.execute()
            client.close()
            del ids
            config = {
                "redis_url": server.url,
                "upstreams": {"local": {"kind": "vllm", "base_url": "http://127.0.0.1:1/v1"}},
                "models": {"base": {"upstream": "local", "model": "base"}},
                "archive": {"url": str(work / "archive")},
                "retrain": {"dataset_dir": str(work / "datasets"), "keep_good_share": 1.0},
            }
            (work / "flywheel.yaml").write_bytes(orjson.dumps(config))
            argv = [sys.executable, "-m", "bench.peak", str(work / "peak")]
            # --profile: the same build under cProfile (slower: its time is not the bench's)
            argv += ["cProfile", "-o", profile, "-m"] if profile else []
            argv += ["bench.dataset_build", "--build", str(work / "flywheel.yaml")]
            load = os.getloadavg()[0]
            t0, cpu0 = time.perf_counter(), _children_cpu()
            done = subprocess.run(argv, capture_output=True, text=True)
            took, cpu = time.perf_counter() - t0, _children_cpu() - cpu0
            peak = int((work / "peak").read_text())
        finally:
            server.stop()
    assert done.returncode == 0, done.stderr
    print(f"archive of {rows:,} interactions written in {built:.1f} s (setup, not measured)")
    shares = ", ".join(f"{share:.0%} {lang}" for lang, share in WORKLOADS[workload])
    print(f"workload {workload}{f' ({shares}, the rest English)' if shares else ''}")
    print(
        f"retrain build, {events:,} ratings of archived interactions: {took:.1f} s "
        f"(its CPU {cpu:.1f} s), peak RSS {peak / 1024:,.0f} MiB; "
        f"load average {load:.1f} at the start"
    )
    print(done.stdout.strip())


def _children_cpu() -> float:
    """User and system CPU seconds of the children waited for so far: unlike the wall
    time, what other work on the machine does not add to."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def build_only(config: str) -> None:
    """The child's part: the real builder (``retrain build``'s), its stages timed."""
    from gateway.core.config import load_settings
    from retrain.feedback_log import connect

    from .peak import peak_kib

    settings = load_settings(config, schema=RetrainSettings)
    t0 = last = time.perf_counter()
    stages: list[str] = []

    def progress(stage: str, total: int) -> Any:
        nonlocal last
        now = time.perf_counter()
        stages.append(f"{now - last:.1f} s, then (peak RSS {peak_kib() / 1024:,.0f} MiB) {stage}")
        last = now
        return lambda _n: None

    result = Builder(connect(settings), KS, settings, "ab", progress=progress).run()
    stages.append(f"{time.perf_counter() - last:.1f} s")
    assert result.exit_code == 0, result.message
    m = result.manifest
    print(f"retrain build: {result.status} in {time.perf_counter() - t0:.1f} s")
    print(f"  stages: read the ratings {', '.join(stages)}")
    print(f"  counts: {m['counts']}")
    print(f"  dropped: {m['dropped']}; review queue: +{m['review_queue']['added']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--archived", type=int, default=0, metavar="N", help="see above")
    parser.add_argument("--profile", default=None, metavar="FILE", help="cProfile the build")
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="mixed", help="see above")
    parser.add_argument("--build", default=None, help=argparse.SUPPRESS)  # the child's part
    args = parser.parse_args()
    if args.build:
        build_only(args.build)
        return
    if args.archived:
        archived(args.archived, args.events, args.profile, args.workload)
        return
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisProcess(Path(tmp) / "redis")
        server.start()
        try:
            client = redis.Redis.from_url(server.url)
            t0 = time.perf_counter()
            fill(client, "bench", args.events, workload=args.workload)
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
            result = Builder(client, KS, settings, "bench", progress=progress).run()
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
