"""The benchmark's modes: what is started, what is measured, in which order.

Each system is started just before it is measured and stopped right after, so an idle
one never steals CPU from the next; the upstream and Redis stay up throughout.
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from gateway.core import keys

from . import icount
from . import systems as S
from .logwriter import run_log
from .procs import BenchError, Processes, ensure_binary
from .streaming import run_streaming
from .wrk import WrkResult, lua_script, run_wrk

KS = keys.PLAIN_KEYSPACE  # the benches run on one Redis


MODES = ("throughput", "streaming", "arms", "log", "icount")
PEERS = ("litellm", "portkey")


@dataclass
class Options:
    modes: list[str]
    duration_s: float = 10.0
    warmup_s: float = 2.0
    connections: int = 32
    peers: list[str] = field(default_factory=list)
    ttft_requests: int = 200
    slow_requests: int = 5
    slow_interval_ms: float = 100.0
    slow_chunks: int = 10
    arms: tuple[int, int] = (2, 100)
    arms_rounds: int = 2
    log_records: int = 50_000
    icount_requests: int = 1000  # requests counted under callgrind, per system and kind
    icount_concurrency: int = 8
    paired_rounds: int = 4  # floor and Flywheel in alternation at 32 connections (0: none)
    paired_s: float = 5.0
    workers: int = 1  # gateway serve --workers N (the throughput and streaming modes)
    work_dir: Path = Path("/tmp/flywheel-bench")


def installed_peers() -> list[str]:
    return [p for p in PEERS if (S.litellm_binary() if p == "litellm" else S.portkey_entry())]


def machine_info() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "loadavg_start": os.getloadavg(),
    }


class Bench:
    """One benchmark run: the processes it started, the tools it found, what it measured."""

    def __init__(self, procs: Processes, opts: Options, log: Callable[[str], None]) -> None:
        self.procs = procs
        self.opts = opts
        self.log = log
        self.wrk = ensure_binary("wrk", "wrk") if self._needs_wrk() else ""
        self.results: dict[str, Any] = {"meta": machine_info(), "systems": {}}
        self.results["meta"]["options"] = {
            k: (str(v) if isinstance(v, Path) else v) for k, v in vars(opts).items()
        }
        self.upstream = S.start_upstream(procs, opts.slow_interval_ms, opts.slow_chunks)
        self.redis = S.start_redis(procs)

    def _needs_wrk(self) -> bool:
        return bool({"throughput", "arms", "whatif"} & set(self.opts.modes))

    # -- systems ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def system(self, name: str) -> Iterator[S.System]:
        """Start one system (the upstream is already up), yield it, stop it."""
        work = self.opts.work_dir
        if name == "direct":
            yield self.upstream
            return
        if name == "floor":
            sysm = S.start_floor(self.procs, self.upstream)
        elif name == "gateway":
            extra = ["--workers", str(self.opts.workers)] if self.opts.workers > 1 else None
            sysm = S.start_gateway(self.procs, self.upstream, self.redis.url(0), work, extra=extra)
        elif name == "litellm":
            sysm = S.start_litellm(self.procs, self.upstream, work)
        elif name == "portkey":
            sysm = S.start_portkey(self.procs, self.upstream)
        else:
            raise BenchError(f"unknown system {name}")
        try:
            yield sysm
        finally:
            assert sysm.proc is not None
            self.procs.stop(sysm.proc)

    def run_systems(self) -> None:
        """Throughput and/or streaming, each system in turn."""
        for name in ["direct", "floor", "gateway", *self.opts.peers]:
            self.log(f"== {name}")
            entry: dict[str, Any] = {}
            try:
                with self.system(name) as sysm:
                    entry["description"] = sysm.description
                    if "throughput" in self.opts.modes:
                        entry.update(self.throughput(sysm))
                    if "streaming" in self.opts.modes:
                        entry["streaming"] = self.streaming(sysm)
            except BenchError as exc:
                self.log(f"   {name}: skipped: {str(exc).splitlines()[0]}")
                entry["skipped"] = str(exc)
            self.results["systems"][name] = entry

    # -- throughput -------------------------------------------------------------------------

    def script(self, sysm: S.System, stream: bool, tag: str = "") -> Path:
        path = self.opts.work_dir / f"{sysm.name}{tag}-{'stream' if stream else 'chat'}.lua"
        path.write_text(lua_script(S.CHAT_PATH, sysm.headers, sysm.model, stream))
        return path

    def wrk_run(
        self, sysm: S.System, script: Path, connections: int, duration_s: float
    ) -> WrkResult:
        """One wrk run, with the CPU the system (and, for Flywheel, Redis) used meanwhile."""
        watched = [p for p in (sysm.proc,) if p is not None]
        before = [p.cpu_times() for p in watched]
        redis_before = self.redis.proc.cpu_seconds()
        result = run_wrk(self.wrk, sysm.url, script, connections=connections, duration_s=duration_s)
        if watched and result.requests:
            after = [p.cpu_times() for p in watched]
            user = sum(a[0] - b[0] for a, b in zip(after, before, strict=True))
            system = sum(a[1] - b[1] for a, b in zip(after, before, strict=True))
            n = result.requests
            result.cpu_s = round(user + system, 3)
            result.cpu_us_per_req = round((user + system) / n * 1e6, 1)
            result.user_us_per_req = round(user / n * 1e6, 1)
            result.system_us_per_req = round(system / n * 1e6, 1)
        if sysm.name.startswith("gateway") and result.requests:
            redis_cpu = self.redis.proc.cpu_seconds() - redis_before
            result.redis_cpu_us_per_req = round(redis_cpu / result.requests * 1e6, 1)
        return result

    def throughput(self, sysm: S.System) -> dict[str, Any]:
        o = self.opts
        chat, stream = self.script(sysm, False), self.script(sysm, True)
        self.wrk_run(sysm, chat, o.connections, o.warmup_s)  # warm up; discarded
        out: dict[str, Any] = {}
        for key, script, conns in (
            ("c1", chat, 1),
            (f"c{o.connections}", chat, o.connections),
            (f"stream_c{o.connections}", stream, o.connections),
        ):
            r = self.wrk_run(sysm, script, conns, o.duration_s)
            self.log(
                f"   {key:>12}: {r.rps:9.1f} req/s  p50 {r.p50_ms:7.3f} ms  "
                f"p99 {r.p99_ms:7.3f} ms  cpu/req {r.cpu_us_per_req or 0:7.1f} µs"
                + (f"  errors {r.errors}" if r.errors else "")
            )
            out[key] = r.to_json()
        return out

    def run_paired(self) -> None:
        """The floor and Flywheel side by side: both up, measured in alternation at the
        loaded connections (plain, then streamed; each round's order the reverse of the
        last's), each round's ratios taken from runs seconds apart. On a shared machine
        whose speed drifts by tens of percent within a minute, the ratio of two runs made a
        minute apart (as in the per-system pass) says as much about the drift as about the
        systems; the median of the rounds' ratios is what the targets are judged on."""
        o = self.opts
        kinds = (("plain", False), ("stream", True))
        rounds: dict[str, list[dict[str, Any]]] = {kind: [] for kind, _ in kinds}
        with self.system("floor") as floor, self.system("gateway") as gateway:
            pair = (floor, gateway)
            scripts = {(s.name, st): self.script(s, st, "-paired") for s in pair for _, st in kinds}
            for s in pair:
                for _, st in kinds:
                    self.wrk_run(s, scripts[s.name, st], o.connections, o.warmup_s)
            for rnd in range(o.paired_rounds):
                for kind, st in kinds:
                    runs = {}
                    for s in pair if rnd % 2 == 0 else pair[::-1]:
                        runs[s.name] = self.wrk_run(
                            s, scripts[s.name, st], o.connections, o.paired_s
                        )
                    f, g = runs["floor"], runs["gateway"]
                    entry = {
                        "floor": f.to_json(),
                        "gateway": g.to_json(),
                        "rps_ratio": round(g.rps / f.rps, 4) if f.rps else None,
                        "cpu_ratio": (
                            round(g.cpu_us_per_req / f.cpu_us_per_req, 4)
                            if g.cpu_us_per_req and f.cpu_us_per_req
                            else None
                        ),
                    }
                    rounds[kind].append(entry)
                    self.log(
                        f"   round {rnd + 1} {kind:6}: floor {f.rps:7.0f} req/s "
                        f"{f.cpu_us_per_req or 0:6.1f} µs, gateway {g.rps:7.0f} req/s "
                        f"{g.cpu_us_per_req or 0:6.1f} µs: {entry['rps_ratio']}× req/s, "
                        f"{entry['cpu_ratio']}× CPU"
                    )
        out: dict[str, Any] = {"rounds": o.paired_rounds, "duration_s": o.paired_s}
        for kind, entries in rounds.items():
            out[kind] = {"rounds": entries}
            for name in ("rps_ratio", "cpu_ratio"):
                vals = [e[name] for e in entries if e[name] is not None]
                out[kind][f"{name}_median"] = statistics.median(vals) if vals else None
        self.results["paired"] = out

    # -- streaming --------------------------------------------------------------------------

    def streaming(self, sysm: S.System) -> dict[str, Any]:
        o = self.opts
        r = run_streaming(sysm, ttft_requests=o.ttft_requests, slow_requests=o.slow_requests)
        self.log(
            f"   streaming: TTFT p50 {r.ttft_p50_ms:.3f} ms p99 {r.ttft_p99_ms:.3f} ms; "
            f"slow stream: {r.chunks_per_stream:g} chunks, gaps median {r.gap_median_ms} ms "
            f"min {r.gap_min_ms} max {r.gap_max_ms}" + (f"; errors {r.errors}" if r.errors else "")
        )
        return r.to_json()

    # -- arms -------------------------------------------------------------------------------

    def run_arms(self) -> None:
        """Flywheel with a 2-arm and a 100-arm experiment, measured in alternation."""
        o = self.opts
        gateways: dict[int, S.System] = {}
        rps: dict[int, list[float]] = {n: [] for n in o.arms}
        p50: dict[int, list[float]] = {n: [] for n in o.arms}
        cpu: dict[int, list[float]] = {n: [] for n in o.arms}
        redis_cpu: dict[int, list[float]] = {n: [] for n in o.arms}
        try:
            for db, n in enumerate(o.arms, start=1):
                name = f"gateway-{n}arms"
                gateways[n] = S.start_gateway(
                    self.procs, self.upstream, self.redis.url(db), o.work_dir, arms=n, name=name
                )
            scripts = {n: self.script(g, False) for n, g in gateways.items()}
            for n, g in gateways.items():
                self.wrk_run(g, scripts[n], o.connections, o.warmup_s)
            for rnd in range(o.arms_rounds):
                order = o.arms if rnd % 2 == 0 else tuple(reversed(o.arms))
                for n in order:
                    r = self.wrk_run(gateways[n], scripts[n], o.connections, o.duration_s)
                    rps[n].append(r.rps)
                    p50[n].append(r.p50_ms)
                    cpu[n].append(r.cpu_us_per_req or 0.0)
                    redis_cpu[n].append(r.redis_cpu_us_per_req or 0.0)
                    self.log(
                        f"   {n:>3} arms: {r.rps:9.1f} req/s  p50 {r.p50_ms:.3f} ms  "
                        f"CPU {r.cpu_us_per_req} µs/req, Redis {r.redis_cpu_us_per_req} µs/req"
                    )
            arms_hit = {n: self._arms_hit(db) for db, n in enumerate(o.arms, start=1)}
        finally:
            for g in gateways.values():
                assert g.proc is not None
                self.procs.stop(g.proc)
        base, many = o.arms
        med = {n: statistics.median(v) for n, v in rps.items()}
        self.results["arms"] = {
            str(n): {
                "rps": rps[n],
                "rps_median": med[n],
                "p50_ms": p50[n],
                "cpu_us_per_req": statistics.median(cpu[n]),
                "redis_cpu_us_per_req": statistics.median(redis_cpu[n]),
                "arms_hit": arms_hit[n],
            }
            for n in o.arms
        }
        self.results["arms"]["ratio"] = round(med[many] / med[base], 4)
        # Cost: CPU per request, which other load on the machine skews far less than req/s.
        cost = {n: statistics.median(cpu[n]) for n in o.arms}
        self.results["arms"]["cpu_ratio"] = (
            round(cost[many] / cost[base], 4) if cost[base] else None
        )

    def _arms_hit(self, db: int) -> int:
        """How many arms Redis counted assignments for (every arm should get traffic)."""
        client = redis.Redis.from_url(self.redis.url(db))
        try:
            return len(client.keys(KS.version_users("ab", 1, "*")))
        finally:
            client.close()

    # -- interaction log --------------------------------------------------------------------

    def run_log(self) -> None:
        r = run_log(self.redis.url(3), self.opts.log_records, redis_pid=self.redis.proc.pid)
        self.log(
            f"   {r.records} records in {r.seconds} s: {r.records_per_s:.0f} records/s "
            f"(submit {r.submit_us_per_record} µs/record, writer CPU "
            f"{r.writer_cpu_us_per_record} µs/record, Redis CPU {r.redis_cpu_us_per_record} "
            f"µs/record; {r.written_in_redis} in Redis, {r.dropped:g} dropped)"
        )
        self.results["log"] = r.to_json()

    # -- instructions -----------------------------------------------------------------------

    def run_icount(self) -> None:
        """Instructions per request, plain and streamed, of the floor and Flywheel: the
        cost that does not move with the CPU model or other load (``bench/icount.py``)."""
        o = self.opts
        out: dict[str, Any] = {}
        try:
            for system in ("floor", "gateway"):
                for stream in (False, True):
                    r = icount.measure(
                        system,
                        stream=stream,
                        n=o.icount_requests,
                        concurrency=o.icount_concurrency,
                        warmup=min(200, o.icount_requests),
                        work_dir=o.work_dir / "icount",
                    )
                    kind = "stream" if stream else "plain"
                    out.setdefault(system, {})[kind] = r
                    self.log(
                        f"   {system:8} {kind:6}: {r['instructions_per_request'] / 1000:8.1f} k "
                        f"instructions/request ({r['failed']} failed, {r['seconds']} s)"
                    )
        except BenchError as exc:
            self.log(f"   icount: skipped: {str(exc).splitlines()[0]}")
            out["skipped"] = str(exc)
        self.results["icount"] = out

    # -- all --------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        if {"throughput", "streaming"} & set(self.opts.modes):
            self.run_systems()
        if "throughput" in self.opts.modes and self.opts.paired_rounds:
            self.log(f"== floor and gateway in alternation ({self.opts.paired_rounds} rounds)")
            self.run_paired()
        if "arms" in self.opts.modes:
            self.log(f"== arms: {self.opts.arms[0]} vs {self.opts.arms[1]}")
            self.run_arms()
        if "log" in self.opts.modes:
            self.log("== interaction log writer")
            self.run_log()
        if "icount" in self.opts.modes:
            self.log("== instructions per request (callgrind)")
            self.run_icount()
        self.results["meta"]["loadavg_end"] = os.getloadavg()
        self.results["meta"]["versions"] = self.versions()
        return self.results

    def versions(self) -> dict[str, str]:
        out = {"wrk": "", "redis": ""}
        if self.wrk:
            head = subprocess.run([self.wrk, "-v"], capture_output=True, text=True)
            out["wrk"] = (head.stdout or head.stderr).split("\n")[0]
        rv = subprocess.run(["redis-server", "--version"], capture_output=True, text=True)
        out["redis"] = rv.stdout.strip()
        return out


def run(opts: Options, log: Callable[[str], None] = print) -> dict[str, Any]:
    opts.work_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with Processes(opts.work_dir / "logs") as procs:
        results = Bench(procs, opts, log).run()
    results["meta"]["seconds"] = round(time.monotonic() - t0, 1)
    return results
