"""``gateway migrate-keys --from URL``: copy a single Redis's Flywheel keys to the config's Redis.

For moving a deployment onto a Redis Cluster (``redis_cluster: true``): every ``fw:*``
key of the source is copied with ``DUMP``/``RESTORE`` — its value, type, expiry and, for
the streams, their consumer groups and pending entries — under the name it has on the
target (``keys.cluster_name``: the shared state gets the ``{fw}`` hash tag, interaction
records keep their names, a key's rate-limit buckets get its own tag). Without
``redis_cluster`` the names stay as they are (a copy to another single Redis).

The source is only read. Run it with the gateways and retrain jobs stopped (what they
write meanwhile is not copied), before any gateway starts on the target: a key that
already exists there is kept and counted, unless ``--replace``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import redis
from redis.cluster import RedisCluster
from redis.exceptions import RedisError, ResponseError

from gateway.core import keys
from gateway.core.config import Settings
from gateway.core.store import start_embedded


@dataclass
class Copied:
    copied: int = 0
    renamed: int = 0
    existing: int = 0  # already on the target: kept (without --replace)
    vanished: int = 0  # expired between the scan and the dump


def target_client(settings: Settings) -> tuple[redis.Redis, Callable[[], None]]:
    """The config's Redis (a cluster client with ``redis_cluster``) and how to let it go."""
    if settings.redis_cluster and settings.redis_url:
        cluster = RedisCluster.from_url(settings.redis_url)
        return cast(redis.Redis, cluster), cluster.close
    if settings.redis_url:
        single = redis.Redis.from_url(settings.redis_url)
        return single, single.close
    embedded = start_embedded(settings.data_dir)
    single = redis.Redis.from_url(embedded.url)

    def close() -> None:
        single.close()
        embedded.stop()

    return single, close


def copy_keys(
    source: redis.Redis,
    target: redis.Redis,
    rename: Callable[[str], str],
    replace: bool = False,
    batch: int = 500,
) -> Copied:
    done = Copied()
    names: list[str] = []
    for raw in source.scan_iter(match=keys.PLAIN_PREFIX + "*", count=1000):
        names.append(keys.text(raw))
        if len(names) >= batch:
            _copy(source, target, names, rename, replace, done)
            names = []
    _copy(source, target, names, rename, replace, done)
    return done


def _copy(
    source: redis.Redis,
    target: redis.Redis,
    names: list[str],
    rename: Callable[[str], str],
    replace: bool,
    done: Copied,
) -> None:
    if not names:
        return
    read = source.pipeline(transaction=False)
    for name in names:
        read.dump(name)
        read.pttl(name)
    got: list[Any] = read.execute()
    write = target.pipeline(transaction=False)
    moved = []
    for i, name in enumerate(names):
        payload, ttl = got[2 * i], got[2 * i + 1]
        if payload is None or ttl == -2:
            done.vanished += 1
            continue
        new = rename(name)
        write.restore(new, max(int(ttl), 0), payload, replace=replace)
        moved.append((name, new))
    for (name, new), result in zip(moved, write.execute(raise_on_error=False), strict=True):
        if isinstance(result, ResponseError) and "BUSYKEY" in str(result):
            done.existing += 1
        elif isinstance(result, Exception):
            raise result
        else:
            done.copied += 1
            done.renamed += new != name


def main(settings: Settings, source_url: str, replace: bool) -> int:
    source = redis.Redis.from_url(source_url)
    target, close = target_client(settings)
    rename = keys.cluster_name if settings.redis_cluster else (lambda name: name)
    try:
        done = copy_keys(source, target, rename, replace)
    except RedisError as exc:
        print(f"gateway migrate-keys: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        source.close()
        close()
    print(
        f"copied {done.copied} keys ({done.renamed} renamed for the cluster); "
        f"{done.existing} already on the target were kept"
        + ("" if not done.existing else " (--replace overwrites them)")
        + (f"; {done.vanished} expired meanwhile" if done.vanished else "")
    )
    return 0
