"""Where a request's time goes: CPU (user and system), context switches and system calls
per request, the gateway beside the floor, over a fixed number of requests.

``python -m bench.anatomy [--system gateway|floor|both] [--stream] [-n 3000]
[--concurrency 32] [--strace]``

Starts the upstream, Redis and the system as ``bench run`` does, sends a warm-up, then
exactly ``N`` requests from ``C`` concurrent aiohttp clients, and reads around them, from
``/proc/<pid>/task/*/{stat,status}`` of every thread of the system's process:

* user and system CPU time per request (the kernel's share is what an instruction count
  leaves out);
* voluntary context switches per request (each is the event loop going to sleep in
  ``epoll_wait`` and being woken again: a wake-up) and involuntary ones (preempted);

With ``--strace`` a second round of ``N`` requests runs with ``strace -c -f`` attached to
the process, which counts its system calls by name: per request, the writes to sockets
(``write``, ``writev``, ``sendto``, ``sendmsg``), the reads (``read``, ``recvfrom``) and
the ``epoll_wait`` calls (event-loop iterations that went to the kernel). strace slows the
process down severalfold, so that round's times are not reported, only its counts.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from . import systems as S
from .icount import _load
from .procs import CLK_TCK, BenchError, Processes

WRITES = ("write", "writev", "sendto", "sendmsg")
READS = ("read", "readv", "recvfrom", "recvmsg")


def _threads(pid: int) -> list[str]:
    try:
        return os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []


def snapshot(pid: int) -> dict[str, int]:
    """utime/stime (clock ticks) and context switches, summed over the process's threads
    (and over the children it waited for: none here)."""
    out = {"utime": 0, "stime": 0, "voluntary": 0, "nonvoluntary": 0, "threads": 0}
    for tid in _threads(pid):
        base = f"/proc/{pid}/task/{tid}"
        try:
            with open(f"{base}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            with open(f"{base}/status") as g:
                status = g.read()
        except OSError:
            continue
        out["utime"] += int(fields[11])
        out["stime"] += int(fields[12])
        out["threads"] += 1
        for key in ("voluntary", "nonvoluntary"):
            m = re.search(rf"^{key}_ctxt_switches:\s+(\d+)", status, re.MULTILINE)
            out[key] += int(m.group(1)) if m else 0
    return out


def _strace_counts(path: Path) -> dict[str, int]:
    """``strace -c`` output → calls per system call name."""
    calls: dict[str, int] = {}
    for line in path.read_text(errors="replace").splitlines():
        parts = line.split()
        # % time, seconds, usecs/call, calls, [errors], syscall
        if len(parts) >= 5 and parts[0].replace(".", "", 1).isdigit() and parts[-1].isidentifier():
            if parts[-1] == "total":
                continue
            calls[parts[-1]] = int(parts[3])
    return calls


def measure(
    system: str,
    *,
    stream: bool,
    n: int,
    concurrency: int,
    warmup: int,
    work_dir: Path,
    strace: bool,
) -> dict[str, Any]:
    work_dir.mkdir(parents=True, exist_ok=True)
    with Processes(work_dir / "logs") as procs:
        upstream = S.start_upstream(procs, 100.0, 10)
        if system == "floor":
            sut = S.start_floor(procs, upstream)
        else:
            redis = S.start_redis(procs)
            sut = S.start_gateway(procs, upstream, redis.url(), work_dir)
        assert sut.proc is not None
        pid = sut.proc.pid
        args = (sut.url, sut.headers, sut.model, stream)
        if asyncio.run(_load(*args, warmup, concurrency)):
            raise BenchError(f"{system}: warm-up requests failed; see {work_dir}/logs")
        before, t0 = snapshot(pid), time.monotonic()
        failed = asyncio.run(_load(*args, n, concurrency))
        seconds = time.monotonic() - t0
        after = snapshot(pid)
        d = {k: after[k] - before[k] for k in before}
        result: dict[str, Any] = {
            "system": system,
            "stream": stream,
            "requests": n,
            "concurrency": concurrency,
            "failed": failed,
            "threads": after["threads"],
            "seconds": round(seconds, 2),
            "user_us": d["utime"] / CLK_TCK / n * 1e6,
            "system_us": d["stime"] / CLK_TCK / n * 1e6,
            "voluntary": d["voluntary"] / n,
            "nonvoluntary": d["nonvoluntary"] / n,
        }
        if strace:
            binary = shutil.which("strace")
            if not binary:
                raise BenchError("strace not found (apt-get install -y strace)")
            out = work_dir / f"strace.{system}{'-stream' if stream else ''}.txt"
            tracer = subprocess.Popen(
                [binary, "-c", "-f", "-o", str(out), "-p", str(pid)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                time.sleep(1.0)  # strace attaches to every thread
                asyncio.run(_load(*args, n, concurrency))
            finally:
                tracer.send_signal(signal.SIGINT)
                tracer.wait(timeout=30)
            calls = _strace_counts(out)
            result["syscalls"] = {k: v / n for k, v in sorted(calls.items())}
            result["writes"] = sum(calls.get(k, 0) for k in WRITES) / n
            result["reads"] = sum(calls.get(k, 0) for k in READS) / n
            result["epoll_wait"] = calls.get("epoll_wait", 0) / n
            result["syscalls_total"] = sum(calls.values()) / n
    return result


def line(r: dict[str, Any]) -> str:
    kind = "streamed" if r["stream"] else "plain"
    text = (
        f"{r['system']:8} {kind:8}: CPU {r['user_us'] + r['system_us']:6.0f} µs/req "
        f"(user {r['user_us']:5.0f}, system {r['system_us']:5.0f}); context switches "
        f"{r['voluntary']:.2f} voluntary, {r['nonvoluntary']:.2f} involuntary per request"
    )
    if "syscalls_total" in r:
        text += (
            f"; system calls {r['syscalls_total']:.1f}/req: writes {r['writes']:.2f}, "
            f"reads {r['reads']:.2f}, epoll_wait {r['epoll_wait']:.2f}"
        )
    n, c, failed = r["requests"], r["concurrency"], r["failed"]
    return text + f"  ({n} requests, {c} concurrent, {failed} failed)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.anatomy", description=__doc__.split("\n")[0])
    p.add_argument("--system", choices=["gateway", "floor", "both"], default="both")
    p.add_argument("--stream", action="store_true", help="streamed requests")
    p.add_argument("-n", type=int, default=3000, help="requests measured (3000)")
    p.add_argument("--concurrency", type=int, default=32, help="concurrent clients (32)")
    p.add_argument("--warmup", type=int, default=500, help="requests before measuring (500)")
    p.add_argument("--strace", action="store_true", help="a second round under strace -c -f")
    p.add_argument("--syscalls", action="store_true", help="print every system call's count")
    p.add_argument("--out", default=None, help="folder for logs and strace files")
    args = p.parse_args(argv)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    work_dir = Path(args.out or f"/tmp/flywheel-bench-anatomy-{stamp}")
    systems = ["floor", "gateway"] if args.system == "both" else [args.system]
    print(f"load average {os.getloadavg()[0]:.2f} at the start", flush=True)
    for system in systems:
        r = measure(
            system,
            stream=args.stream,
            n=args.n,
            concurrency=args.concurrency,
            warmup=args.warmup,
            work_dir=work_dir,
            strace=args.strace,
        )
        print(line(r), flush=True)
        if args.syscalls and "syscalls" in r:
            print("   " + ", ".join(f"{k} {v:.2f}" for k, v in r["syscalls"].items() if v >= 0.01))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
