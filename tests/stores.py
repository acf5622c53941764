"""Where a data-path test keeps its data: one Redis, or a Redis Cluster of 3 masters.

A module that touches Redis parametrises its store fixture with :data:`STORES`, so each
of its tests runs against both (``-m "not cluster"`` leaves the cluster half out, and
then no cluster is started). The one Redis gives each module a database of its own; the
cluster (one per session, started on first use) is flushed when a module takes it.
Either way the test names keys through :attr:`Store.ks`, the keyspace the gateway and
``retrain`` use with that config.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import pytest
import redis
from redis.cluster import RedisCluster

from gateway.core import keys

STORES = [
    pytest.param("redis", id="redis"),
    pytest.param("cluster", id="cluster", marks=pytest.mark.cluster),
]


@dataclass(frozen=True)
class Store:
    url: str
    cluster: bool
    ports: tuple[int, ...]  # the one Redis, or every master of the cluster

    @property
    def ks(self) -> keys.Keyspace:
        return keys.for_redis(self.cluster)

    @property
    def config(self) -> dict[str, Any]:
        """What a gateway or ``retrain`` config needs to use this store."""
        return {"redis_url": self.url, "redis_cluster": self.cluster}

    def client(self, decode_responses: bool = False) -> redis.Redis:
        """A sync client: a cluster client on the cluster (it answers the same commands)."""
        if self.cluster:
            return cast(
                redis.Redis, RedisCluster.from_url(self.url, decode_responses=decode_responses)
            )
        return redis.Redis.from_url(self.url, decode_responses=decode_responses)

    def flush(self) -> None:
        if not self.cluster:
            with redis.Redis.from_url(self.url) as r:
                r.flushdb()
            return
        for port in self.ports:
            with redis.Redis(port=port) as node:
                if node.info("replication").get("role") == "master":
                    node.flushall()


def store_for(request: pytest.FixtureRequest, db: int, kind: str | None = None) -> Store:
    """The store of a module's ``params=STORES`` fixture (or of ``kind``), flushed:
    database ``db`` of the session's one Redis, or the session's cluster."""
    if (kind or request.param) == "cluster":
        cluster = request.getfixturevalue("redis_cluster")
        store = Store(cluster.url, True, tuple(cluster.ports))
    else:
        server = request.getfixturevalue("redis_server")
        url = server.url.rsplit("/", 1)[0] + f"/{db}"
        store = Store(url, False, (server.port,))
    store.flush()
    return store
