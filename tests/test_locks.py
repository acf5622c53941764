"""Owner-checked locks on a real Redis: only the holder releases, a dead local holder is
taken over, and a holder whose lock expired never deletes its successor's."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest
import redis
import redis.asyncio as aioredis

from gateway.core import keys
from gateway.core.locks import AsyncLock, Lock

from .services import RedisProcess

KS = keys.PLAIN_KEYSPACE  # these tests run on one Redis


@pytest.fixture
def client(redis_server: RedisProcess) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_server.url)
    yield c
    c.close()


def test_a_second_holder_is_refused_and_told_who_holds_it(client: redis.Redis) -> None:
    key = KS.build_lock("locks-busy")
    first, second = Lock(client, key), Lock(client, key)
    second.owner = "elsewhere:1"  # another host: never taken over
    assert first.acquire() is None
    assert second.acquire() == first.owner
    assert second.release() is False  # not its lock: left alone
    assert client.get(key) == first.owner.encode()
    assert first.release() is True
    assert client.get(key) is None


def test_a_lock_whose_owner_died_on_this_host_is_taken_over(client: redis.Redis) -> None:
    key = KS.run_lock("locks-dead")
    code = "import os; print(os.getpid())"
    dead = subprocess.run([sys.executable, "-c", code], text=True, capture_output=True)
    assert dead.returncode == 0  # the process has exited: its pid names no one now
    client.set(key, f"{socket.gethostname()}:{dead.stdout.strip()}", ex=60)
    lock = Lock(client, key)
    assert lock.acquire() is None
    assert client.get(key) == lock.owner.encode()
    lock.release()


def test_an_expired_holder_does_not_release_its_successors_lock(client: redis.Redis) -> None:
    key = KS.build_lock("locks-expired")
    slow, next_one = Lock(client, key, ttl_s=1), Lock(client, key)
    next_one.owner = "other-host:42"
    assert slow.acquire() is None
    client.delete(key)  # as if its ttl ran out
    assert next_one.acquire() is None
    assert slow.release() is False
    assert client.get(key) == b"other-host:42"
    client.delete(key)


async def test_replicas_deciding_at_once_take_turns(redis_server: RedisProcess) -> None:
    client = aioredis.Redis.from_url(redis_server.url)
    key = KS.decision_lock("locks-decide")
    try:
        a, b = AsyncLock(client, key), AsyncLock(client, key)
        assert await a.acquire() is True
        assert await b.acquire() is False
        assert await b.release() is False  # b never held it: a's lock stays
        assert await client.exists(key) == 1
        assert await a.release() is True
        assert await b.acquire() is True
        await b.release()
    finally:
        await client.aclose()
