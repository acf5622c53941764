"""Spend and budgets: what each request costs, counted in Redis, and the hard limit.

A request's cost is its usage at the answering model's price (registered candidates
inherit their base's). It is added, in one Redis transaction shared by every replica,
to the day's spend per key, tenant and model (``fw:spend:day:{date}``) and to the
current period of each budget that applies (``fw:spend:{k|t}:{id}:{period}``): the
key's own and its tenant's. Streams are charged when they end.

Before a request is served, each budget that applies is read (one round trip, only for
keys with a budget or a tenant with one): a budget spent for the period, or one the
request would take over by its estimate (prompt characters / 4 at the prompt price,
plus ``max_tokens`` at the completion price), is a 429 ``insufficient_quota``, as
OpenAI answers. The next period starts from zero.

While Redis is unreachable, ``auth.fail_open`` decides: admit (the default: serving
matters more than metering; spend in that time is lost) or refuse with a 503.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from . import keys
from .auth import Principal
from .config import Budget, Price
from .errors import QuotaExceeded, StoreUnavailable
from .metrics import Metrics

log = logging.getLogger(__name__)

DAY_TTL_S = 400 * 86400


def period(budget: Budget, now: float) -> tuple[str, int]:
    """The current period's id and how long its counter must live (seconds)."""
    if budget.period == "daily":
        return time.strftime("%Y-%m-%d", time.gmtime(now)), 2 * 86400
    if budget.period == "monthly":
        return time.strftime("%Y-%m", time.gmtime(now)), 32 * 86400
    n = budget.period
    return f"{n}s{int(now // n)}", 2 * n


def cost(usage: dict[str, Any], price: Price) -> float:
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    total = 0.0
    if isinstance(prompt, int):
        total += prompt * price.prompt_per_1m
    if isinstance(completion, int):
        total += completion * price.completion_per_1m
    return total / 1e6


def estimate(doc: dict[str, Any], body_bytes: int, price: Price | None) -> float:
    """The least a request is expected to cost: its prompt (~4 bytes a token) and, when
    it sets one, ``max_tokens`` of completion."""
    if price is None:
        return 0.0
    most = doc.get("max_completion_tokens") or doc.get("max_tokens")
    completion = most if isinstance(most, int) else 0
    return (body_bytes / 4 * price.prompt_per_1m + completion * price.completion_per_1m) / 1e6


class Spend:
    def __init__(
        self,
        redis: aioredis.Redis,
        metrics: Metrics,
        *,
        tenant_budgets: Callable[[], dict[str, Budget]],
        fail_open: bool = True,
    ) -> None:
        self.redis = redis
        self.metrics = metrics
        self.tenant_budgets = tenant_budgets
        self.fail_open = fail_open
        self._charges: set[asyncio.Task[None]] = set()
        self._redis_ok = True

    def _budgets(self, p: Principal, now: float) -> list[tuple[str, str, Budget, str]]:
        """(scope, name, budget, counter key) of each budget that applies to ``p``."""
        out = []
        if p.budget is not None:
            out.append(("key", p.account, p.budget,
                        keys.spend("k", p.account, period(p.budget, now)[0])))  # fmt: skip
        tb = self.tenant_budgets().get(p.tenant)
        if tb is not None:
            out.append(("tenant", p.tenant, tb, keys.spend("t", p.tenant, period(tb, now)[0])))
        return out

    async def admit(self, p: Principal, expected: float) -> None:
        """Raise :class:`QuotaExceeded` when a budget of ``p`` is spent or would be."""
        if p.budget is None and not self.tenant_budgets():
            return
        budgets = self._budgets(p, time.time())
        if not budgets:
            return
        try:
            spent = await self.redis.mget([b[3] for b in budgets])
            self._redis_ok = True
        except (RedisError, OSError) as exc:
            self._store_down(exc)
            return
        for (scope, name, budget, _), raw in zip(budgets, spent, strict=True):
            used = float(raw or 0)
            if used >= budget.limit or used + expected > budget.limit:
                self.metrics.quota_refused.labels(scope, name).inc()
                whose = f"key '{p.name}'" if scope == "key" else f"tenant '{name}'"
                raise QuotaExceeded(
                    f"You exceeded the current quota of {whose}: {used:.6g} of {budget.limit:g} "
                    f"spent this period ({budget.period}). Requests are admitted again in "
                    "the next period."
                )

    def _store_down(self, exc: Exception) -> None:
        if self._redis_ok:
            log.warning("budgets: Redis is unavailable (%s); %s", exc,
                        "admitting" if self.fail_open else "refusing")  # fmt: skip
        self._redis_ok = False
        if not self.fail_open:
            raise StoreUnavailable(
                "Budgets cannot be checked while the store (Redis) is unavailable."
            )

    def charge(self, p: Principal, model: str, amount: float) -> None:
        """Add an answer's cost to the key's, tenant's and model's spend, in the background."""
        if amount <= 0:
            return
        self.metrics.spend.labels(p.tenant, p.account, model).inc(amount)
        task = asyncio.create_task(self._charge(p, model, amount))
        self._charges.add(task)
        task.add_done_callback(self._charges.discard)

    async def _charge(self, p: Principal, model: str, amount: float) -> None:
        now = time.time()
        budgets = self._budgets(p, now)
        day = keys.spend_day(time.strftime("%Y-%m-%d", time.gmtime(now)))
        try:
            pipe = self.redis.pipeline(transaction=True)
            for _, _, budget, key in budgets:
                pipe.incrbyfloat(key, amount)
                pipe.expire(key, period(budget, now)[1])
            pipe.hincrbyfloat(day, f"k:{p.account}", amount)
            pipe.hincrbyfloat(day, f"t:{p.tenant}", amount)
            pipe.hincrbyfloat(day, f"m:{model}", amount)
            pipe.expire(day, DAY_TTL_S)
            results = await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("could not charge %g to key '%s': %s", amount, p.name, exc)
            return
        for i, (scope, name, budget, _) in enumerate(budgets):
            self.metrics.budget_used.labels(scope, name).set(float(results[2 * i]) / budget.limit)
            self.metrics.budget_soft.labels(scope, name).set(budget.soft)

    async def close(self) -> None:
        await asyncio.gather(*self._charges, return_exceptions=True)
