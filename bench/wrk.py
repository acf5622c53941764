"""Driving wrk: a generated Lua script POSTs chat bodies and prints its result as JSON."""

from __future__ import annotations

import json
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .procs import BenchError

USERS = 1000  # distinct ``user`` values, so A/B assignment sees many users


@dataclass
class WrkResult:
    """One wrk run; latencies in milliseconds."""

    connections: int
    duration_s: float
    requests: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    errors: dict[str, int] = field(default_factory=dict)  # socket errors and non-2xx/3xx
    cpu_s: float | None = None  # CPU the system under test used during the run
    cpu_us_per_req: float | None = None  # user + system
    user_us_per_req: float | None = None
    system_us_per_req: float | None = None  # the kernel's share: system calls, wake-ups
    redis_cpu_us_per_req: float | None = None  # Flywheel only: its interaction-log writes

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


def _lua_string(s: str) -> str:
    level = "=" * 3
    while f"]{level}]" in s:
        level += "="
    return f"[{level}[{s}]{level}]"


def lua_script(path: str, headers: dict[str, str], model: str, stream: bool) -> str:
    """A wrk script that cycles through USERS prebuilt requests (one per ``user``)."""
    stream_field = '"stream":true,' if stream else ""
    prefix = (
        f'{{"model":{json.dumps(model)},{stream_field}'
        '"messages":[{"role":"user","content":"hello"}],"user":"u'
    )
    header_lines = "\n".join(
        f"  [ {_lua_string(k)} ] = {_lua_string(v)}," for k, v in headers.items()
    )
    return f"""
local path = {_lua_string(path)}
local headers = {{
  ["Content-Type"] = "application/json",
{header_lines}
}}
local prefix = {_lua_string(prefix)}
local users = {USERS}
local prepared = {{}}
local n = 0

function init(args)
  for u = 1, users do
    prepared[u] = wrk.format("POST", path, headers, prefix .. u .. '"}}')
  end
end

function request()
  n = n % users + 1
  return prepared[n]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {{"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d,"p50":%d,"p90":%d,"p99":%d,"mean":%f,"max":%d}}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.mean, latency.max))
end
"""


def run_wrk(
    wrk: str,
    url: str,
    script: Path,
    *,
    connections: int,
    duration_s: float,
    threads: int = 1,
    timeout_s: float = 10.0,
) -> WrkResult:
    """Run wrk once and parse the JSON line the script prints."""
    argv = [
        wrk,
        f"-t{min(threads, connections)}",
        f"-c{connections}",
        f"-d{max(1, round(duration_s))}s",
        f"--timeout={timeout_s:g}s",
        "-s",
        str(script),
        url,
    ]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + 60)
    line = next((x for x in out.stdout.splitlines() if x.startswith("WRK_JSON ")), None)
    if out.returncode != 0 or line is None:
        raise BenchError(f"wrk failed ({out.returncode}): {out.stdout}\n{out.stderr}")
    d = json.loads(line[len("WRK_JSON ") :])
    duration = d["duration_us"] / 1e6
    errors = {k: int(d[k]) for k in ("connect", "read", "write", "status", "timeout") if d[k]}
    return WrkResult(
        connections=connections,
        duration_s=round(duration, 3),
        requests=int(d["requests"]),
        rps=round(d["requests"] / duration, 1) if duration else 0.0,
        p50_ms=d["p50"] / 1000,
        p90_ms=d["p90"] / 1000,
        p99_ms=d["p99"] / 1000,
        mean_ms=round(d["mean"] / 1000, 3),
        max_ms=d["max"] / 1000,
        errors=errors,
    )
