"""500 concurrent streaming clients: no errors, no memory growth, every interaction logged.

CI runs it for ``FLYWHEEL_SOAK_S`` seconds (default 10); ``bench/soak`` runs the same
test for 5 minutes.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from pathlib import Path

import aiohttp
import orjson
import pytest
import redis

from flywheel_stack import free_port
from gateway.core import keys
from tests.conftest import API_KEY, gateway_config
from tests.faulty_upstream import FaultyUpstream
from tests.services import GatewayProcess, RedisProcess, rss_mb

CLIENTS = 500
SOAK_S = float(os.environ.get("FLYWHEEL_SOAK_S", "10"))
HELLO = [{"role": "user", "content": "hello"}]


async def stream_for(base_url: str, seconds: float) -> tuple[Counter[str], list[str]]:
    """CLIENTS clients, each streaming one request after another for ``seconds``."""
    outcomes: Counter[str] = Counter()
    ids: list[str] = []
    stop = time.monotonic() + seconds
    body = orjson.dumps({"model": "fixed-a", "messages": HELLO, "stream": True})
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=CLIENTS)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:

        async def client() -> None:
            while time.monotonic() < stop:
                try:
                    async with http.post(
                        base_url + "/chat/completions", data=body, headers=headers
                    ) as resp:
                        raw = await resp.read()
                except aiohttp.ClientError as exc:
                    outcomes[f"client error: {type(exc).__name__}"] += 1
                    continue
                events = [ln[6:] for ln in raw.split(b"\n") if ln.startswith(b"data: ")]
                if resp.status != 200 or not events or events[-1] != b"[DONE]":
                    outcomes[f"HTTP {resp.status}: {raw[:200]!r}"] += 1
                    continue
                text = b"".join(
                    (orjson.loads(e)["choices"] or [{}])[0]
                    .get("delta", {})
                    .get("content", "")
                    .encode()
                    for e in events[:-1]
                )
                outcomes["ok" if text == b"answer from fixed-a" else f"wrong: {text!r}"] += 1
                ids.append(orjson.loads(events[0])["id"])

        await asyncio.gather(*(client() for _ in range(CLIENTS)))
    return outcomes, ids


@pytest.mark.slow
def test_500_concurrent_streaming_clients(
    faulty: FaultyUpstream, redis_server: RedisProcess, tmp_path: Path
) -> None:
    cfg = gateway_config(f"http://127.0.0.1:{free_port()}/v1", faulty.base_url, redis_server.url)
    cfg["upstreams"]["faulty"]["timeout_s"] = 60  # 500 clients queue at the stand-in upstream
    gw = GatewayProcess(cfg, tmp_path / "gw").start()
    try:
        assert gw.proc is not None
        warm, _ = asyncio.run(stream_for(gw.base_url, 2))  # pools, caches, the allocator
        assert set(warm) == {"ok"}, warm
        rss = rss_mb(gw.proc.pid)
        outcomes, ids = asyncio.run(stream_for(gw.base_url, SOAK_S))
        grown = rss_mb(gw.proc.pid) - rss
        assert set(outcomes) == {"ok"}, outcomes.most_common(5)
        assert len(ids) == len(set(ids))
        print(f"\n{len(ids)} streams in {SOAK_S:g} s by {CLIENTS} clients, RSS +{grown:.1f} MB")
        assert grown < 40, f"memory grew by {grown:.0f} MB"
        # Every interaction reaches Redis (the writer may still be draining its queue).
        r = redis.Redis.from_url(redis_server.url)
        deadline = time.monotonic() + 30
        missing = ids
        while missing and time.monotonic() < deadline:
            with r.pipeline(transaction=False) as pipe:
                for rid in missing:
                    pipe.exists(keys.interaction(rid))
                missing = [rid for rid, n in zip(missing, pipe.execute(), strict=True) if not n]
            time.sleep(0.2)
        assert not missing, f"{len(missing)} of {len(ids)} interactions not logged"
        assert gw.metric("flywheel_log_dropped_total") == 0
    finally:
        gw.stop()
