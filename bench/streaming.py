"""Streaming as a client sees it, measured with aiohttp: TTFT and the gaps between chunks.

* TTFT: many sequential streamed requests (one connection) to the fast stream; the time
  from sending the request to the first ``data:`` line with content. "Added" is the
  system's median minus the direct upstream's.
* Chunk timing: a few requests to the slow stream (the upstream sends a content chunk
  every ``interval``); the arrival gaps between content chunks should all be ~interval.
  A gateway that buffers shows gaps near 0 followed by one long one.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import asdict, dataclass

import aiohttp
import orjson

from .systems import System


@dataclass
class StreamSample:
    ttft_ms: float
    total_ms: float
    content_times_ms: list[float]  # arrival of each content chunk, from the request's start
    status: int
    error: str | None = None  # the body of a non-200 answer, shortened


@dataclass
class StreamResult:
    """What one system did in the streaming mode; times in milliseconds."""

    ttft_p50_ms: float
    ttft_p99_ms: float
    ttft_samples: int
    gaps_ms: list[float]  # every content-chunk gap of the slow streams
    gap_median_ms: float
    gap_min_ms: float
    gap_max_ms: float
    chunks_per_stream: float
    slow_ttft_ms: float
    errors: int
    first_error: str | None = None

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100])."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def _has_content(line: bytes) -> bool:
    payload = line[5:].strip()
    if payload == b"[DONE]":
        return False
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return False
    for choice in doc.get("choices") or ():
        if (choice.get("delta") or {}).get("content"):
            return True
    return False


async def stream_once(
    session: aiohttp.ClientSession, system: System, *, slow: bool, user: str
) -> StreamSample:
    body = {
        "model": system.slow_model if slow else system.model,
        "messages": [{"role": "user", "content": "hello"}],
        "user": user,
        "stream": True,
    }
    headers = {"Content-Type": "application/json", **system.headers_for(slow)}
    t0 = time.perf_counter()
    times: list[float] = []
    async with session.post(system.url, data=orjson.dumps(body), headers=headers) as resp:
        if resp.status != 200:
            text = (await resp.text())[:200]
            return StreamSample(float("nan"), 0.0, [], resp.status, f"HTTP {resp.status}: {text}")
        async for line in resp.content:
            if line.startswith(b"data:") and _has_content(line):
                times.append((time.perf_counter() - t0) * 1000)
    total = (time.perf_counter() - t0) * 1000
    return StreamSample(times[0] if times else float("nan"), total, times, 200)


async def measure(
    system: System, *, ttft_requests: int, slow_requests: int, warmup: int = 20
) -> StreamResult:
    timeout = aiohttp.ClientTimeout(total=60)
    connector = aiohttp.TCPConnector(limit=1)  # one connection, reused
    errors = 0
    first_error: str | None = None
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        ttfts: list[float] = []
        for i in range(warmup + ttft_requests):
            sample = await stream_once(session, system, slow=False, user=f"u{i}")
            if sample.status != 200 or not sample.content_times_ms:
                errors += 1
                first_error = first_error or sample.error or "no content chunk"
            elif i >= warmup:
                ttfts.append(sample.ttft_ms)
        gaps: list[float] = []
        chunks: list[int] = []
        slow_ttfts: list[float] = []
        for i in range(slow_requests):
            sample = await stream_once(session, system, slow=True, user=f"s{i}")
            if sample.status != 200 or not sample.content_times_ms:
                errors += 1
                first_error = first_error or sample.error or "no content chunk"
                continue
            t = sample.content_times_ms
            gaps += [b - a for a, b in zip(t, t[1:], strict=False)]
            chunks.append(len(t))
            slow_ttfts.append(t[0])
    return StreamResult(
        ttft_p50_ms=round(percentile(ttfts, 50), 3),
        ttft_p99_ms=round(percentile(ttfts, 99), 3),
        ttft_samples=len(ttfts),
        gaps_ms=[round(g, 2) for g in gaps],
        gap_median_ms=round(statistics.median(gaps), 2) if gaps else float("nan"),
        gap_min_ms=round(min(gaps), 2) if gaps else float("nan"),
        gap_max_ms=round(max(gaps), 2) if gaps else float("nan"),
        chunks_per_stream=statistics.mean(chunks) if chunks else 0.0,
        slow_ttft_ms=round(statistics.median(slow_ttfts), 2) if slow_ttfts else float("nan"),
        errors=errors,
        first_error=first_error,
    )


def run_streaming(
    system: System, *, ttft_requests: int, slow_requests: int, warmup: int = 20
) -> StreamResult:
    return asyncio.run(
        measure(system, ttft_requests=ttft_requests, slow_requests=slow_requests, warmup=warmup)
    )
