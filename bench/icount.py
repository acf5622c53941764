"""Instructions per request: what a system costs, counted rather than timed.

``python -m bench icount [--system gateway|floor|both] [--stream] [-n N] [--concurrency C]``

CPU time per request moves with whatever else runs on a shared machine (±20% between
runs here); an instruction count does not. This starts the upstream, Redis and the system
as ``bench run`` does, but the system's Python under valgrind's callgrind with
instrumentation off (start-up runs at valgrind's base speed); it sends a warm-up, turns
instrumentation on (``callgrind_control -i on``), sends exactly ``N`` requests from
``C`` concurrent aiohttp clients, and reads the instructions the process executed
(every thread: the event loop, the interaction-log writer, the collector's work).

The count includes the kernel-facing work only up to the system call (a ``write`` is a
few hundred instructions here whatever it costs the kernel), so it measures the
process's own work: a change that saves system calls shows less here than in CPU time.
Under callgrind the process runs ~50× slower, so batches (the log writer's, the reads
that bring several stream chunks) can differ from a real run's; the same N and C give
the same count to within ~1%.

Periodic work (the gateway's background tasks) runs whether or not requests
come, so it lands on the requests in proportion to how long they took: on a busy machine
a slower run counts more of it. ``--idle-s S`` measures it: after the requests, the count
of ``S`` seconds without any is taken too, and the count per request is also given less
that rate times the run's seconds (``net``), which a run's wall time does not move.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from . import systems as S
from .procs import BenchError, Processes, ensure_binary

START_S = 600  # start-up under valgrind is ~50× slower, more on a busy machine


async def _load(url: str, headers: dict[str, str], model: str, stream: bool, n: int, c: int) -> int:
    """Send ``n`` requests over ``c`` connections; the number that failed."""
    failed = 0
    left = n

    async def worker(session: aiohttp.ClientSession, i: int) -> None:
        nonlocal failed, left
        while left > 0:
            left -= 1
            body: dict[str, Any] = {
                "model": model,
                "messages": [{"role": "user", "content": "hello"}],
                "user": f"u{(left * 7 + i) % 1000}",
            }
            if stream:
                body["stream"] = True
            async with session.post(url, json=body, headers=headers) as resp:
                await resp.read()
                failed += resp.status != 200

    connector = aiohttp.TCPConnector(limit=c)
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(worker(session, i) for i in range(c)))
    return failed


def _total_ir(out_file: Path) -> int:
    text = out_file.read_text(errors="replace")
    m = re.search(r"^totals:\s+(\d+)", text, re.MULTILINE)
    if not m:
        raise BenchError(f"no instruction total in {out_file}")
    return int(m.group(1))


def measure(
    system: str,
    *,
    stream: bool,
    n: int,
    concurrency: int,
    warmup: int,
    work_dir: Path,
    idle_s: float = 0.0,
) -> dict[str, Any]:
    valgrind = ensure_binary("valgrind", "valgrind")
    control = shutil.which("callgrind_control")
    if not control:
        raise BenchError("callgrind_control not found (it comes with valgrind)")
    work_dir.mkdir(parents=True, exist_ok=True)
    out_file = work_dir / f"callgrind.{system}.out"
    python = [
        valgrind,
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={out_file}",
        sys.executable,
    ]
    with Processes(work_dir / "logs") as procs:
        upstream = S.start_upstream(procs, 100.0, 10)
        if system == "floor":
            sut = S.start_floor(procs, upstream, python=python, wait_s=START_S)
        else:
            redis = S.start_redis(procs)
            sut = S.start_gateway(
                procs, upstream, redis.url(), work_dir, python=python, wait_s=START_S
            )
        assert sut.proc is not None
        pid = str(sut.proc.pid)
        args = (sut.url, sut.headers, sut.model, stream)
        if asyncio.run(_load(*args, warmup, concurrency)):
            raise BenchError(f"{system}: warm-up requests failed; see {work_dir}/logs")
        subprocess.run([control, "-i", "on", pid], check=True, capture_output=True)
        t0 = time.monotonic()
        failed = asyncio.run(_load(*args, n, concurrency))
        seconds = time.monotonic() - t0
        if idle_s > 0:  # the requests' count so far, then as long again without requests
            subprocess.run([control, "-d", pid], check=True, capture_output=True)
            time.sleep(idle_s)
        subprocess.run([control, "-i", "off", pid], check=True, capture_output=True)
        procs.stop(sut.proc, grace_s=60)  # callgrind writes its totals at exit
    idle_rate = 0.0
    if idle_s > 0:
        dumps = sorted(work_dir.glob(f"callgrind.{system}.out.*"))
        if not dumps:
            raise BenchError(f"callgrind_control -d wrote no file beside {out_file}")
        total = _total_ir(dumps[-1])
        idle_rate = _total_ir(out_file) / idle_s
        for dump in dumps:
            dump.unlink()
    else:
        total = _total_ir(out_file)
    return {
        "system": system,
        "stream": stream,
        "requests": n,
        "concurrency": concurrency,
        "failed": failed,
        "instructions": total,
        "instructions_per_request": total / n,
        "seconds": round(seconds, 1),
        "idle_per_s": idle_rate,
        "net_per_request": (total - idle_rate * seconds) / n,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench icount", description=__doc__.split("\n")[0])
    p.add_argument("--system", choices=["gateway", "floor", "both"], default="both")
    p.add_argument("--stream", action="store_true", help="streamed requests")
    p.add_argument("-n", type=int, default=2000, help="requests counted (2000)")
    p.add_argument("--concurrency", type=int, default=8, help="concurrent clients (8)")
    p.add_argument("--warmup", type=int, default=200, help="requests before counting (200)")
    p.add_argument("--out", default=None, help="folder for logs and callgrind files")
    p.add_argument(
        "--idle-s",
        type=float,
        default=0.0,
        help="also count S seconds without requests, and give the count less that rate",
    )
    args = p.parse_args(argv)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    work_dir = Path(args.out or f"/tmp/flywheel-bench-icount-{stamp}")
    systems = ["floor", "gateway"] if args.system == "both" else [args.system]
    results = []
    for system in systems:
        r = measure(
            system,
            stream=args.stream,
            n=args.n,
            concurrency=args.concurrency,
            warmup=args.warmup,
            work_dir=work_dir,
            idle_s=args.idle_s,
        )
        results.append(r)
        kind = "streamed" if args.stream else "plain"
        print(
            f"{system:8} {kind}: {r['instructions_per_request'] / 1000:8.1f} k instructions "
            f"per request ({r['requests']} requests, {r['concurrency']} concurrent, "
            f"{r['failed']} failed, {r['seconds']} s)",
            flush=True,
        )
        if args.idle_s > 0:
            print(
                f"{'':8} idle {r['idle_per_s'] / 1000:,.0f} k instructions/s; net of it "
                f"{r['net_per_request'] / 1000:8.1f} k per request",
                flush=True,
            )
    if len(results) == 2:
        ratio = results[1]["instructions_per_request"] / results[0]["instructions_per_request"]
        print(f"gateway / floor: {ratio:.2f}x")
        if args.idle_s > 0:
            net = results[1]["net_per_request"] / results[0]["net_per_request"]
            print(f"gateway / floor, net of idle work: {net:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
