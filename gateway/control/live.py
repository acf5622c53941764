"""The live routing state of one replica: the router built from Redis, kept current.

Experiments, registered models, runtime API keys and tenant policies live in Redis,
shared by every replica. Each replica polls ``fw:ctl:version`` every
``control.refresh_s`` and, when it moved, reloads the state and swaps in a new
:class:`~gateway.control.routing.Router` — so a change (a revoked key too) reaches every replica
within a second, with no restart. While Redis is unreachable a replica keeps routing
with what it last loaded. The modules that change the state (experiments, registry,
apikeys) and the ones that read it (adapters, decider, chat, auth) share one
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

from gateway.control.routing import Router
from gateway.core import access, keys
from gateway.core.auth import Principal, runtime_principal
from gateway.core.config import Budget, Experiment, ModelVersion, Settings

log = logging.getLogger(__name__)


class LiveState:
    def __init__(self, redis: aioredis.Redis, ks: keys.Keyspace, settings: Settings) -> None:
        self.redis = redis
        self.ks = ks
        self.settings = settings
        self.router = Router.from_settings(settings)  # until the live state is loaded
        self.registered: dict[str, ModelVersion] = {}
        self.records: dict[str, dict[str, Any]] = {}  # registration records, with lineage
        self.principals: dict[bytes, Principal] = {}  # runtime keys by digest (not revoked)
        self.tenant_budgets: dict[str, Budget] = {}
        self.loaded_version: bytes | None = None
        self.seeded = False
        self.replicas_due = asyncio.Event()  # set when replicas should be listed now

    async def load(self) -> None:
        """Read the live state and swap in a new router."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.get(self.ks.control_version)
        pipe.hgetall(self.ks.experiments)
        pipe.hgetall(self.ks.models)
        pipe.hgetall(self.ks.api_keys)
        pipe.hgetall(self.ks.tenants)
        version, raw_exps, raw_models, raw_keys, raw_tenants = await pipe.execute()
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
            foreign = sorted(
                m
                for m in experiments[name].models()
                if m in models and not access.referable(experiments[name].tenant, models[m].tenant)
            )
            if foreign:  # stored before the access rule refused it: never served
                log.error(
                    "experiment %s names another tenant's model(s) %s: ignored",
                    name,
                    ", ".join(foreign),
                )
                del experiments[name]
                continue
            versions[name] = int(state["version"])
        principals: dict[bytes, Principal] = {}
        for v in raw_keys.values():
            try:
                record = orjson.loads(v)
                if not record.get("revoked_at"):
                    principals[bytes.fromhex(record["digest"])] = runtime_principal(record)
            except (ValidationError, orjson.JSONDecodeError, KeyError, ValueError) as exc:
                log.error("runtime API key: stored record is invalid, ignored: %s", exc)
        budgets: dict[str, Budget] = {}
        for k, v in raw_tenants.items():
            with contextlib.suppress(ValidationError, orjson.JSONDecodeError, TypeError):
                if budget := orjson.loads(v).get("budget"):
                    budgets[keys.text(k)] = Budget.model_validate(budget)
        self.registered, self.records = registered, records
        self.principals, self.tenant_budgets = principals, budgets
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
                if await self.redis.get(self.ks.control_version) != self.loaded_version:
                    await self.load()
                    self.replicas_due.set()  # a new adapter: list replicas now
                failing = False
            except (RedisError, OSError) as exc:
                if not failing:
                    log.warning("live routing state: cannot refresh (%s); keeping the last", exc)
                failing = True
