"""What-if experiments: Flywheel with one change applied in-process, measured like the rest.

``python -m bench whatif`` runs the unchanged gateway and variants of it, each started as
``python -m bench.whatif serve --config FILE --port P --patch NAME ...``: the same app
(``gateway.app.serving_app(create_app(...))``) under the same uvicorn settings as
``gateway serve``, with monkeypatches that stand in for a code change. None of them edits
the gateway's files.

Three changes measured here are now part of the gateway (``gateway/app.py``): freezing
the start-up heap from the garbage collector, a higher young-generation threshold, and
serving the chat route without FastAPI's layers (FINDINGS.md has their numbers).

Patches:

* ``no-metrics``   Prometheus updates are no-ops: an upper bound of what metrics cost
* ``no-log``       ``InteractionLog.submit`` is a no-op: an upper bound of the log's cost
  (the writer task, redis-py, and Redis's own CPU on the shared cores)
* ``writer-lua``   the writer sends each batch as ONE ``EVALSHA`` (SET + XADD per record
  and the per-arm HINCRBYs run inside Redis) instead of a pipeline of 2 + k commands
* ``relay-direct`` ``RelayResponse`` streams with one plain asyncio task watching for the
  client's disconnect, instead of Starlette's anyio task group (uvicorn says ASGI 2.3, so
  ``StreamingResponse`` opens a task group per response)
* ``writer-linger`` the writer waits 5 ms after the first record of a batch, so batches
  are bigger (fewer round trips, less per-batch overhead)
* ``stats-1s``     the per-arm counters (``fw:req:*``, ``fw:assign:*``) are summed in
  memory and written at most once a second instead of with every batch

Every variant also counts the time the cyclic garbage collector runs (``gc.callbacks``)
and writes it to ``--gc-stats FILE`` at exit.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from . import systems as S
from .procs import Processes
from .report import fmt, table
from .runner import Bench, Options
from .streaming import run_streaming

# One EVALSHA per batch: ARGV = ttl, min stream id, n, then n × (key, json, id, exp, arm),
# then (hash, field, increment) triples.
WRITE_BATCH_LUA = """
local ttl, minid, n = ARGV[1], ARGV[2], tonumber(ARGV[3])
local i = 4
for _ = 1, n do
  redis.call('SET', ARGV[i], ARGV[i + 1], 'EX', ttl)
  redis.call('XADD', KEYS[1], 'MINID', '~', minid, '*',
             'id', ARGV[i + 2], 'experiment', ARGV[i + 3], 'arm', ARGV[i + 4])
  i = i + 5
end
while i <= #ARGV do
  redis.call('HINCRBY', ARGV[i], ARGV[i + 1], ARGV[i + 2])
  i = i + 3
end
return n
"""

VARIANTS: dict[str, list[str]] = {
    "baseline (gateway as is)": [],
    "no-metrics (upper bound)": ["no-metrics"],
    "no-log (upper bound)": ["no-log"],
    "writer-lua": ["writer-lua"],
    "stats-1s": ["stats-1s"],
    "writer-linger": ["writer-linger"],
    "relay-direct": ["relay-direct"],
    "writer-lua + relay-direct": ["writer-lua", "relay-direct"],
}


# -- the server side ---------------------------------------------------------------------------


class GcTimer:
    """Sums the time the cyclic collector runs, per generation."""

    def __init__(self) -> None:
        self.started = 0.0
        self.seconds = [0.0, 0.0, 0.0]
        self.counts = [0, 0, 0]

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self.started = time.perf_counter()
        else:
            gen = info["generation"]
            self.seconds[gen] += time.perf_counter() - self.started
            self.counts[gen] += 1

    def to_json(self) -> dict[str, Any]:
        return {"seconds": self.seconds, "collections": self.counts}


def disable_metrics() -> None:
    from prometheus_client import metrics as pm

    def noop(self: Any, *args: Any, **kwargs: Any) -> None:
        return None

    class Child:
        inc = dec = set = observe = noop

    child = Child()
    pm.MetricWrapperBase.labels = lambda self, *a, **k: child  # type: ignore[method-assign]
    pm.Counter.inc = noop  # type: ignore[method-assign]
    pm.Gauge.inc = pm.Gauge.dec = pm.Gauge.set = noop  # type: ignore[method-assign]
    pm.Histogram.observe = pm.Summary.observe = noop  # type: ignore[method-assign]


def patch_writer_lua() -> None:
    """``InteractionLog._write`` as one Lua call per batch."""
    from gateway.core import keys
    from gateway.serving.interaction_log import InteractionLog, arm_statistics

    async def _write(self: Any, batch: list[dict[str, Any]]) -> None:
        script = self.__dict__.get("_bench_lua")
        if script is None:
            script = self._bench_lua = self._client.register_script(WRITE_BATCH_LUA)
        oldest_ms = int((time.time() - self._retention_s) * 1000)
        args: list[Any] = [int(self._retention_s), oldest_ms, len(batch)]
        for rec in batch:
            args += [keys.interaction(rec["id"]), keys.encode(rec), rec["id"]]
            args += [rec["experiment"] or "", rec["arm"]]
        for key, fields in arm_statistics(self.ks, batch).items():
            for name, n in fields.items():
                args += [key, name, n]
        await script(keys=[self.ks.interaction_stream], args=args)

    InteractionLog._write = _write  # type: ignore[method-assign]


def patch_stats_interval(interval_s: float = 1.0) -> None:
    """Per-arm counters summed in memory, flushed with the first batch after ``interval_s``.

    (A real change must also flush them in ``stop()`` and keep them across a failed write.)
    """
    from collections import Counter, defaultdict

    from gateway.core import keys
    from gateway.serving.interaction_log import InteractionLog, arm_statistics

    async def _write(self: Any, batch: list[dict[str, Any]]) -> None:
        ttl = int(self._retention_s)
        oldest_ms = int((time.time() - self._retention_s) * 1000)
        pipe = self._client.pipeline(transaction=False)
        for rec in batch:
            pipe.set(keys.interaction(rec["id"]), keys.encode(rec), ex=ttl)
            pipe.xadd(
                self.ks.interaction_stream,
                {"id": rec["id"], "experiment": rec["experiment"] or "", "arm": rec["arm"]},
                minid=oldest_ms,
                approximate=True,
            )
        acc = self.__dict__.setdefault("_bench_acc", defaultdict(Counter))
        for key, fields in arm_statistics(self.ks, batch).items():
            acc[key].update(fields)
        now = time.monotonic()
        if now - self.__dict__.get("_bench_flushed", 0.0) >= interval_s:
            for key, fields in acc.items():
                for name, n in fields.items():
                    pipe.hincrby(key, name, n)
            acc.clear()
            self._bench_flushed = now
        await pipe.execute()

    InteractionLog._write = _write  # type: ignore[method-assign]


def patch_writer_linger(linger_s: float = 0.005) -> None:
    """The writer waits ``linger_s`` after a batch's first record before draining the queue."""
    from gateway.serving.interaction_log import InteractionLog

    start = InteractionLog.start

    def start_lingering(self: Any) -> None:
        queue_get = self._queue.get

        async def get() -> Any:
            item = await queue_get()
            await asyncio.sleep(linger_s)
            return item

        self._queue.get = get
        start(self)

    InteractionLog.start = start_lingering  # type: ignore[method-assign]


def patch_relay_direct() -> None:
    """``RelayResponse`` without Starlette's per-response anyio task group."""
    from gateway.serving.relay import RelayResponse

    async def call(self: Any, scope: Any, receive: Any, send: Any) -> None:
        relay_task = asyncio.current_task()
        assert relay_task is not None
        gone = False

        async def watch() -> None:
            nonlocal gone
            while (await receive())["type"] != "http.disconnect":
                pass
            gone = True
            relay_task.cancel()

        watcher = asyncio.get_running_loop().create_task(watch())
        try:
            start = {"type": "http.response.start", "status": self.status_code}
            await send({**start, "headers": self.raw_headers})
            async for chunk in self.body_iterator:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not gone:
                raise
            relay_task.uncancel()
        finally:
            watcher.cancel()
            await self._relay.aclose()
            await self._abandon()

    RelayResponse.__call__ = call  # type: ignore[method-assign]


def apply_writer_patches(patches: list[str]) -> None:
    if "writer-lua" in patches:
        patch_writer_lua()
    if "stats-1s" in patches:
        patch_stats_interval()
    if "writer-linger" in patches:
        patch_writer_linger()


def serve(config: str, port: int, patches: list[str], gc_stats: Path | None) -> None:
    import uvicorn

    from gateway.app import create_app, serving_app
    from gateway.core.config import load_settings
    from gateway.serving.interaction_log import InteractionLog

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if "no-metrics" in patches:
        disable_metrics()
    if "no-log" in patches:
        InteractionLog.submit = lambda self, record: None  # type: ignore[method-assign]
    apply_writer_patches(patches)
    if "relay-direct" in patches:
        patch_relay_direct()
    app = create_app(load_settings(config))
    asgi: Any = serving_app(app)
    timer = GcTimer()
    gc.callbacks.append(timer)
    logging.getLogger("bench.whatif").info(
        "patches: %s; %d objects frozen", patches or "none", gc.get_freeze_count()
    )
    # uvicorn re-raises the SIGTERM it handled once it has shut down: make that an exit
    # that unwinds, so the GC numbers below get written.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    try:
        uvicorn.run(asgi, host="127.0.0.1", port=port, log_level="info", access_log=False)
    finally:
        if gc_stats is not None:
            gc_stats.write_text(json.dumps(timer.to_json()))


# -- the driver ----------------------------------------------------------------------------------


def measure_variant(
    bench: Bench,
    name: str,
    patches: list[str],
    duration_s: float,
    index: int,
    arms: int,
    stream: bool = False,
) -> dict[str, Any]:
    """Start the variant, load it (non-streaming, or streaming with ``stream``), stop it."""
    o = bench.opts
    stats_path = o.work_dir / f"whatif-{index}.gc.json"
    extra = [f"--gc-stats={stats_path}", *(f"--patch={p}" for p in patches)]
    gw = S.start_gateway(
        bench.procs,
        bench.upstream,
        bench.redis.url(4),
        o.work_dir,
        arms=arms,
        name=f"whatif-{index}",
        serve=[sys.executable, "-m", "bench.whatif", "serve"],
        extra=extra,
    )
    script = bench.script(gw, stream)
    requests = 0
    ttft = None
    try:
        requests += bench.wrk_run(gw, script, o.connections, o.warmup_s).requests
        one = bench.wrk_run(gw, script, 1, duration_s / 2)
        many = [bench.wrk_run(gw, script, o.connections, duration_s) for _ in range(2)]
        requests += one.requests + sum(r.requests for r in many)
        if stream:
            ttft = run_streaming(gw, ttft_requests=300, slow_requests=0).ttft_p50_ms
            requests += 320
    finally:
        assert gw.proc is not None
        bench.procs.stop(gw.proc)
    gc_doc = json.loads(stats_path.read_text()) if stats_path.exists() else None
    gc_us = sum(gc_doc["seconds"]) / requests * 1e6 if gc_doc and requests else None
    out = {
        "patches": patches,
        "rps": statistics.median(r.rps for r in many),
        "rps_runs": [r.rps for r in many],
        "cpu_us_per_req": statistics.median(r.cpu_us_per_req or 0 for r in many),
        "c1_p50_ms": one.p50_ms,
        "c1_p99_ms": one.p99_ms,
        "gc_us_per_req": gc_us,
        "gc": gc_doc,
        "ttft_p50_ms": ttft,
    }
    bench.log(
        f"   {name}: {out['rps']:,.0f} req/s, {out['cpu_us_per_req']:.0f} µs CPU/req, "
        f"1-conn p50 {one.p50_ms:.3f} ms p99 {one.p99_ms:.3f} ms, "
        f"GC {fmt(gc_us, '.0f')} µs/req" + (f", TTFT p50 {ttft:.3f} ms" if stream else "")
    )
    return out


def run_whatif(
    opts: Options, variants: list[str], arms: int = 2, stream: bool = False
) -> dict[str, Any]:
    opts.work_dir.mkdir(parents=True, exist_ok=True)
    with Processes(opts.work_dir / "logs") as procs:
        bench = Bench(procs, opts, print)
        direct = bench.wrk_run(bench.upstream, bench.script(bench.upstream, stream), 1, 3)
        results: dict[str, Any] = {
            "direct_c1_p50_ms": direct.p50_ms,
            "direct_ttft_p50_ms": (
                run_streaming(bench.upstream, ttft_requests=300, slow_requests=0).ttft_p50_ms
                if stream
                else None
            ),
            "arms": arms,
            "stream": stream,
            "variants": {},
        }
        for i, name in enumerate(variants):
            results["variants"][name] = measure_variant(
                bench, name, VARIANTS[name], opts.duration_s, i, arms, stream
            )
    results["meta"] = bench.results["meta"]
    return results


def render(results: dict[str, Any]) -> str:
    variants = results["variants"]
    base = next(iter(variants.values()))
    direct = results["direct_c1_p50_ms"]
    rows = []
    for name, v in variants.items():
        rows.append(
            [
                name,
                f"{v['rps']:,.0f}",
                f"{v['rps'] / base['rps'] - 1:+.0%}",
                f"{v['cpu_us_per_req']:.0f}",
                fmt(v["gc_us_per_req"], ".0f"),
                f"{v['c1_p50_ms'] - direct:+.3f}",
                f"{v['c1_p99_ms']:.3f}",
            ]
        )
        if results.get("stream"):
            rows[-1].append(f"{v['ttft_p50_ms'] - results['direct_ttft_p50_ms']:+.3f}")
    kind = "stream " if results.get("stream") else ""
    header = [
        "variant",
        f"{kind}req/s (32 conn)",
        "vs baseline",
        "CPU µs/req",
        "GC µs/req",
        "p50 added (1 conn)",
        "p99 ms (1 conn)",
    ]
    if results.get("stream"):
        header.append("TTFT added (p50)")
    return table(header, rows)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.whatif", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="serve the gateway with patches (started by the driver)")
    s.add_argument("--config", required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--patch", action="append", default=[])
    s.add_argument("--gc-stats", type=Path, default=None)
    w = sub.add_parser("logwriter", help="the log-writer benchmark with writer patches (JSON)")
    w.add_argument("--redis", required=True)
    w.add_argument("--records", type=int, default=50_000)
    w.add_argument("--arms", type=int, default=2)
    w.add_argument("--patch", action="append", default=[])
    args = p.parse_args(argv)
    if args.command == "serve":
        serve(args.config, args.port, args.patch, args.gc_stats)
    else:
        from .logwriter import run_log

        apply_writer_patches(args.patch)
        print(json.dumps(run_log(args.redis, args.records, arms=args.arms).to_json()))


if __name__ == "__main__":
    main()
