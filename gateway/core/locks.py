"""Redis locks with an owner: taken with ``SET NX EX``, released only by their owner.

The release is one Lua script (compare and delete), so a holder whose lock expired and
was taken by someone else never deletes the new owner's lock. Used by the gateway's
decider (async) and by ``retrain build``/``run`` (sync, which also take over a lock whose
owner died on this host).
"""

from __future__ import annotations

import os
import secrets
import socket

import redis
import redis.asyncio as aioredis

from gateway.core import keys

# Delete KEYS[1] only while it still holds ARGV[1]; 1 when deleted.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# Replace KEYS[1]'s owner ARGV[1] (a dead process) by ARGV[2] for ARGV[3] seconds.
_TAKE_OVER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
  return 1
end
return 0
"""


def alive(pid: int) -> bool:
    """Whether a process with this id exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Lock:
    """One holder at a time (a build or a run per experiment); a lock whose owner died on
    this host is taken over, one held elsewhere expires after ``ttl_s``."""

    def __init__(self, client: redis.Redis, key: str, ttl_s: int = 6 * 3600) -> None:
        self.client, self.key, self.ttl_s = client, key, ttl_s
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self._release = client.register_script(_RELEASE)
        self._take_over = client.register_script(_TAKE_OVER)

    def acquire(self) -> str | None:
        """None when acquired, else who holds it."""
        if self.client.set(self.key, self.owner, nx=True, ex=self.ttl_s):
            return None
        holder = keys.text(self.client.get(self.key) or b"")
        host, _, pid = holder.rpartition(":")
        if host == socket.gethostname() and pid.isdigit() and not alive(int(pid)):
            # The owner is gone: take over only if the lock still names it.
            if self._take_over(keys=[self.key], args=[holder, self.owner, self.ttl_s]):
                return None
            if self.client.set(self.key, self.owner, nx=True, ex=self.ttl_s):
                return None  # it expired meanwhile
            return keys.text(self.client.get(self.key) or b"") or holder
        return holder

    def release(self) -> bool:
        """Delete the lock if this holder still owns it; whether it did."""
        return bool(self._release(keys=[self.key], args=[self.owner]))


class AsyncLock:
    """A short lock between gateway replicas (e.g. one decider applies a decision); the
    token is random, so only the acquiring call's ``release`` can delete it."""

    def __init__(self, client: aioredis.Redis, key: str, ttl_s: int = 30) -> None:
        self.client, self.key, self.ttl_s = client, key, ttl_s
        self.token = secrets.token_hex(16)
        self._release = client.register_script(_RELEASE)

    async def acquire(self) -> bool:
        return bool(await self.client.set(self.key, self.token, nx=True, ex=self.ttl_s))

    async def release(self) -> bool:
        return bool(await self._release(keys=[self.key], args=[self.token]))
