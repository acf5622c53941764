"""Budgets under bursts: 50 concurrent requests on a budget of 0.1 at 0.019 an answer.

A real ``gateway serve --workers N`` (1 and 2 workers: two processes, one Redis), the
fixed upstream (every answer uses 3 completion tokens, so it costs the same: 0.019 at
this price) a little slow (0.2 s), so that the 50 requests are in flight together. The
total spent may pass the limit by at most one answer's cost, for plain and streamed
requests, per key and per tenant; without reservations it was 50 answers (0.95).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
import redis.asyncio as aioredis

from gateway.core import keys
from gateway.core.auth import Principal
from gateway.core.config import Budget
from gateway.core.errors import QuotaExceeded
from gateway.serving.metrics import Metrics
from gateway.serving.spend import Spend

from .conftest import ADMIN
from .faulty_upstream import FaultyUpstream
from .fixed_gateway import fixed_config
from .polling import eventually
from .services import GatewayProcess, RedisProcess

BURST_DB = 9
LIMIT = 0.1
COST = 0.019  # 3 completion tokens at the price below
PRICE = {"prompt_per_1m": 0.0, "completion_per_1m": COST * 1e6 / 3}
BURST = 50


@pytest.fixture(scope="module")
def upstream() -> Iterator[FaultyUpstream]:
    up = FaultyUpstream().start()
    yield up
    up.stop()


@pytest.fixture(scope="module", params=[1, 2], ids=["1-worker", "2-workers"])
def gateway(
    request: pytest.FixtureRequest,
    redis_server: RedisProcess,
    upstream: FaultyUpstream,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GatewayProcess]:
    workers: int = request.param
    db = BURST_DB
    redis.Redis(port=redis_server.port, db=db).flushdb()
    url = redis_server.url.rsplit("/", 1)[0] + f"/{db}"
    models = {
        m: {"upstream": "fixed", "model": m, "price": PRICE}
        for m in ("fixed-slow", "http500", "trickle")
    }
    config = fixed_config(upstream.base_url, url, models=models, experiments={})
    gw = GatewayProcess(config, tmp_path_factory.mktemp(f"burst{workers}"), workers=workers)
    gw.start()
    try:
        yield gw
    finally:
        gw.stop()


async def burst(gw: GatewayProcess, key: str, stream: bool) -> list[int]:
    """Send BURST requests at once; the status of each (200: answered, with its [DONE])."""
    body = {"model": "fixed-slow", "messages": [{"role": "user", "content": "hi"}]}
    if stream:
        body["stream"] = True
    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=BURST)
    async with httpx.AsyncClient(base_url=gw.base_url, timeout=30, limits=limits) as client:

        async def one() -> int:
            async with client.stream("POST", "/chat/completions", json=body, headers=headers) as r:
                text = (await r.aread()).decode()
                if r.status_code == 200 and stream:
                    assert "[DONE]" in text
                return r.status_code

        return list(await asyncio.gather(*(one() for _ in range(BURST))))


def key_for(gw: GatewayProcess, name: str, scope: str) -> str:
    tenant = f"{name}-tenant"
    budget = {"limit": LIMIT, "period": "daily"}
    body: dict[str, object] = {"name": name, "tenant": tenant}
    if scope == "key":
        body["budget"] = budget
    else:
        r = httpx.put(f"{gw.url}/admin/tenants/{tenant}", headers=ADMIN, json={"budget": budget})
        assert r.status_code == 200, r.text
    r = httpx.post(gw.url + "/admin/keys", json=body, headers=ADMIN)
    assert r.status_code == 201, r.text
    time.sleep(0.6)  # every worker has loaded the key (control.refresh_s)
    return str(r.json()["key"])


@pytest.mark.slow
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
@pytest.mark.parametrize("scope", ["key", "tenant"])
def test_a_burst_spends_at_most_one_answer_over_the_budget(
    gateway: GatewayProcess, stream: bool, scope: str, tmp_path: Path
) -> None:
    name = f"burst-{gateway.workers}-{scope}-{'s' if stream else 'p'}"
    key = key_for(gateway, name, scope)
    statuses = asyncio.run(burst(gateway, key, stream))
    answered = statuses.count(200)
    assert set(statuses) <= {200, 429}, statuses
    spent = answered * COST
    print(f"{name}: {answered} answered, {spent:.3f} spent of {LIMIT}")
    assert answered >= 1
    assert spent <= LIMIT + COST + 1e-9, f"{answered} answers: {spent:.3f} spent of {LIMIT}"

    # and the budget now refuses (once the burst's last answers are settled), with
    # OpenAI's answer to an exhausted quota
    def refused() -> httpx.Response | None:
        r = httpx.post(
            gateway.base_url + "/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json={"model": "fixed-slow", "messages": [{"role": "user", "content": "hi"}]},
        )
        return r if r.status_code == 429 else None

    r = eventually(refused, "the spent budget refuses", timeout_s=5, every_s=0.1)
    assert r.json()["error"]["code"] == "insufficient_quota"


def holding(redis_server: RedisProcess) -> dict[str, list[bytes]]:
    """Every ledger in the burst database → its live reservations' ids."""
    r = redis.Redis(port=redis_server.port, db=BURST_DB)
    return {
        k.decode(): [f for f in r.hgetall(k) if f != b"dear"]
        for k in r.scan_iter(match="*spend:held:*")
    }


def test_a_request_that_fails_or_is_cancelled_releases_what_it_held(
    gateway: GatewayProcess, redis_server: RedisProcess
) -> None:
    key = key_for(gateway, f"release-{gateway.workers}", "key")
    headers = {"Authorization": f"Bearer {key}"}
    hi = [{"role": "user", "content": "hi"}]
    failed = httpx.post(
        gateway.base_url + "/chat/completions",
        headers=headers,
        json={"model": "http500", "messages": hi},
    )
    assert failed.status_code == 502
    body = {"model": "trickle", "messages": hi, "stream": True}
    with httpx.stream(
        "POST", gateway.base_url + "/chat/completions", headers=headers, json=body
    ) as s:
        assert s.status_code == 200
        chunks = s.iter_raw()
        next(chunks)  # the first chunk; then the client goes away
        assert any(holding(redis_server).values()), "the stream holds nothing while it runs"
    eventually(
        lambda: not any(holding(redis_server).values()),
        "the client's departure releases what the stream held",
        timeout_s=3,
    )


def test_a_reservation_whose_request_died_lapses_at_its_deadline(
    redis_server: RedisProcess,
) -> None:
    """A worker killed mid-request never settles: its reservation stops holding at its
    deadline (300 s by default; 0.5 s here)."""
    url = redis_server.url.rsplit("/", 1)[0] + f"/{BURST_DB}"

    async def scenario() -> None:
        client = aioredis.Redis.from_url(url)
        budget = Budget(limit=1.0, period="daily")
        who = Principal("lapsing", "lapsing-tenant", key_id="key_lapsing", budget=budget)
        try:
            dying = Spend(
                client, Metrics(), ks=keys.PLAIN_KEYSPACE, tenant_budgets=lambda: {}, hold_s=0.5
            )
            assert await dying.admit(who, 0.9, bounded=True) is not None  # then "killed"
            other = Spend(client, Metrics(), ks=keys.PLAIN_KEYSPACE, tenant_budgets=lambda: {})
            with pytest.raises(QuotaExceeded, match="held by requests in flight"):
                await other.admit(who, 0.5, bounded=True)  # 0.9 held + 0.5 > 1.0
            await asyncio.sleep(0.6)  # the behaviour: the hold lapses at its deadline
            hold = await other.admit(who, 0.5, bounded=True)
            assert hold is not None
            other.settle(hold, 0.0)
            await other.close()
        finally:
            await client.aclose()

    asyncio.run(scenario())
