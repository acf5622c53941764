"""A real gateway whose every model is an instant ``fixed-*`` answer (no vLLM).

For tests that send many requests or must see whether a request reached an upstream at
all: the fault server counts the chat requests it receives (``upstream.requests``).
Each gateway gets a Redis database of its own, so what its tests create (experiments,
models, ratings) stays out of the other tests' way.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis

from .conftest import ADMIN_KEY, API_KEY, ID_SECRET
from .faulty_upstream import FaultyUpstream
from .services import GatewayProcess, RedisProcess
from .stores import Store

FIXED = ("fixed-a", "fixed-b", "fixed-c")


def fixed_config(upstream_url: str, redis_url: str, **extra: Any) -> dict[str, Any]:
    return {
        "redis_url": redis_url,
        "id_secret": ID_SECRET,
        "auth": {
            "api_keys": [{"key": API_KEY, "name": "tests"}],
            "admin_keys": [{"key": ADMIN_KEY, "name": "ops", "tenant": "tests"}],
        },
        "upstreams": {"fixed": {"kind": "vllm", "base_url": upstream_url, "timeout_s": 5}},
        "models": {m: {"upstream": "fixed", "model": m} for m in FIXED},
        "experiments": {
            "default": {
                "arms": [{"model": "fixed-a", "weight": 90}, {"model": "fixed-b", "weight": 10}],
                "fallback": "fixed-c",
            },
        },
        **extra,
    }


@contextmanager
def fixed_gateway(
    redis_server: RedisProcess | Store, workdir: Path, db: int = 0, **extra: Any
) -> Iterator[tuple[GatewayProcess, FaultyUpstream]]:
    """A gateway on database ``db`` of the one Redis (flushed), or on a :class:`Store`
    (one Redis or the cluster, flushed by its fixture)."""
    if isinstance(redis_server, Store):
        url = redis_server.url
        extra = {"redis_cluster": redis_server.cluster, **extra}
    else:
        redis.Redis(port=redis_server.port, db=db).flushdb()
        url = redis_server.url.rsplit("/", 1)[0] + f"/{db}"
    upstream = FaultyUpstream().start()
    gw = GatewayProcess(fixed_config(upstream.base_url, url, **extra), workdir)
    try:
        gw.start()
        yield gw, upstream
    finally:
        gw.stop()
        upstream.stop()
