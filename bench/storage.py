"""What keeping interactions costs: Redis bytes per interaction, before and after.

``python -m bench.storage [-n N]`` starts its own ``redis-server`` and writes ``N``
interactions of a 1.7 KB request (a system prompt, three earlier turns and a question;
different words in every request) the way the gateway does — records made by
``Turn.record()``, written by ``InteractionLog`` — and reads Redis's ``used_memory``
before and after. "before" writes the same records the way earlier versions did (plain
JSON kept for the whole retention, stream trimmed by retention), so both numbers come
from this machine. Then the archiver copies them to Parquet (``archive.py``) and the
bench reports the archive's bytes per interaction and the archiver's records/s (one
pass: read from Redis, blocks put back, Parquet written, manifest, acknowledged).

Three workloads: 4-turn conversations of one app (every request logged: the 4th is the
1.7 KB request), only the 4th requests (their history never came through the gateway:
nothing to share but the system prompt), and 20-turn conversations.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import redis
import redis.asyncio as aioredis

from gateway.control.routing import Target
from gateway.core import keys
from gateway.core.auth import Principal
from gateway.core.config import InteractionLogConfig, Upstream
from gateway.core.ids import IdIssuer
from gateway.core.records import InteractionRecord
from gateway.ops.archive import Archive, Archiver
from gateway.serving.interaction_log import InteractionLog
from gateway.serving.metrics import Metrics
from gateway.serving.turn import Turn

from .procs import Processes
from .systems import ID_SECRET, start_redis

KS = keys.PLAIN_KEYSPACE  # the benches run on one Redis


def _corpus() -> list[str]:
    """The words of English prose (Python's own documentation, shipped with it), with their
    frequencies: messages are drawn from it word by word, so each is new text that
    compresses like chat text (a little worse: no phrases repeat), and a Parquet file of
    thousands of them finds no copied passages to fold."""
    from pydoc_data.topics import topics

    return " ".join(" ".join(t.split()) for t in topics.values()).split(" ")


WORDS = _corpus()


def _text(rng: random.Random, chars: int) -> str:
    out: list[str] = []
    n = 0
    while n < chars:
        w = WORDS[rng.randrange(len(WORDS))]
        out.append(w)
        n += len(w) + 1
    return " ".join(out)[:chars]


def _record(
    i: int, messages: list[dict[str, Any]], answer: str, ids: IdIssuer, targets: list[Target]
) -> InteractionRecord:
    doc = {
        "model": "ab",
        "messages": messages,
        "user": f"u{i % 1000}",
        "temperature": 0.2,
        "max_tokens": 256,
    }
    turn = Turn(
        id=ids.new(),
        request_id=f"req-{i:012d}",
        t0=time.perf_counter(),
        doc=doc,
        principal=Principal("bench", "bench"),
        experiment="ab",
        assigned=targets[i % 2],
        target=targets[i % 2],
        stream=False,
        version=1,
        unit=f"{i % 1000:016x}",
    )
    turn.answer.append(answer)
    turn.finish_reason = "stop"
    turn.usage = {"prompt_tokens": 420, "completion_tokens": 60, "total_tokens": 480}
    return turn.record()


def conversations(n: int, turns: int, only_last: bool = False, seed: int = 7) -> list[Any]:
    """``n`` records from conversations of ``turns`` turns of one app (one system prompt):
    each request carries the whole history, its answer comes back in the next one. With
    ``only_last``, only each conversation's last request is kept (its history never came
    through the gateway)."""
    rng = random.Random(seed)
    ids = IdIssuer(ID_SECRET.encode())
    upstream = Upstream(kind="vllm", base_url="http://127.0.0.1:1/v1")
    targets = [Target(f"m{i}", "fixed", upstream, f"m{i}") for i in range(2)]
    system = {"role": "system", "content": _text(rng, 380)}
    out: list[InteractionRecord] = []
    while len(out) < n:
        messages: list[dict[str, Any]] = [system]
        for t in range(turns):
            messages = [*messages, {"role": "user", "content": _text(rng, 110 if t < 3 else 130)}]
            answer = _text(rng, 200)
            if not only_last or t == turns - 1:
                out.append(_record(len(out), messages, answer, ids, targets))
            messages = [*messages, {"role": "assistant", "content": answer}]
    return out[:n]


def request_bytes(rec: InteractionRecord) -> int:
    return len(orjson.dumps({"model": "ab", "messages": rec["messages"], **rec["params"]}))


async def _used(client: aioredis.Redis) -> int:
    info = await client.info("memory")
    return int(info["used_memory"])


async def legacy_write(client: aioredis.Redis, batch: list[InteractionRecord]) -> None:
    """How earlier versions stored a record: plain JSON kept for the retention (30 days)."""
    ttl = int(InteractionLogConfig().retention_days * 86400)
    pipe = client.pipeline(transaction=False)
    for rec in batch:
        old = {k: v for k, v in rec.items() if k not in ("v", "tools", "choices", "judge_score")}
        old.pop("shadow_of")
        pipe.set(keys.interaction(rec["id"]), orjson.dumps(old), ex=ttl)
        pipe.xadd(
            KS.interaction_stream,
            {"id": rec["id"], "experiment": rec["experiment"] or "", "arm": rec["arm"]},
        )
    await pipe.execute()


def interaction_log(client: aioredis.Redis, records: int, ks: keys.Keyspace = KS) -> InteractionLog:
    """The interaction log as the gateway runs it (default retention and hot window),
    with room for ``records`` and batches of 500."""
    cfg = InteractionLogConfig()
    return InteractionLog(
        client,
        Metrics(),
        ks=ks,
        queue_size=records,
        batch_size=500,
        retention_s=cfg.retention_days * 86400,
        hot_s=cfg.hot_s,
    )


async def redis_bytes(url: str, recs: list[InteractionRecord]) -> dict[str, float]:
    """Redis's ``used_memory`` per record, written as before and as now."""
    client = aioredis.Redis.from_url(url)
    out: dict[str, float] = {}
    for name in ("before", "now"):
        await client.flushdb()
        base = await _used(client)
        if name == "before":
            for i in range(0, len(recs), 500):
                await legacy_write(client, recs[i : i + 500])
        else:
            log = interaction_log(client, len(recs))
            for i in range(0, len(recs), 500):
                await log._write(recs[i : i + 500])
        out[name] = (await _used(client) - base) / len(recs)
    await client.aclose()
    out.update(await asyncio.to_thread(archive_bytes, url, len(recs)))
    return out


def archive_bytes(url: str, n: int) -> dict[str, float]:
    """Archive what Redis holds now (the records as written "now"): bytes and records/s."""
    import pyarrow.parquet  # noqa: F401 - imported once by a running archiver: not timed

    root = Path(tempfile.mkdtemp(prefix="flywheel-bench-archive-"))
    client = redis.Redis.from_url(url)
    try:
        archiver = Archiver(client, KS, Archive(str(root)), batch=50_000)
        t0 = time.perf_counter()
        result = archiver.run_once()
        seconds = time.perf_counter() - t0
        assert result.written["interactions"] == n, result
        size = sum(p.stat().st_size for p in root.glob("interactions/**/*.parquet"))
        return {"archive": size / n, "archive_per_s": n / seconds}
    finally:
        client.close()
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.storage", description=__doc__)
    parser.add_argument("-n", type=int, default=20_000, help="interactions per workload")
    args = parser.parse_args()
    workloads = {
        "4-turn conversations (the 4th request is the 1.7 KB one)": conversations(args.n, 4),
        "only the 4th requests (their history never logged)": conversations(args.n, 4, True),
        "20-turn conversations": conversations(args.n, 20),
    }
    size = request_bytes(workloads["only the 4th requests (their history never logged)"][0])
    work = Path(tempfile.mkdtemp(prefix="flywheel-bench-storage-"))
    results: dict[str, dict[str, float]] = {}
    try:
        with Processes(work / "logs") as procs:
            redis = start_redis(procs)
            for name, recs in workloads.items():
                results[name] = asyncio.run(redis_bytes(redis.url(), recs))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{args.n} interactions per workload; the 4th request of a conversation: {size:,} B\n")
    print("| workload | Redis B/interaction before | now | now/before | archive B | archived/s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, r in results.items():
        print(
            f"| {name} | {r['before']:,.0f} | {r['now']:,.0f} | {r['now'] / r['before']:.2f} "
            f"| {r['archive']:,.0f} | {r['archive_per_s']:,.0f} |"
        )


if __name__ == "__main__":
    main()
