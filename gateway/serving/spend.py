"""Spend and budgets: what each request costs, counted in Redis, and the hard limit.

A request's cost is its usage at the answering model's price (registered candidates
inherit their base's), charged when the answer ends (a stream at its end). It counts
toward the day's spend per key, tenant and model (``fw:spend:day:{date}``) and the
current period of each budget that applies (``fw:spend:{k|t}:{id}:{period}``): the
key's own and its tenant's.

No request waits for Redis here: a round trip costs the gateway ~100 µs of CPU, five
times the whole budget of this feature (``bench/keys.py``). Each replica adds up its
charges in memory and every ``auth.spend_sync_s`` (0.1 s) adds them to Redis in one
script (``INCRBYFLOAT``: atomic, whatever the number of replicas), reading in the same
script the totals of every budget it has checked lately. A budget is checked
against that total plus the replica's charges not yet synced: a budget spent for the
period, or one the request would take over by its estimate (prompt bytes / 4 at the
prompt price, plus ``max_tokens`` at the completion price), is a 429
``insufficient_quota``, as OpenAI answers. The first check of a budget on a replica
reads it from Redis at once. Other replicas' spend is seen within about two sync
periods, so a burst spread over replicas in that window may overrun the limit by what
it costs. The next period starts from zero.

While Redis is unreachable, ``auth.fail_open`` decides: admit (the default: serving
matters more than metering; charges wait in memory and are added when it answers) or
refuse with a 503.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.core import keys
from gateway.core.auth import Principal
from gateway.core.config import Budget, Price
from gateway.core.errors import QuotaExceeded, StoreUnavailable
from gateway.serving.metrics import Metrics

log = logging.getLogger(__name__)

DAY_TTL_S = 400 * 86400


@functools.lru_cache(maxsize=16)
def _utc(fmt: str, second: int) -> str:
    return time.strftime(fmt, time.gmtime(second))


def period(budget: Budget, now: float) -> tuple[str, int]:
    """The current period's id and how long its counter must live (seconds)."""
    if budget.period == "daily":
        return _utc("%Y-%m-%d", int(now)), 2 * 86400
    if budget.period == "monthly":
        return _utc("%Y-%m", int(now)), 32 * 86400
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


# One sync, one round trip (a script: atomic, and ~5x cheaper for the gateway than a
# transaction of as many commands). KEYS: the budget counters to add to (ARGV[1] of
# them), the day hashes (ARGV[2]), then the counters to read. ARGV[3]: the day hashes'
# lifetime; then an amount and a lifetime per counter; then per day hash, its number of
# fields and (field, amount) pairs. Returns the totals of the counters read.
_SYNC = """
local n, d, day_ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local i = 4
for k = 1, n do
  redis.call('INCRBYFLOAT', KEYS[k], ARGV[i])
  redis.call('EXPIRE', KEYS[k], ARGV[i + 1])
  i = i + 2
end
for h = n + 1, n + d do
  local m = tonumber(ARGV[i])
  i = i + 1
  for _ = 1, m do
    redis.call('HINCRBYFLOAT', KEYS[h], ARGV[i], ARGV[i + 1])
    i = i + 2
  end
  redis.call('EXPIRE', KEYS[h], day_ttl)
end
local out = {}
for k = n + d + 1, #KEYS do
  out[#out + 1] = redis.call('GET', KEYS[k]) or '0'
end
return out
"""


class Spend:
    def __init__(
        self,
        redis: aioredis.Redis,
        metrics: Metrics,
        *,
        ks: keys.Keyspace,
        tenant_budgets: Callable[[], dict[str, Budget]],
        fail_open: bool = True,
        sync_s: float = 0.1,
    ) -> None:
        self.redis = redis
        self.ks = ks
        self.metrics = metrics
        self.tenant_budgets = tenant_budgets
        self.fail_open = fail_open
        self.sync_s = sync_s
        self._pending: dict[str, float] = defaultdict(float)  # budget counter → not synced
        self._ttl: dict[str, int] = {}
        self._day: dict[tuple[str, str], float] = defaultdict(float)  # (day hash, field)
        self._syncing: dict[str, float] = {}  # taken by a sync that has not answered yet
        self._known: dict[str, float] = {}  # budget counter → its total at the last sync
        self._watched: dict[str, tuple[float, str, str, Budget]] = {}  # → last check, scope...
        self._task: asyncio.Task[None] | None = None
        self._redis_ok = True
        self._sync = redis.register_script(_SYNC)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="spend-sync")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.sync_s)
            await self.sync()

    def _budgets(self, p: Principal, now: float) -> list[tuple[str, str, Budget, str]]:
        """(scope, owner, budget, counter key) of each budget that applies to ``p``."""
        out = []
        if p.budget is not None:
            out.append(
                (
                    "key",
                    p.account,
                    p.budget,
                    self.ks.spend("k", p.account, period(p.budget, now)[0]),
                )
            )
        tb = self.tenant_budgets().get(p.tenant)
        if tb is not None:
            out.append(("tenant", p.tenant, tb, self.ks.spend("t", p.tenant, period(tb, now)[0])))
        return out

    async def admit(self, p: Principal, expected: float) -> None:
        """Raise :class:`QuotaExceeded` when a budget of ``p`` is spent or would be."""
        if p.budget is None and not self.tenant_budgets():
            return
        budgets = self._budgets(p, time.time())
        if not budgets:
            return
        if not self._redis_ok and not self.fail_open:
            raise _unavailable()
        unknown = [b[3] for b in budgets if b[3] not in self._known]
        if unknown:
            try:
                totals = await self.redis.mget(unknown)
                self._redis_ok = True
            except (RedisError, OSError) as exc:
                self._store_down(exc)
                totals = [None] * len(unknown)
            for counter, raw in zip(unknown, totals, strict=True):
                self._known.setdefault(counter, float(raw or 0))
        checked = time.monotonic()
        for scope, owner, budget, counter in budgets:
            self._watched[counter] = (checked, scope, owner, budget)
            used = (
                self._known[counter]
                + self._pending.get(counter, 0.0)
                + self._syncing.get(counter, 0.0)
            )
            if used >= budget.limit or used + expected > budget.limit:
                self.metrics.quota_refused.labels(scope, owner).inc()
                whose = f"key '{p.name}'" if scope == "key" else f"tenant '{owner}'"
                raise QuotaExceeded(
                    f"You exceeded the current quota of {whose}: {used:.6g} of {budget.limit:g} "
                    f"spent this period ({budget.period}). Requests are admitted again in "
                    "the next period."
                )

    def _store_down(self, exc: Exception) -> None:
        if self._redis_ok:
            log.warning(
                "budgets: Redis is unavailable (%s); %s",
                exc,
                "admitting" if self.fail_open else "refusing",
            )
        self._redis_ok = False
        if not self.fail_open:
            raise _unavailable()

    def charge(self, p: Principal, model: str, amount: float) -> None:
        """Add an answer's cost to the key's, tenant's and model's spend (synced soon)."""
        if amount <= 0:
            return
        self.metrics.spend.labels(p.tenant, p.account, model).inc(amount)
        now = time.time()
        for _, _, budget, counter in self._budgets(p, now):
            self._pending[counter] += amount
            self._ttl[counter] = period(budget, now)[1]
        day = self.ks.spend_day(_utc("%Y-%m-%d", int(now)))
        self._day[(day, "k:" + p.account)] += amount
        self._day[(day, "t:" + p.tenant)] += amount
        self._day[(day, "m:" + model)] += amount

    async def sync(self) -> None:
        """Add the charges to Redis and read the totals of the budgets checked lately."""
        cutoff = time.monotonic() - 120
        for counter in [c for c, w in self._watched.items() if w[0] < cutoff]:
            del self._watched[counter]
            self._known.pop(counter, None)
        if not (self._pending or self._day or self._watched):
            return
        pending, self._pending = self._pending, defaultdict(float)
        day, self._day = self._day, defaultdict(float)
        self._syncing = dict(pending)
        watched = list(self._watched)
        hashes = sorted({h for h, _ in day})
        args: list[Any] = [len(pending), len(hashes), DAY_TTL_S]
        for counter, amount in pending.items():
            args += [repr(amount), self._ttl.get(counter, DAY_TTL_S)]
        for h in hashes:
            fields = [(f, a) for (dh, f), a in day.items() if dh == h]
            args.append(len(fields))
            for f, amount in fields:
                args += [f, repr(amount)]
        try:
            results = await self._sync(keys=[*pending, *hashes, *watched], args=args)
            self._redis_ok = True
        except (RedisError, OSError) as exc:
            if self._redis_ok:
                log.warning("spend: cannot reach Redis (%s); charges wait in memory", exc)
            self._redis_ok = False
            for counter, amount in pending.items():  # retried with the next sync
                self._pending[counter] += amount
            for field, amount in day.items():
                self._day[field] += amount
            return
        finally:
            self._syncing = {}
        for counter, raw in zip(watched, results, strict=True):
            total = float(raw or 0)
            self._known[counter] = total
            _, scope, owner, budget = self._watched.get(counter) or (0, "", "", None)
            if budget is not None:
                self.metrics.budget_used.labels(scope, owner).set(total / budget.limit)
                self.metrics.budget_soft.labels(scope, owner).set(budget.soft)

    async def close(self) -> None:
        """Stop syncing, after one last sync of what is charged."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.sync()


def _unavailable() -> StoreUnavailable:
    return StoreUnavailable("Budgets cannot be checked while the store (Redis) is unavailable.")
