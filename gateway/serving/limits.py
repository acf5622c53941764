"""Per-key rate limits: requests and tokens per minute, token buckets kept in Redis.

Every replica shares the buckets, so a key's limit holds however many replicas serve it.
One Lua script (one round trip) refills both buckets from Redis's own clock, admits the
request when each of its buckets holds at least one whole token, and takes one from
the request bucket. Tokens are charged after the answer, from its
usage: a request may overdraw the token bucket, and the next ones wait until it refills.

Keys without limits cost nothing here. If Redis is unavailable, requests are admitted
(serving matters more than metering; ``auth.fail_open: false`` refuses them with a 503
instead) and the failure is logged once per outage.
"""

from __future__ import annotations

import asyncio
import logging
import math

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.core import keys
from gateway.core.auth import Principal
from gateway.core.errors import RateLimited, StoreUnavailable
from gateway.serving.metrics import Metrics

log = logging.getLogger(__name__)

# KEYS: request bucket, token bucket. ARGV: rpm, tpm (0: no limit), tokens to charge
# (0: this is an admission, which takes one request). Returns
# {admitted, retry_after_ms, requests_left, tokens_left, which} (which: 1 requests, 2 tokens).
_BUCKETS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function level(key, per_min)
  local b = redis.call('HMGET', key, 'level', 'ts')
  local lvl, ts = tonumber(b[1]) or per_min, tonumber(b[2]) or now
  return math.min(per_min, lvl + (now - ts) * per_min / 60000)
end
local function save(key, lvl) redis.call('HSET', key, 'level', lvl, 'ts', now)
  redis.call('PEXPIRE', key, 61000) end
local rpm, tpm, charge = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local req = rpm > 0 and level(KEYS[1], rpm) or 0
local tok = tpm > 0 and level(KEYS[2], tpm) or 0
if charge > 0 then
  if tpm > 0 then save(KEYS[2], tok - charge) end
  return {1, 0, math.floor(req), math.floor(tok - charge), 0}
end
if rpm > 0 and req < 1 then
  return {0, math.ceil((1 - req) * 60000 / rpm), 0, math.floor(tok), 1}
end
if tpm > 0 and tok < 1 then
  return {0, math.ceil((1 - tok) * 60000 / tpm), math.floor(req), math.floor(tok), 2}
end
if rpm > 0 then save(KEYS[1], req - 1) end
if tpm > 0 then save(KEYS[2], tok) end
return {1, 0, math.floor(req - 1), math.floor(tok), 0}
"""


def _keys(ks: keys.Keyspace, p: Principal) -> list[str]:
    return [ks.rate_limit(p.account, "req"), ks.rate_limit(p.account, "tok")]


class RateLimiter:
    def __init__(
        self, redis: aioredis.Redis, metrics: Metrics, ks: keys.Keyspace, fail_open: bool = True
    ) -> None:
        self.ks = ks
        self._script = redis.register_script(_BUCKETS)
        self._fail_open = fail_open
        self._metrics = metrics
        self._charges: set[asyncio.Task[None]] = set()
        self._redis_ok = True

    async def admit(self, p: Principal) -> dict[str, str]:
        """Take one request from the key's budget, or raise :class:`RateLimited` (429).

        Returns OpenAI's ``x-ratelimit-*`` headers for the response.
        """
        if not (p.rpm or p.tpm):
            return {}
        try:
            ok, retry_ms, req_left, tok_left, which = await self._script(
                keys=_keys(self.ks, p), args=[p.rpm or 0, p.tpm or 0, 0]
            )
            self._redis_ok = True
        except (RedisError, OSError) as exc:
            if self._redis_ok:
                log.warning(
                    "rate limits: Redis is unavailable (%s); %s",
                    exc,
                    "admitting" if self._fail_open else "refusing",
                )
            self._redis_ok = False
            if not self._fail_open:
                raise StoreUnavailable(
                    "Rate limits cannot be checked while the store (Redis) is unavailable."
                ) from None
            return {}
        headers = {}
        if p.rpm:
            headers["x-ratelimit-limit-requests"] = str(p.rpm)
            headers["x-ratelimit-remaining-requests"] = str(max(0, req_left))
        if p.tpm:
            headers["x-ratelimit-limit-tokens"] = str(p.tpm)
            headers["x-ratelimit-remaining-tokens"] = str(max(0, tok_left))
        if ok:
            return headers
        kind, limit = ("requests", p.rpm) if which == 1 else ("tokens", p.tpm)
        self._metrics.rate_limited.labels(p.name, kind).inc()
        wait_s = max(1, math.ceil(retry_ms / 1000))
        refused = RateLimited(
            f"Rate limit reached for key '{p.name}' on {kind} per minute: limit {limit}. "
            f"Please try again in {wait_s}s.",
            type=kind,
        )
        refused.headers = {**headers, "retry-after": str(wait_s)}
        raise refused

    def charge(self, p: Principal, tokens: int) -> None:
        """Charge an answer's tokens to the key's token bucket, in the background."""
        if not p.tpm or tokens <= 0:
            return
        task = asyncio.create_task(self._charge(p, tokens))
        self._charges.add(task)
        task.add_done_callback(self._charges.discard)

    async def _charge(self, p: Principal, tokens: int) -> None:
        try:
            await self._script(keys=_keys(self.ks, p), args=[p.rpm or 0, p.tpm or 0, tokens])
        except (RedisError, OSError) as exc:
            log.warning("could not charge %d tokens to key '%s': %s", tokens, p.name, exc)

    async def close(self) -> None:
        await asyncio.gather(*self._charges, return_exceptions=True)
