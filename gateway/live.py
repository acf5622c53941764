"""The live routing state of one replica: the router built from Redis, kept current.

Experiments and registered models live in Redis, shared by every replica. Each replica
polls ``fw:ctl:version`` every ``control.refresh_s`` and, when it moved, reloads the
state and swaps in a new :class:`~gateway.routing.Router` — so a change reaches every
replica within a second, with no restart. While Redis is unreachable a replica keeps
routing with what it last loaded. The modules that change the state (experiments,
registry) and the ones that read it (adapters, decider, chat) share one
:class:`LiveState`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import redis.asyncio as aioredis
from pydantic import ValidationError
from redis.exceptions import RedisError

from . import keys
from .config import Experiment, ModelVersion, Settings
from .errors import StoreUnavailable
from .routing import Router

log = logging.getLogger(__name__)


def store_error(exc: Exception) -> StoreUnavailable:
    return StoreUnavailable(f"The control store (Redis) is unavailable: {exc}")


class LiveState:
    def __init__(self, redis: aioredis.Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self.router = Router.from_settings(settings)  # until the live state is loaded
        self.registered: dict[str, ModelVersion] = {}
        self.records: dict[str, dict[str, Any]] = {}  # registration records, with lineage
        self.loaded_version: bytes | None = None
        self.seeded = False
        self.replicas_due = asyncio.Event()  # set when replicas should be listed now

    async def load(self) -> None:
        """Read the live state and swap in a new router."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.get(keys.CONTROL_VERSION)
        pipe.hgetall(keys.EXPERIMENTS)
        pipe.hgetall(keys.MODELS)
        version, raw_exps, raw_models = await pipe.execute()
        registered: dict[str, ModelVersion] = {}
        records: dict[str, dict[str, Any]] = {}
        for k, v in raw_models.items():
            with contextlib.suppress(ValidationError, orjson.JSONDecodeError):
                record = orjson.loads(v)
                registered[keys.text(k)] = ModelVersion.model_validate(record["spec"])
                records[keys.text(k)] = record
        models = {**registered, **self.settings.models}
        experiments: dict[str, Experiment] = {}
        versions: dict[str, int] = {}
        for k, v in raw_exps.items():
            name, state = keys.text(k), orjson.loads(v)
            try:
                experiments[name] = Experiment.model_validate(state["spec"])
            except ValidationError as exc:
                log.error("experiment %s: stored state is invalid, ignored: %s", name, exc)
                continue
            versions[name] = int(state["version"])
        self.registered, self.records = registered, records
        self.router = Router(self.settings.upstreams, models, experiments, versions)
        self.loaded_version = version

    async def reload_quietly(self) -> None:
        """Route by a change at once on the replica that made it (others follow by polling)."""
        with contextlib.suppress(RedisError, OSError):
            await self.load()
            self.replicas_due.set()

    async def follow(self, seed: Callable[[], Awaitable[None]]) -> None:
        """Background task: reload whenever the version counter moves (``seed`` first, if
        Redis was down at start-up)."""
        failing = False
        while True:
            await asyncio.sleep(self.settings.control.refresh_s)
            try:
                if not self.seeded:
                    await seed()
                if await self.redis.get(keys.CONTROL_VERSION) != self.loaded_version:
                    await self.load()
                    self.replicas_due.set()  # a new adapter: list replicas now
                failing = False
            except (RedisError, OSError) as exc:
                if not failing:
                    log.warning("live routing state: cannot refresh (%s); keeping the last", exc)
                failing = True
