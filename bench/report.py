"""Turning results into Markdown tables and a list of targets met or missed."""

from __future__ import annotations

import math
from typing import Any

Row = list[str]


def table(header: Row, rows: list[Row]) -> str:
    """A Markdown table, columns padded for reading in a terminal too."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Row) -> str:
        padded = [
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    sep = "|" + "|".join("-" * (w + 1) + (":" if i else "-") for i, w in enumerate(widths)) + "|"
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


def fmt(x: float | None, spec: str = ".2f", suffix: str = "") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return format(x, spec) + suffix


def _get(d: dict[str, Any], *path: str) -> Any:
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d


def throughput_table(res: dict[str, Any]) -> str | None:
    systems = res.get("systems", {})
    conns = res["meta"]["options"]["connections"]
    c, s = f"c{conns}", f"stream_c{conns}"
    direct = systems.get("direct", {})
    if "c1" not in direct:
        return None
    header = [
        "system",
        "p50 ms (1 conn)",
        "p99 ms (1 conn)",
        "p50 added",
        "p99 added",
        f"req/s ({conns} conn)",
        f"p50 / p99 ms ({conns} conn)",
        "CPU µs/req",
        f"stream req/s ({conns} conn)",
        "errors",
    ]
    rows = []
    for name, e in systems.items():
        if "c1" not in e:
            rows.append([name, *(["–"] * 8), "skipped"])
            continue
        one, many, st = e["c1"], e[c], e[s]
        errors = sum(one["errors"].values()) + sum(many["errors"].values())
        stream_err = sum(st["errors"].values())
        added = name != "direct"
        rows.append(
            [
                name,
                fmt(one["p50_ms"], ".3f"),
                fmt(one["p99_ms"], ".3f"),
                fmt(one["p50_ms"] - direct["c1"]["p50_ms"], "+.3f") if added else "–",
                fmt(one["p99_ms"] - direct["c1"]["p99_ms"], "+.3f") if added else "–",
                fmt(many["rps"], ",.0f"),
                f"{fmt(many['p50_ms'])} / {fmt(many['p99_ms'])}",
                fmt(many["cpu_us_per_req"], ".0f"),
                fmt(st["rps"], ",.0f") + (" (all failed)" if stream_err >= st["requests"] else ""),
                str(errors + stream_err) if errors + stream_err else "0",
            ]
        )
    return table(header, rows)


def cost_table(res: dict[str, Any]) -> str | None:
    """CPU time (user + system, at the wrk run's connections) and instructions (callgrind)
    per request and per stream, each with its ratio to the floor's in the same run: the
    numbers that compare across machines are the ratios."""
    systems = res.get("systems", {})
    counts = res.get("icount") or {}
    conns = res["meta"]["options"]["connections"]
    kinds = (("plain", f"c{conns}"), ("stream", f"stream_c{conns}"))
    floor = systems.get("floor", {})
    if not any(key in floor for _, key in kinds) and "floor" not in counts:
        return None

    def ins(name: str, kind: str) -> float | None:
        r = _get(counts, name, kind)
        return r["instructions_per_request"] if r else None

    def ratio(x: float | None, base: float | None) -> str:
        return fmt(x / base if x is not None and base else None, ".2f", "×")

    rows = []
    for kind, key in kinds:
        base_cpu = _get(floor, key, "cpu_us_per_req")
        base_ins = ins("floor", kind)
        for name, e in systems.items():
            if name == "direct":
                continue
            run = e.get(key) or {}
            cpu, count = run.get("cpu_us_per_req"), ins(name, kind)
            if cpu is None and count is None:
                continue
            rows.append(
                [
                    name,
                    kind,
                    fmt(cpu, ".0f"),
                    fmt(run.get("user_us_per_req"), ".0f"),
                    fmt(run.get("system_us_per_req"), ".0f"),
                    ratio(cpu, base_cpu),
                    fmt(None if count is None else count / 1000, ",.0f"),
                    ratio(count, base_ins),
                ]
            )
    header = [
        "system",
        "request",
        f"CPU µs/req ({conns} conn)",
        "user µs",
        "system µs",
        "CPU × floor",
        "k instructions/req",
        "instructions × floor",
    ]
    return table(header, rows)


def ratios(res: dict[str, Any]) -> list[str]:
    """Flywheel against the floor and each peer: req/s ratio and added-latency ratio."""
    systems = res.get("systems", {})
    conns = res["meta"]["options"]["connections"]
    gw, direct = systems.get("gateway", {}), systems.get("direct", {})
    if "c1" not in gw or "c1" not in direct:
        return []
    gw_added = gw["c1"]["p50_ms"] - direct["c1"]["p50_ms"]
    out = []
    for name, e in systems.items():
        if name in ("gateway", "direct") or "c1" not in e:
            continue
        added = e["c1"]["p50_ms"] - direct["c1"]["p50_ms"]
        theirs = e[f"c{conns}"]["rps"]
        rps = fmt(gw[f"c{conns}"]["rps"] / theirs if theirs else None)
        if name == "floor":
            factor = fmt(gw_added / added if added > 0 else None, ".1f")
            out.append(
                f"gateway vs floor: {rps}× the floor's req/s at {conns} connections; "
                f"p50 added {gw_added:.3f} ms vs {added:.3f} ms ({factor}× the floor's)"
            )
        else:
            factor = fmt(added / gw_added if gw_added > 0 else None, ".1f")
            out.append(
                f"gateway vs {name}: {rps}× its req/s at {conns} connections; "
                f"p50 added {gw_added:.3f} ms vs {added:.3f} ms ({factor}× less added)"
            )
    return out


def streaming_table(res: dict[str, Any]) -> str | None:
    systems = res.get("systems", {})
    direct = _get(systems, "direct", "streaming")
    if not direct:
        return None
    interval = res["meta"]["options"]["slow_interval_ms"]
    header = [
        "system",
        "TTFT p50 ms",
        "TTFT p99 ms",
        "TTFT added (p50)",
        f"chunks/stream ({interval:g} ms apart)",
        "gap median ms",
        "gap min ms",
        "gap max ms",
        "errors",
    ]
    rows = []
    for name, e in systems.items():
        st = e.get("streaming")
        if not st:
            continue
        added = name != "direct"
        rows.append(
            [
                name,
                fmt(st["ttft_p50_ms"], ".3f"),
                fmt(st["ttft_p99_ms"], ".3f"),
                fmt(st["ttft_p50_ms"] - direct["ttft_p50_ms"], "+.3f") if added else "–",
                fmt(st["chunks_per_stream"], "g"),
                fmt(st["gap_median_ms"], ".1f"),
                fmt(st["gap_min_ms"], ".1f"),
                fmt(st["gap_max_ms"], ".1f"),
                str(st["errors"]),
            ]
        )
    notes = [
        f"{name}: {e['streaming']['errors']} failed streams, first: {e['streaming']['first_error']}"
        for name, e in systems.items()
        if e.get("streaming") and e["streaming"].get("first_error")
    ]
    return "\n\n".join([table(header, rows), *notes])


def arms_table(res: dict[str, Any]) -> str | None:
    arms = res.get("arms")
    if not arms:
        return None
    rows = []
    for n, a in arms.items():
        if not isinstance(a, dict):
            continue
        runs = ", ".join(f"{x:,.0f}" for x in a["rps"])
        p50 = ", ".join(f"{x:.2f}" for x in a["p50_ms"])
        rows.append(
            [
                n,
                runs,
                f"{a['rps_median']:,.0f}",
                p50,
                fmt(a.get("cpu_us_per_req"), ".0f"),
                fmt(a.get("redis_cpu_us_per_req"), ".0f"),
                str(a["arms_hit"]),
            ]
        )
    conns = res["meta"]["options"]["connections"]
    header = [
        "arms",
        f"req/s ({conns} conn), each round",
        "median",
        "p50 ms",
        "gateway CPU µs/req",
        "Redis CPU µs/req",
        "arms that got traffic",
    ]
    return table(header, rows) + (
        f"\n\n100-arm / 2-arm: req/s {arms['ratio']:.3f}, "
        f"gateway CPU per request {fmt(arms.get('cpu_ratio'), '.3f')}"
    )


def log_line(res: dict[str, Any]) -> str | None:
    lg = res.get("log")
    if not lg:
        return None
    return (
        f"interaction-log writer: {lg['records']:,} records in {lg['seconds']} s = "
        f"{lg['records_per_s']:,.0f} records/s into Redis (batch {lg['batch_size']}; "
        f"{lg['written_in_redis']:,} in the stream, {lg['dropped']:g} dropped); "
        f"submit() costs {lg['submit_us_per_record']} µs per record on the request path; "
        f"CPU per record: writer process {lg['writer_cpu_us_per_record']} µs, "
        f"Redis {fmt(lg.get('redis_cpu_us_per_record'), '.2f')} µs"
    )


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    """The gateway's performance targets, each with the measured value and whether it is met."""
    out: list[dict[str, Any]] = []
    systems = res.get("systems", {})
    opts = res["meta"]["options"]
    gw, direct = systems.get("gateway", {}), systems.get("direct", {})

    def add(name: str, goal: str, value: float | None, ok: bool | None, shown: str) -> None:
        out.append({"target": name, "goal": goal, "measured": value, "shown": shown, "met": ok})

    conns = opts["connections"]
    floor = systems.get("floor", {})
    c, sc = f"c{conns}", f"stream_c{conns}"
    # Throughput and CPU are judged against the floor measured in the same run: on a
    # shared machine only ratios taken side by side mean anything. With the paired rounds
    # (floor and Flywheel in alternation, seconds apart), the median of their ratios.
    paired = res.get("paired") or {}
    for kind, key, what, rps_name, cpu_goal in (
        ("plain", c, "CPU per request", f"req/s at {conns} connections", 2.0),
        ("stream", sc, "CPU per streamed request", f"streams/s at {conns} connections", 2.5),
    ):
        pk = paired.get(kind) or {}
        if pk.get("rps_ratio_median") is not None and pk.get("cpu_ratio_median") is not None:
            rps, cpu = pk["rps_ratio_median"], pk["cpu_ratio_median"]
            rps_shown, cpu_shown = _paired_shown(pk, "rps_ratio"), _paired_shown(pk, "cpu_ratio")
        elif key in gw and key in floor:
            rps = gw[key]["rps"] / floor[key]["rps"]
            cpu = gw[key]["cpu_us_per_req"] / floor[key]["cpu_us_per_req"]
            rps_shown, cpu_shown = f"{rps:.2f}×", f"{cpu:.2f}×"
        else:
            continue
        add(rps_name, "≥ 0.5× the floor's", rps, rps >= 0.5, rps_shown)
        add(what, f"≤ {cpu_goal:g}× the floor's", cpu, cpu <= cpu_goal, cpu_shown)
    counts = res.get("icount") or {}
    for kind, goal, name in (
        ("plain", 2.0, "instructions per request"),
        ("stream", 2.5, "instructions per streamed request"),
    ):
        g, f = _get(counts, "gateway", kind), _get(counts, "floor", kind)
        if g and f:
            r = g["instructions_per_request"] / f["instructions_per_request"]
            add(name, f"≤ {goal:g}× the floor's", r, r <= goal, f"{r:.2f}×")
    if "c1" in gw and "c1" in direct:
        p50 = gw["c1"]["p50_ms"] - direct["c1"]["p50_ms"]
        add("p50 added, 1 connection", "≤ 0.4 ms", p50, p50 <= 0.4, f"{p50:.3f} ms")
        p99 = gw["c1"]["p99_ms"] - direct["c1"]["p99_ms"]
        add("p99 added, 1 connection", "≤ 1.5 ms", p99, p99 <= 1.5, f"{p99:.3f} ms")
    gs, ds = _get(gw, "streaming"), _get(direct, "streaming")
    if gs and ds:
        ttft = gs["ttft_p50_ms"] - ds["ttft_p50_ms"]
        add("streaming TTFT added (p50)", "≤ 0.6 ms", ttft, ttft <= 0.6, f"{ttft:.3f} ms")
        interval = opts["slow_interval_ms"]
        med, lo = gs["gap_median_ms"], gs["gap_min_ms"]
        ok = (not math.isnan(med)) and abs(med - interval) <= 0.1 * interval and lo >= interval / 2
        add(
            "chunks relayed as they arrive",
            f"gaps ≈ {interval:g} ms",
            med,
            ok,
            f"median {med} ms, min {lo} ms, max {gs['gap_max_ms']} ms",
        )
    arms = res.get("arms")
    if arms and arms.get("cpu_ratio"):
        cost, ratio = arms["cpu_ratio"], arms["ratio"]
        add(
            "100 arms vs 2 arms: CPU per request",
            "within 5%",
            cost,
            cost <= 1.05,
            f"{cost:.3f}× (req/s {ratio:.3f}×)",
        )
    lg = res.get("log")
    if lg:
        r = lg["records_per_s"]
        add("interaction-log writer", "≥ 10,000 records/s", r, r >= 10_000, f"{r:,.0f}/s")
    return out


def _paired_shown(kind: dict[str, Any], name: str) -> str:
    """A paired median as shown: the median, then the rounds' range."""
    vals = [e[name] for e in kind["rounds"] if e[name] is not None]
    return (
        f"{kind[f'{name}_median']:.2f}× (median of {len(vals)} paired rounds, "
        f"{min(vals):.2f}–{max(vals):.2f}×)"
    )


def paired_table(res: dict[str, Any]) -> str | None:
    """Each paired round: the floor's and Flywheel's req/s and CPU, and their ratios."""
    paired = res.get("paired")
    if not paired:
        return None
    rows = []
    for kind in ("plain", "stream"):
        for i, e in enumerate(paired[kind]["rounds"], 1):
            f, g = e["floor"], e["gateway"]
            rows.append(
                [
                    kind,
                    str(i),
                    fmt(f["rps"], ",.0f"),
                    fmt(g["rps"], ",.0f"),
                    fmt(e["rps_ratio"], ".2f", "×"),
                    fmt(f["cpu_us_per_req"], ".0f"),
                    fmt(g["cpu_us_per_req"], ".0f"),
                    fmt(e["cpu_ratio"], ".2f", "×"),
                ]
            )
        k = paired[kind]
        rows.append(
            [
                kind,
                "median",
                "",
                "",
                fmt(k["rps_ratio_median"], ".2f", "×"),
                "",
                "",
                fmt(k["cpu_ratio_median"], ".2f", "×"),
            ]
        )
    header = [
        "request",
        "round",
        "floor req/s",
        "gateway req/s",
        "req/s × floor",
        "floor CPU µs",
        "gateway CPU µs",
        "CPU × floor",
    ]
    return table(header, rows)


def targets_table(items: list[dict[str, Any]]) -> str:
    rows = [[t["target"], t["goal"], t["shown"], "met" if t["met"] else "MISSED"] for t in items]
    return table(["target (Flywheel, 1 worker)", "goal", "measured", ""], rows)


def render(res: dict[str, Any]) -> str:
    meta = res["meta"]
    parts = [
        f"Flywheel gateway benchmark — {meta['date']}, {meta['nproc']} CPUs ({meta['cpu']}), "
        f"load average at start {meta['loadavg_start'][0]:.2f}, at end "
        f"{meta.get('loadavg_end', [float('nan')])[0]:.2f}",
    ]
    if t := throughput_table(res):
        o = meta["options"]
        parts += [
            f"Non-streaming, wrk, {o['duration_s']:g} s per run (added = minus direct)",
            t,
            "\n".join(ratios(res)),
        ]
    if t := cost_table(res):
        parts += ["Cost per request beside the floor (CPU from /proc; instructions: callgrind)", t]
    if t := paired_table(res):
        p = res["paired"]
        parts += [
            f"The floor and Flywheel in alternation ({p['rounds']} rounds of {p['duration_s']:g} s "
            f"each, {res['meta']['options']['connections']} connections; each round's order "
            "the reverse of the last's): the targets below take the median ratio",
            t,
        ]
    if t := streaming_table(res):
        parts += ["Streaming (aiohttp client, one connection)", t]
    if t := arms_table(res):
        parts += ["A/B arms (Flywheel)", t]
    if line := log_line(res):
        parts.append(line)
    # (The load at the end includes the benchmark's own processes; only the start tells.)
    if meta["loadavg_start"][0] > 0.5 * (meta["nproc"] or 1):
        parts.append(
            "WARNING: the machine was busy before the start (load average above half its "
            "CPUs): "
            "latencies and req/s are skewed; CPU µs/req less so"
        )
    items = targets(res)
    res["targets"] = items
    if items:
        parts += ["Targets", targets_table(items)]
    return "\n\n".join(p for p in parts if p)
