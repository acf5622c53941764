"""What keys, tenancy and budgets cost a request: CPU µs of the gateway's process.

``python -m bench.keys [--redis URL] [-n N]``

A focused micro-benchmark (the full ``bench/run`` is too noisy on a shared machine to
resolve a few µs): it drives the gateway's own code as a request does, against a real
``redis-server`` (started here unless ``--redis`` is given), and reads this process's
CPU time (``time.process_time``) over many repetitions:

* ``lookup`` — :meth:`KeyRing.authenticate` of a runtime key among 10,000 (SHA-256 of
  the bearer key and two dict lookups), against the config-only key ring of before;
* ``route`` — :meth:`Router.resolve` with the caller's tenancy check, against without;
* ``admit`` — :meth:`Spend.admit` for a key with its own and its tenant's budget (the
  reservation: one script, awaited), and for a key without any budget (no Redis);
* ``settle`` — :meth:`Spend.settle_now`: the reservation dropped and the answer's cost
  added to both budgets (one script, awaited; the gateway does not wait for it);
* ``charge`` — :meth:`Spend.charge` of an answer's cost to the day's spend (in memory);
* ``sync`` — the periodic transaction that adds the charges to Redis and reads the
  budgets' totals, per request when 1, 10 or 100 requests share one sync.

``admit`` and ``charge`` are on the request path; the sync runs every
``auth.spend_sync_s`` whatever the traffic, so its cost per request falls as traffic
grows (at 100 req/s and the default 0.1 s, ten requests share one).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from gateway.control.routing import Router
from gateway.core import keys
from gateway.core.auth import KeyRing, Principal, digest
from gateway.core.config import ApiKey, Budget, Experiment, ModelVersion, Price, Upstream
from gateway.serving.metrics import Metrics
from gateway.serving.spend import Spend

from .procs import Processes
from .systems import start_redis


def cpu_us(fn: Callable[[], object], n: int) -> float:
    t = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - t) / n * 1e6


async def acpu_us(fn: Callable[[], Any], n: int) -> float:
    t = time.process_time()
    for _ in range(n):
        await fn()
    return (time.process_time() - t) / n * 1e6


def lookups(n: int) -> dict[str, float]:
    config = [ApiKey(key=f"sk-config-{i:04d}-0123456789", name=f"c{i}") for i in range(10)]  # type: ignore[arg-type]
    runtime = {
        digest(f"fwk-runtime-{i:05d}-0123456789abcdef"): Principal(
            f"r{i}", f"t{i % 50}", key_id=f"key_{i}"
        )
        for i in range(10_000)
    }
    before = KeyRing(config)
    after = KeyRing(config, runtime=lambda: runtime)
    header = "Bearer fwk-runtime-04242-0123456789abcdef"
    old = "Bearer sk-config-0007-0123456789"
    return {
        "lookup_config_only_before": cpu_us(lambda: before.authenticate(old), n),
        "lookup_runtime_key": cpu_us(lambda: after.authenticate(header), n),
    }


def routes(n: int) -> dict[str, float]:
    up = {"u": Upstream(kind="vllm", base_url="http://127.0.0.1:1/v1")}
    models = {m: ModelVersion(upstream="u", model=m, tenant="alpha") for m in ("a", "b")}
    exp = Experiment.model_validate({"arms": [{"model": "a"}, {"model": "b"}], "tenant": "alpha"})
    router = Router(up, models, {"ab": exp})
    caller = Principal("app", "alpha")
    return {
        "route_without_tenancy": cpu_us(lambda: router.resolve("ab", "u1"), n),
        "route_with_tenancy": cpu_us(lambda: router.resolve("ab", "u1", None, caller), n),
    }


async def budgets(redis_url: str, n: int) -> dict[str, float]:
    client = aioredis.Redis.from_url(redis_url)
    await client.flushdb()
    metrics = Metrics()
    tenant_budgets = {"alpha": Budget(limit=1e9, period="monthly")}
    spend = Spend(client, metrics, ks=keys.PLAIN_KEYSPACE, tenant_budgets=lambda: tenant_budgets)
    plain = Spend(client, metrics, ks=keys.PLAIN_KEYSPACE, tenant_budgets=lambda: {})
    budgeted = Principal("app", "alpha", key_id="key_1", budget=Budget(limit=1e9, period="daily"))
    free = Principal("free", "beta", key_id="key_2")
    price = Price(prompt_per_1m=0.5, completion_per_1m=1.5)
    hold = await spend.admit(budgeted, 0.0)  # connect
    assert hold is not None

    async def ping() -> None:
        await client.ping()

    amount = 18 * price.completion_per_1m / 1e6
    out = {
        "redis_round_trip_ping": await acpu_us(ping, n),
        "admit_no_budget": await acpu_us(lambda: plain.admit(free, 0.0), n),
    }

    async def admit_and_settle() -> None:
        held = await spend.admit(budgeted, 0.0, True)
        assert held is not None
        await spend.settle_now(held, amount)

    async def settle_only() -> None:
        await spend.settle_now(hold, amount)

    both = await acpu_us(admit_and_settle, n)
    out["settle_key_and_tenant_budget"] = await acpu_us(settle_only, n)
    out["admit_key_and_tenant_budget"] = both - out["settle_key_and_tenant_budget"]
    out["charge_key_and_tenant_budget"] = cpu_us(
        lambda: spend.charge(budgeted, "a", amount, held=True), n
    )
    # One sync (every auth.spend_sync_s) carries whatever was charged since the last: at
    # 100 req/s and the default 0.1 s, ten requests share one.
    for per_sync in (1, 10, 100):

        async def one_sync(k: int = per_sync) -> None:
            for _ in range(k):
                spend.charge(budgeted, "a", amount)
            await spend.sync()

        us = await acpu_us(one_sync, max(50, n // 10)) / per_sync
        out[f"sync_per_request_{per_sync}_per_sync"] = us - out["charge_key_and_tenant_budget"]
    await client.aclose()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.keys", description=__doc__)
    parser.add_argument("--redis", default=None, help="a Redis URL (default: start one)")
    parser.add_argument("-n", type=int, default=20_000, help="repetitions of each Redis row")
    args = parser.parse_args()
    results = {**lookups(args.n * 5), **routes(args.n * 5)}
    if args.redis:
        results.update(asyncio.run(budgets(args.redis, args.n)))
    else:
        with Processes(Path(tempfile.mkdtemp(prefix="flywheel-bench-keys-"))) as procs:
            redis = start_redis(procs)
            results.update(asyncio.run(budgets(redis.url(), args.n)))
    print("| what | CPU µs per call |\n| --- | ---: |")
    for name, us in results.items():
        print(f"| {name} | {us:.2f} |")
    added = (
        results["lookup_runtime_key"]
        - results["lookup_config_only_before"]
        + results["route_with_tenancy"]
        - results["route_without_tenancy"]
        + results["admit_key_and_tenant_budget"]
        + results["charge_key_and_tenant_budget"]
    )
    print(
        f"\nadded on the path of a budgeted request (lookup, tenancy, admit, charge): "
        f"{added:.2f} µs; plus its share of a sync (rows above)"
    )
    free = (
        results["admit_no_budget"]
        + results["lookup_runtime_key"]
        - results["lookup_config_only_before"]
        + results["route_with_tenancy"]
        - results["route_without_tenancy"]
    )
    print(f"added per request without a budget: {free:.2f} µs")


if __name__ == "__main__":
    main()
