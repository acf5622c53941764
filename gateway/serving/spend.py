"""Spend and budgets: what each request costs, counted in Redis, and the hard limit.

A request's cost is its usage at the answering model's price (registered candidates
inherit their base's), charged when the answer ends (a stream at its end). It counts
toward the day's spend per key, tenant and model (``fw:spend:day:{date}``) and the
current period of each budget that applies (``fw:spend:{k|t}:{id}:{period}``): the
key's own and its tenant's.

A budgeted request is admitted against what is spent *plus what the requests in flight
may still cost*, on every replica and worker: one script (``_RESERVE``) reads the
period's spend and the holder's ledger of reservations (``fw:spend:held:{k|t}:{id}``),
refuses when the budget is spent or the request's estimate (prompt bytes / 4 at the
prompt price, plus ``max_tokens`` at the completion price) would take it over (a 429
``insufficient_quota``, as OpenAI answers), and otherwise reserves what the request may
cost: its estimate, or the dearest recent answer of that holder when that is more. When
the answer ends — done, failed upstream or client gone — a second script (``_SETTLE``)
drops the reservation and adds the actual cost in one step. So a burst can pass the
limit by at most about one answer. While nothing is known of a holder's answers yet (no
answer settled) and a request has no ``max_tokens``, it waits for the one in flight to
settle (it is the probe that tells what an answer costs). A reservation lapses at its
deadline (``hold_s``, 300 s): a worker killed mid-request leaves a reservation that
stops holding then.

The day's spend (per key, tenant and model) is not on the admission path: each replica
adds it up in memory and every ``auth.spend_sync_s`` (0.1 s) adds it to Redis in one
script, reading in the same script the totals of the budgets it checked lately (for the
``flywheel_budget_used_ratio`` metric).

While Redis is unreachable, ``auth.fail_open`` decides: admit (the default: serving
matters more than metering; a request is then checked against the totals this replica
last read, and its charges wait in memory until Redis answers) or refuse with a 503.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
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
HOLD_S = 300.0  # how long a reservation holds at most (a worker killed mid-request)
LEDGER_TTL_S = 40 * 86400  # a ledger (and its ``dear``) outlives a monthly period
PROBE_WAIT_S = 0.01  # how often a request waiting for the first answer asks again


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


def bounded(doc: dict[str, Any]) -> bool:
    """Whether a request bounds its answer's length (and so its estimate its cost)."""
    return isinstance(doc.get("max_completion_tokens") or doc.get("max_tokens"), int)


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


# Admission: KEYS are (period counter, ledger) per budget; ARGV: the reservation id, the
# request's estimate, 1 when the estimate bounds its cost (max_tokens), the hold in ms,
# the ledgers' lifetime in s, then each budget's limit. Lapsed reservations are dropped.
# Returns {0}: admitted (held); {1, budget, used}: refused; {2, budget, used}: wait for
# the answer in flight (nothing known yet of what an answer costs).
_RESERVE = """
local id, expected, bounded = ARGV[1], tonumber(ARGV[2]), ARGV[3] == '1'
local hold_ms, ledger_ttl = tonumber(ARGV[4]), ARGV[5]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = #KEYS / 2
local amounts = {}
for b = 1, n do
  local ledger = KEYS[2 * b]
  local limit = tonumber(ARGV[5 + b])
  local used = tonumber(redis.call('GET', KEYS[2 * b - 1]) or '0')
  local live, dear = 0, nil
  local flat = redis.call('HGETALL', ledger)
  for i = 1, #flat, 2 do
    local f, v = flat[i], flat[i + 1]
    if f == 'dear' then
      dear = tonumber(v)
    else
      local sp = string.find(v, ' ', 1, true)
      if tonumber(string.sub(v, sp + 1)) <= now then
        redis.call('HDEL', ledger, f)
      else
        used = used + tonumber(string.sub(v, 1, sp - 1))
        live = live + 1
      end
    end
  end
  if used >= limit or used + expected > limit then
    return {1, b, tostring(used)}
  end
  if dear == nil and not bounded and live > 0 then
    return {2, b, tostring(used)}
  end
  amounts[b] = math.max(expected, dear or 0)
end
for b = 1, n do
  redis.call('HSET', KEYS[2 * b], id, string.format('%.17g', amounts[b]) .. ' ' .. (now + hold_ms))
  redis.call('EXPIRE', KEYS[2 * b], ledger_ttl)
end
return {0}
"""

# Settling: KEYS as for _RESERVE; ARGV: the reservation id, the actual cost, the
# ledgers' lifetime, then each period counter's lifetime. Drops the reservation and adds
# the cost in one step; ``dear`` follows the dearest recent answer (it decays by a tenth
# an answer, so one odd answer does not hold more forever).
_SETTLE = """
local id, amount, ledger_ttl = ARGV[1], tonumber(ARGV[2]), ARGV[3]
for b = 1, #KEYS / 2 do
  local counter, ledger = KEYS[2 * b - 1], KEYS[2 * b]
  redis.call('HDEL', ledger, id)
  if amount > 0 then
    redis.call('INCRBYFLOAT', counter, ARGV[2])
    redis.call('EXPIRE', counter, ARGV[3 + b])
    local dear = tonumber(redis.call('HGET', ledger, 'dear') or '0')
    redis.call('HSET', ledger, 'dear', string.format('%.17g', math.max(amount, dear * 0.9)))
    redis.call('EXPIRE', ledger, ledger_ttl)
  end
end
return 1
"""


@dataclass(slots=True)
class Hold:
    """A request's reservation on its budgets, settled when its answer ends."""

    id: str
    keys: list[str]  # (period counter, ledger) per budget
    ttls: list[int]  # each period counter's lifetime
    counters: list[str]
    settled: bool = False


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
        hold_s: float = HOLD_S,
    ) -> None:
        self.redis = redis
        self.ks = ks
        self.metrics = metrics
        self.tenant_budgets = tenant_budgets
        self.fail_open = fail_open
        self.sync_s = sync_s
        self.hold_s = hold_s
        self._pending: dict[str, float] = defaultdict(float)  # budget counter → not synced
        self._ttl: dict[str, int] = {}
        self._day: dict[tuple[str, str], float] = defaultdict(float)  # (day hash, field)
        self._syncing: dict[str, float] = {}  # taken by a sync that has not answered yet
        self._known: dict[str, float] = {}  # budget counter → its total at the last sync
        self._watched: dict[str, tuple[float, str, str, Budget]] = {}  # → last check, scope...
        self._task: asyncio.Task[None] | None = None
        self._redis_ok = True
        self._sync = redis.register_script(_SYNC)
        self._reserve = redis.register_script(_RESERVE)
        self._settle = redis.register_script(_SETTLE)
        self._settling: set[asyncio.Task[None]] = set()

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

    async def admit(self, p: Principal, expected: float, bounded: bool = False) -> Hold | None:
        """Reserve what a request of ``p`` may cost on each of its budgets, or raise
        :class:`QuotaExceeded` when a budget is spent or the request would take it over.

        ``expected`` is the request's estimate, ``bounded`` whether it bounds the cost
        (``max_tokens`` set). Returns the reservation to settle (None: no budget, or
        Redis unreachable with ``fail_open``: checked against the last totals read)."""
        if p.budget is None and not self.tenant_budgets():
            return None
        now = time.time()
        budgets = self._budgets(p, now)
        if not budgets:
            return None
        checked = time.monotonic()
        for scope, owner, budget, counter in budgets:
            self._watched[counter] = (checked, scope, owner, budget)
        hold = Hold(
            id="r:" + secrets.token_hex(8),
            keys=[k for b in budgets for k in (b[3], self.ks.spend_held(b[0][0], b[1]))],
            ttls=[period(b[2], now)[1] for b in budgets],
            counters=[b[3] for b in budgets],
        )
        args = [hold.id, repr(expected), 1 if bounded else 0, int(self.hold_s * 1000)]
        args += [LEDGER_TTL_S, *(repr(b[2].limit) for b in budgets)]
        while True:
            try:
                answer = await self._reserve(keys=hold.keys, args=args)
                self._redis_ok = True
            except (RedisError, OSError) as exc:
                self._store_down(exc)  # raises unless fail_open
                await self._admit_locally(p, budgets, expected)
                return None
            if answer[0] == 0:
                return hold
            scope, owner, budget, counter = budgets[int(answer[1]) - 1]
            if answer[0] == 1:
                self._refuse(p, scope, owner, budget, float(answer[2]))
            await asyncio.sleep(PROBE_WAIT_S)  # the first answer in flight tells the cost

    def _refuse(self, p: Principal, scope: str, owner: str, budget: Budget, used: float) -> None:
        self.metrics.quota_refused.labels(scope, owner).inc()
        whose = f"key '{p.name}'" if scope == "key" else f"tenant '{owner}'"
        raise QuotaExceeded(
            f"You exceeded the current quota of {whose}: {used:.6g} of {budget.limit:g} "
            f"spent or held by requests in flight this period ({budget.period}). Requests "
            "are admitted again in the next period."
        )

    async def _admit_locally(
        self, p: Principal, budgets: list[tuple[str, str, Budget, str]], expected: float
    ) -> None:
        """Redis is unreachable (``fail_open``): check against the totals last read."""
        unknown = [b[3] for b in budgets if b[3] not in self._known]
        for counter in unknown:
            self._known.setdefault(counter, 0.0)
        for scope, owner, budget, counter in budgets:
            used = (
                self._known[counter]
                + self._pending.get(counter, 0.0)
                + self._syncing.get(counter, 0.0)
            )
            if used >= budget.limit or used + expected > budget.limit:
                self._refuse(p, scope, owner, budget, used)

    def settle(self, hold: Hold, amount: float) -> None:
        """The answer of a held request ended (done, failed or cancelled): drop its
        reservation and add its actual cost (``amount``; 0 when it cost nothing)."""
        if hold.settled:
            return
        hold.settled = True
        task = asyncio.get_running_loop().create_task(self.settle_now(hold, amount))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def settle_now(self, hold: Hold, amount: float) -> None:
        """:meth:`settle`, awaited (one round trip)."""
        hold.settled = True
        args: list[Any] = [hold.id, repr(max(amount, 0.0)), LEDGER_TTL_S, *hold.ttls]
        try:
            await self._settle(keys=hold.keys, args=args)
            self._redis_ok = True
        except (RedisError, OSError) as exc:
            if self._redis_ok:
                log.warning("spend: cannot reach Redis (%s); charges wait in memory", exc)
            self._redis_ok = False
            for counter, ttl in zip(hold.counters, hold.ttls, strict=True):
                if amount > 0:  # added with the next sync; the reservation lapses
                    self._pending[counter] += amount
                    self._ttl[counter] = ttl

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

    def charge(self, p: Principal, model: str, amount: float, held: bool = False) -> None:
        """Add an answer's cost to the key's, tenant's and model's spend (synced soon).

        ``held``: the request holds a reservation, whose :meth:`settle` adds the cost to
        its budgets (a request without one, a shadow, is added with the next sync)."""
        if amount <= 0:
            return
        self.metrics.spend.labels(p.tenant, p.account, model).inc(amount)
        now = time.time()
        if not held:
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
        await asyncio.gather(*self._settling, return_exceptions=True)
        await self.sync()


def _unavailable() -> StoreUnavailable:
    return StoreUnavailable("Budgets cannot be checked while the store (Redis) is unavailable.")
