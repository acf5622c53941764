"""A paced soak: what the gateway keeps, minute by minute, at a steady rate of requests.

``python -m bench.paced [--minutes M] [--rate R] [--rated SHARE] [--hot-s H] [--workers N]
[--vacuum-hours V] [--log-hours L]``
(or ``bench/soak --paced …``) starts its own ``redis-server``, the fixed upstream and the
gateway as ``gateway serve`` runs it (an A/B experiment, the archiver on, interactions
and ratings kept in Redis for ``H`` seconds: a day compressed), then sends ``R`` chat
requests a second (non-streaming) and rates ``SHARE`` of them, for ``M`` minutes. Each
minute it prints:

* Redis ``used_memory`` (MiB) and its number of keys;
* the archive: committed files and bytes, and the table log's bytes (``manifest.json``,
  and a ``_delta_log`` directory where the archive has one);
* the resident memory (MiB) of each gateway process: the parent, each worker and the
  archiver's own process (``--workers`` > 1).

Flat lines after the first ``H`` seconds (Redis, RSS) are what a long soak should show,
and files on disk and a table log that level off once ``--vacuum-hours`` and
``--log-hours`` (the archive's retentions; 0 shows the level in minutes) have passed;
``--minutes 30`` or more is the real one. 5% of the ratings carry a 300-character Thai
comment. At the end it waits for the archiver to catch up and checks the Delta tables:
every acknowledged interaction and rating there once, none twice, none missing, the Thai
comments byte for byte.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import redis
import yaml

from .procs import Processes, free_port, wait_http
from .systems import API_KEY, REPO, gateway_config, start_redis, start_upstream


def rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def tree(pid: int) -> dict[int, str]:
    """A process and its descendants: pid → a short name."""
    out = {pid: "parent"}
    changed = True
    while changed:
        changed = False
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                child = int(stat.parent.name)
                ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
                cmd = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except (OSError, IndexError, ValueError):
                continue
            if ppid in out and child not in out:
                if "gateway archiver" in cmd:
                    out[child] = "archiver"
                elif "resource_tracker" in cmd:
                    out[child] = "tracker"  # multiprocessing's, beside the workers
                elif "multiprocessing" in cmd:
                    out[child] = "worker"
                else:
                    out[child] = "child"
                changed = True
    return out


def snapshot_files(root: Path) -> int:
    """Data files in the tables' current snapshots (what a reader opens; files a
    compaction replaced stay on disk until the vacuum's retention has passed)."""
    from deltalake import DeltaTable

    count = 0
    for log in root.glob("*/_delta_log"):
        try:
            count += len(DeltaTable(str(log.parent)).file_uris())
        except Exception:  # noqa: BLE001 - a table being created: count it next minute
            pass
    return count


def archive_sizes(root: Path) -> tuple[int, int, int]:
    """Committed files, their bytes, and the table log's bytes."""
    files = data = 0
    manifest = root / "manifest.json"
    log_bytes = manifest.stat().st_size if manifest.exists() else 0
    if manifest.exists():
        for f in orjson.loads(manifest.read_bytes()).get("files", []):
            files += 1
            data += int(f.get("bytes", 0))
    delta = root / "_delta_log"
    if delta.is_dir():
        log_bytes += sum(p.stat().st_size for p in delta.rglob("*") if p.is_file())
    for table in root.glob("*/_delta_log"):
        log_bytes += sum(p.stat().st_size for p in table.rglob("*") if p.is_file())
        for part in table.parent.rglob("*.parquet"):
            if part.parent.name == "_delta_log":  # a checkpoint: the log's
                continue
            files += 1
            data += part.stat().st_size
    return files, data, log_bytes


THAI_COMMENT = ("พัสดุยังไม่ออกจากคลังสินค้าเลยค่ะ ช่วยตรวจสอบให้หน่อยนะคะ " * 6)[:300]


def check_tables(archive: Path, acked: dict[str, str | None], timeout_s: float) -> str:
    """Wait until the tables hold every acknowledged interaction and rating, then say
    what is missing, what is there twice, and whether the Thai comments came back whole."""
    from deltalake import DeltaTable

    rated = {rid for rid, comment in acked.items() if comment is not None}
    deadline = time.monotonic() + timeout_s
    while True:
        ids: list[str] = []
        ratings: list[tuple[str, str | None]] = []
        snapshot_files = 0
        try:
            table = DeltaTable(str(archive / "interactions"))
            ids = table.to_pyarrow_table(columns=["id"]).column("id").to_pylist()
            snapshot_files += len(table.file_uris())
            fb = DeltaTable(str(archive / "feedback"))
            t = fb.to_pyarrow_table(columns=["response_id", "comment"])
            ratings = list(
                zip(
                    t.column("response_id").to_pylist(),
                    t.column("comment").to_pylist(),
                    strict=True,
                )
            )
            snapshot_files += len(fb.file_uris())
        except Exception:  # noqa: BLE001 - not created yet: wait
            pass
        missing = set(acked) - set(ids)
        missing_ratings = rated - {rid for rid, _ in ratings}
        if (not missing and not missing_ratings) or time.monotonic() > deadline:
            break
        time.sleep(5)
    twice = len(ids) - len(set(ids))
    rating_twice = len(ratings) - len({rid for rid, _ in ratings})
    thai_sent = sum(1 for c in acked.values() if c == THAI_COMMENT)
    thai_back = sum(1 for _, c in ratings if c == THAI_COMMENT)
    return (
        f"tables: {len(set(ids)):,} of {len(acked):,} acknowledged interactions "
        f"({len(missing):,} missing, {twice:,} twice); {len({r for r, _ in ratings}):,} of "
        f"{len(rated):,} acknowledged ratings ({len(missing_ratings):,} missing, "
        f"{rating_twice:,} twice); Thai comments {thai_back:,} of {thai_sent:,} byte-identical; "
        f"{snapshot_files} files in the tables' snapshots"
    )


async def drive(
    base: str, rate: float, rated: float, seconds: float, report: Any
) -> tuple[dict[str, int], dict[str, str | None]]:
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    rng = random.Random(3)
    counts = {"requests": 0, "ratings": 0, "errors": 0}
    acked: dict[str, str | None] = {}  # response id → the comment of its acknowledged rating
    sem = asyncio.Semaphore(256)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:

        async def one(i: int) -> None:
            async with sem:
                body = {
                    "model": "ab",
                    "user": f"user-{rng.randrange(5000)}",
                    "messages": [{"role": "user", "content": f"Where is my order {i}?"}],
                }
                try:
                    async with http.post(
                        base + "/v1/chat/completions", data=orjson.dumps(body), headers=headers
                    ) as resp:
                        doc = await resp.json(loads=orjson.loads)
                        if resp.status != 200:
                            counts["errors"] += 1
                            return
                    counts["requests"] += 1
                    acked.setdefault(doc["id"], None)
                    if rng.random() < rated:
                        thai = rng.random() < 0.05
                        fb = {
                            "response_id": doc["id"],
                            "rating": rng.choice(["up", "down", 4]),
                            "comment": THAI_COMMENT
                            if thai
                            else "the parcel had not left the depot",
                        }
                        async with http.post(
                            base + "/v1/feedback", data=orjson.dumps(fb), headers=headers
                        ) as r2:
                            await r2.read()
                            counts["ratings" if r2.status == 201 else "errors"] += 1
                            if r2.status == 201:
                                acked[doc["id"]] = fb["comment"]

                except aiohttp.ClientError:
                    counts["errors"] += 1

        t0 = time.monotonic()
        sent = 0
        tasks: set[asyncio.Task[None]] = set()
        next_report = 60.0
        while (elapsed := time.monotonic() - t0) < seconds:
            for _ in range(int(elapsed * rate) - sent):
                task = asyncio.create_task(one(sent))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                sent += 1
            if elapsed >= next_report:
                report(elapsed, counts)
                next_report += 60
            await asyncio.sleep(0.01)
        await asyncio.gather(*tasks)
        report(time.monotonic() - t0, counts)
    return counts, acked


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.paced", description=__doc__)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=150.0, help="chat requests per second")
    parser.add_argument("--rated", type=float, default=0.5, help="share of answers rated")
    parser.add_argument("--hot-s", type=float, default=60.0, help="interactions' and ratings'")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--vacuum-hours", type=int, default=1, help="archive.vacuum_retention_hours"
    )
    parser.add_argument("--log-hours", type=int, default=24, help="archive.log_retention_hours")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="flywheel-bench-paced-"))
    archive = work / "archive"
    try:
        with Processes(work / "logs") as procs:
            server = start_redis(procs)
            upstream = start_upstream(procs, slow_interval_ms=10, slow_chunks=5)
            doc = gateway_config(server.url(), upstream, work / "data")
            doc["interaction_log"] = {"hot_s": args.hot_s}
            doc["feedback"] = {"hot_s": args.hot_s}
            # written well within the hot window: an interaction leaves Redis after hot_s
            doc["archive"] = {
                "url": str(archive),
                "every_s": 5,
                "max_wait_s": min(30, args.hot_s / 4),
                "vacuum_retention_hours": args.vacuum_hours,
                "log_retention_hours": args.log_hours,
            }
            config = work / "gateway.yaml"
            config.write_text(yaml.safe_dump(doc, sort_keys=False))
            port = free_port()
            argv = [sys.executable, "-m", "gateway", "serve", "--config", str(config)]
            argv += ["--port", str(port), "--workers", str(args.workers)]
            gw = procs.start("gateway", argv, cwd=REPO)
            base = f"http://127.0.0.1:{port}"
            wait_http(gw, base + "/healthz", timeout_s=120)
            client = redis.Redis.from_url(server.url())
            print(
                f"{args.rate:g} requests/s, {args.rated:.0%} rated, hot_s {args.hot_s:g} s, "
                f"{args.workers} worker(s), {args.minutes:g} min, vacuum after "
                f"{args.vacuum_hours} h, log kept {args.log_hours} h\n"
            )
            print(
                "| min | requests | ratings | errors | Redis used_memory MiB | keys | files in "
                "snapshot | files on disk | archive MiB | table log KiB | gateway RSS MiB |"
            )
            print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")

            def report(elapsed: float, counts: dict[str, int]) -> None:
                used = int(client.info("memory")["used_memory"]) / 2**20
                files, data, log_bytes = archive_sizes(archive)
                rss = ", ".join(
                    f"{name} {rss_mib(pid):.0f}" for pid, name in sorted(tree(gw.pid).items())
                )
                print(
                    f"| {elapsed / 60:.1f} | {counts['requests']:,} | {counts['ratings']:,} "
                    f"| {counts['errors']:,} | {used:.1f} | {client.dbsize():,} "
                    f"| {snapshot_files(archive):,} | {files:,} "
                    f"| {data / 2**20:.1f} | {log_bytes / 1024:.1f} | {rss} |",
                    flush=True,
                )

            counts, acked = asyncio.run(
                drive(base, args.rate, args.rated, args.minutes * 60, report)
            )
            client.close()
            print()
            print(check_tables(archive, acked, timeout_s=args.hot_s + 180))
            print()
            for line in gw.log_path.read_text(errors="replace").splitlines():
                if "first files written" in line:  # what archiving cost the process doing it
                    print(line)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
