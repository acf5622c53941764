"""Profiling Flywheel under load: where a request's CPU time goes.

``python -m bench profile`` starts the upstream, Redis and ``gateway serve`` as
``bench run`` does, loads it with wrk, and either

* samples it with py-spy (``bench/install-peers`` puts py-spy beside LiteLLM), a sampling
  profiler that barely slows the process, or
* runs it under cProfile (``python -m cProfile -m gateway serve``): exact call counts, but
  every Python call costs more, so pure-Python code looks heavier than it is.

It prints the CPU µs per request (from /proc), the share of samples by layer (inclusive:
a sample counts for every layer on its stack) and the functions with the most self time.
"""

from __future__ import annotations

import contextlib
import io
import os
import pstats
import shutil
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from . import systems as S
from .procs import BenchError, Processes, ensure_binary
from .wrk import lua_script, run_wrk

# Layers of a request, by the file a frame is in (first match wins for self time).
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("gateway: chat handler (chat.py)", ("gateway/serving/chat.py",)),
    (
        "gateway: upstream client",
        ("gateway/serving/upstream.py", "gateway/serving/http1.py", "gateway/serving/replicas.py"),
    ),
    ("gateway: interaction log writer", ("gateway/serving/interaction_log.py",)),
    ("gateway: ids (HMAC)", ("gateway/core/ids.py",)),
    ("gateway: routing (sha256 bucket)", ("gateway/control/routing.py",)),
    ("gateway: auth", ("gateway/core/auth.py",)),
    ("gateway: body/parse", ("gateway/serving/bodies.py",)),
    ("gateway: app.py (endpoint, request id)", ("gateway/app.py",)),
    ("gateway: control (Redis poll)", ("gateway/control/control.py",)),
    ("prometheus_client (metrics)", ("prometheus_client/",)),
    ("redis-py (writer pipeline)", ("redis/",)),
    ("aiohttp client", ("aiohttp/", "yarl/", "multidict/")),
    ("FastAPI / Starlette (routing, request, response)", ("fastapi/", "starlette/")),
    ("uvicorn (HTTP server protocol)", ("uvicorn/",)),
    ("asyncio / uvloop", ("asyncio/", "uvloop/")),
]


@dataclass
class ProfileOptions:
    tool: str = "auto"
    duration_s: float = 10.0
    connections: int = 32
    out_dir: Path = Path("/tmp/flywheel-bench-profile")
    native: bool = False
    system: str = "gateway"  # or "floor", for reference
    stream: bool = False  # streamed requests
    arms: int = 2


def py_spy_binary() -> str | None:
    found = shutil.which("py-spy")
    if found:
        return found
    litellm = S.litellm_binary()
    candidate = litellm.parent / "py-spy" if litellm else None
    return str(candidate) if candidate and candidate.exists() else None


def layer_of(frame: str) -> str | None:
    for name, patterns in LAYERS:
        if any(p in frame for p in patterns):
            return name
    return None


def summarize_collapsed(path: Path, top: int = 30) -> str:
    """Inclusive share by layer and top self-time frames of a py-spy ``raw`` profile."""
    total = 0
    inclusive: Counter[str] = Counter()
    self_frames: Counter[str] = Counter()
    self_layers: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack:
            continue
        n = int(count_s)
        frames = stack.split(";")
        total += n
        for layer in {layer_of(f) for f in frames} - {None}:
            inclusive[layer] += n  # type: ignore[index]
        self_frames[frames[-1]] += n
        self_layers[_self_layer(frames)] += n
    if not total:
        return "no samples (is the process idle, or py-spy not permitted?)"
    lines = [f"{total} samples (active, GIL holders and not)", "", "inclusive share by layer:"]
    lines += [f"  {n / total:6.1%}  {name}" for name, n in inclusive.most_common()]
    lines += ["", "self time by layer (innermost known layer of each sample):"]
    lines += [f"  {n / total:6.1%}  {name}" for name, n in self_layers.most_common()]
    lines += ["", f"top {top} frames by self time:"]
    lines += [f"  {n / total:6.1%}  {frame}" for frame, n in self_frames.most_common(top)]
    return "\n".join(lines)


def _self_layer(frames: list[str]) -> str:
    for frame in reversed(frames):
        layer = layer_of(frame)
        if layer:
            return layer
    return "other"


def summarize_pstats(path: Path, top: int = 35) -> str:
    buf = io.StringIO()
    stats = pstats.Stats(str(path), stream=buf)
    stats.strip_dirs().sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return buf.getvalue()


def profile(opts: ProfileOptions) -> str:
    tool = opts.tool
    spy = py_spy_binary()
    if tool == "auto":
        tool = "py-spy" if spy else "cprofile"
    if tool == "py-spy" and not spy:
        raise BenchError("py-spy not found (bench/install-peers installs it)")
    opts.out_dir.mkdir(parents=True, exist_ok=True)
    wrk = ensure_binary("wrk", "wrk")
    prof_path = opts.out_dir / f"{opts.system}.pstats"
    python = (
        [sys.executable, "-m", "cProfile", "-o", str(prof_path)] if tool == "cprofile" else None
    )
    with Processes(opts.out_dir / "logs") as procs:
        upstream = S.start_upstream(procs, 100, 10)
        redis = S.start_redis(procs)
        if opts.system == "floor":
            gw = S.start_floor(procs, upstream, python=python)
        else:
            gw = S.start_gateway(
                procs, upstream, redis.url(), opts.out_dir, python=python, arms=opts.arms
            )
        assert gw.proc is not None
        script = opts.out_dir / f"{opts.system}-chat.lua"
        script.write_text(lua_script(S.CHAT_PATH, gw.headers, gw.model, opts.stream))
        run_wrk(wrk, gw.url, script, connections=opts.connections, duration_s=2)  # warm up
        cpu0 = gw.proc.cpu_seconds()
        spy_out = opts.out_dir / f"{opts.system}.pyspy.txt"
        sampler = None
        if tool == "py-spy":
            sampler = procs.start("py-spy", _py_spy_argv(spy, gw.proc.pid, opts, spy_out))
        result = run_wrk(
            wrk, gw.url, script, connections=opts.connections, duration_s=opts.duration_s
        )
        cpu = gw.proc.cpu_seconds() - cpu0
        if sampler is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                sampler.popen.wait(30)
            procs.stop(sampler)
        # SIGINT: uvicorn re-raises it after shutting down, as KeyboardInterrupt, which
        # cProfile survives to write its file (a re-raised SIGTERM would kill it first).
        procs.stop(gw.proc, sig=signal.SIGINT)
    head = (
        f"profile ({tool}) of {opts.system} at {opts.connections} connections"
        f"{', streaming' if opts.stream else ''}{f', {opts.arms} arms' if opts.arms != 2 else ''}, "
        f"{opts.duration_s:g} s: {result.rps:,.0f} req/s, p50 {result.p50_ms:.2f} ms; "
        f"CPU {cpu / max(result.requests, 1) * 1e6:.0f} µs per request "
        f"({cpu / result.duration_s:.0%} of a core)\nraw profile in {opts.out_dir}\n"
    )
    if tool == "py-spy":
        if not spy_out.exists():
            raise BenchError(f"py-spy wrote no profile: see {opts.out_dir}/logs/py-spy.log")
        return head + "\n" + summarize_collapsed(spy_out)
    if not prof_path.exists():
        raise BenchError(f"cProfile wrote no profile: see {opts.out_dir}/logs/gateway.log")
    return head + "\n" + summarize_pstats(prof_path)


def _py_spy_argv(spy: str | None, pid: int, opts: ProfileOptions, out: Path) -> list[str]:
    """py-spy record for as long as the wrk run (minus its start), without pausing the gateway."""
    assert spy is not None
    if os.geteuid() != 0:
        print("bench: py-spy needs ptrace permission (root or CAP_SYS_PTRACE)", file=sys.stderr)
    argv = [
        spy,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(max(1, int(opts.duration_s) - 1)),
        "--rate",
        "250",
        "--format",
        "raw",
        "--nolineno",
        "--output",
        str(out),
    ]
    # Native stacks need the process paused for each sample (slower, but C time is named).
    return [*argv, "--native"] if opts.native else [*argv, "--nonblocking"]
