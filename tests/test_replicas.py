"""Replicas: least-outstanding choice, circuit breakers, DNS discovery, adapter listing."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

from gateway.core.config import BreakerConfig, Upstream
from gateway.serving.replicas import CLOSED, HALF_OPEN, OPEN, Breaker, NoReplica, Pool

from .conftest import API_KEY, gateway_config
from .faulty_upstream import FaultyUpstream
from .services import GatewayProcess, RedisProcess


def test_breaker_opens_after_n_failures_then_lets_one_probe_through() -> None:
    b = Breaker(BreakerConfig(failures=3, open_s=10))
    for _ in range(2):
        b.failure(now=0)
    assert b.state == CLOSED and b.available(0)
    b.failure(now=0)
    assert b.state == OPEN and not b.available(5)
    assert b.available(10)  # the wait is over: one probe may go
    b.acquire(10)
    assert b.state == HALF_OPEN and not b.available(10)  # only one probe at a time
    b.failure(now=10)
    assert b.state == OPEN and not b.available(19) and b.available(20)
    b.acquire(20)
    b.success()
    assert b.state == CLOSED and b.failures == 0


def test_a_success_resets_the_count_of_consecutive_failures() -> None:
    b = Breaker(BreakerConfig(failures=3, open_s=10))
    b.failure(now=0)
    b.failure(now=0)
    b.success()
    b.failure(now=0)
    b.failure(now=0)
    assert b.state == CLOSED


def pool(*urls: str, failures: int = 2) -> Pool:
    return Pool(
        "up", Upstream(kind="vllm", base_urls=list(urls), breaker=BreakerConfig(failures=failures))
    )


def test_pick_prefers_the_replica_with_fewest_outstanding_requests() -> None:
    p = pool("http://a/v1", "http://b/v1", "http://c/v1")
    a, b, c = p.replicas
    a.outstanding, b.outstanding, c.outstanding = 4, 1, 2
    assert {p.pick("m").url for _ in range(20)} == {"http://b/v1"}
    b.outstanding = 9
    assert {p.pick("m").url for _ in range(20)} == {"http://c/v1"}


def test_pick_skips_open_circuits_and_says_so_when_none_is_left() -> None:
    p = pool("http://a/v1", "http://b/v1")
    a, b = p.replicas
    a.breaker.failure(time.monotonic())
    a.breaker.failure(time.monotonic())
    assert {p.pick("m").url for _ in range(10)} == {"http://b/v1"}
    b.breaker.failure(time.monotonic())
    b.breaker.failure(time.monotonic())
    with pytest.raises(NoReplica, match="circuit of upstream 'up' is open"):
        p.pick("m")
    assert p.states() == {CLOSED: 0, OPEN: 2, HALF_OPEN: 0}


def test_an_adapter_goes_only_to_replicas_that_list_it() -> None:
    p = pool("http://a/v1", "http://b/v1")
    a, b = p.replicas
    a.models, b.models = frozenset({"base", "v2"}), frozenset({"base"})  # b restarted
    assert {p.pick("v2", listed=True).url for _ in range(10)} == {"http://a/v1"}
    assert {p.pick("base").url for _ in range(20)} == {"http://a/v1", "http://b/v1"}
    a.models = frozenset({"base"})
    with pytest.raises(NoReplica, match="no replica of upstream 'up' has model 'v2' loaded"):
        p.pick("v2", listed=True)


async def test_dns_replicas_become_one_replica_per_address() -> None:
    up = Upstream(kind="vllm", base_url="http://localhost:8001/v1", dns_replicas=True)
    p = Pool("up", up)
    first = p.replicas[0]
    await p.discover()
    urls = [r.url for r in p.replicas]
    assert "http://127.0.0.1:8001/v1" in urls
    assert all(u.startswith("http://") and u.endswith(":8001/v1") for u in urls)
    kept = p.replicas[0]
    kept.outstanding = 3
    await p.discover()  # a replica that stays keeps its state
    assert p.replicas[0] is kept and kept.outstanding == 3 and first not in p.replicas


@pytest.mark.slow
def test_requests_go_to_the_replica_with_fewer_outstanding(
    faulty: FaultyUpstream, redis_server: RedisProcess, tmp_path: Path
) -> None:
    """Two real replicas: while one holds a long stream, quick requests go to the other."""
    second = FaultyUpstream().start()
    cfg = gateway_config("http://127.0.0.1:9/v1", faulty.base_url, redis_server.url)
    cfg["upstreams"]["pair"] = {"kind": "vllm", "base_urls": [faulty.base_url, second.base_url]}
    cfg["models"].update(
        {
            "pair-endless": {"upstream": "pair", "model": "endless"},
            "pair-fixed": {"upstream": "pair", "model": "fixed-a"},
        }
    )
    cfg["experiments"] = {}
    gw = GatewayProcess(cfg, tmp_path / "gw").start()
    auth = {"Authorization": f"Bearer {API_KEY}"}
    hello = [{"role": "user", "content": "hi"}]
    stop = threading.Event()
    try:
        with httpx.Client(timeout=10) as c:
            before = (faulty.requests, second.requests)

            def hold() -> None:
                with c.stream(
                    "POST",
                    gw.base_url + "/chat/completions",
                    headers=auth,
                    json={"model": "pair-endless", "messages": hello, "stream": True},
                ) as resp:
                    for _ in resp.iter_lines():
                        if stop.is_set():
                            return

            holder = threading.Thread(target=hold)
            holder.start()
            deadline = time.monotonic() + 5
            while (faulty.requests, second.requests) == before:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            busy_first = faulty.requests > before[0]
            mid = (faulty.requests, second.requests)
            for _ in range(20):
                resp = c.post(
                    gw.base_url + "/chat/completions",
                    headers=auth,
                    json={"model": "pair-fixed", "messages": hello},
                )
                assert resp.status_code == 200
            stop.set()
            holder.join(5)
        got = (faulty.requests - mid[0], second.requests - mid[1])
        assert got == ((0, 20) if busy_first else (20, 0))
    finally:
        stop.set()
        gw.stop()
        second.stop()
