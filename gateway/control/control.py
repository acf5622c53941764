"""The control plane of one replica: live routing state and the four jobs that use it.

* :mod:`gateway.control.live` — the live state (router, registered models), followed in Redis;
* :mod:`gateway.control.experiments` — experiment changes: compare-and-set, audit, pins;
* :mod:`gateway.control.registry` — model versions registered at runtime;
* :mod:`gateway.control.adapters` — LoRA adapters loaded on every vLLM replica;
* :mod:`gateway.control.decisions` — the report and the decider's automatic decisions;
* :mod:`gateway.control.apikeys` — runtime API keys, tenant budgets and their audit log.

:class:`Control` wires them together, starts and stops their background tasks, and
is what the app, the admin API and the CLI hold.
"""

from __future__ import annotations

import asyncio
import logging

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.control import report
from gateway.control.adapters import Adapters
from gateway.control.apikeys import ApiKeys
from gateway.control.decisions import Decisions
from gateway.control.experiments import Experiments
from gateway.control.live import LiveState
from gateway.control.registry import Registry
from gateway.control.routing import Router
from gateway.core import keys, store
from gateway.core.config import Settings
from gateway.core.documents import ModelEntry, Report
from gateway.serving.metrics import Metrics
from gateway.serving.upstream import UpstreamClient

log = logging.getLogger(__name__)


class Control:
    def __init__(
        self,
        *,
        redis: aioredis.Redis,
        ks: keys.Keyspace,
        settings: Settings,
        upstream: UpstreamClient,
        metrics: Metrics,
    ) -> None:
        self.ks = ks
        self.live = LiveState(redis, ks, settings)
        self.experiments = Experiments(redis, ks, settings, self.live)
        self.adapters = Adapters(self.live, upstream)
        self.registry = Registry(redis, ks, settings, upstream, self.live, self.adapters)
        self.decisions = Decisions(redis, ks, settings, self.live, self.experiments, metrics)
        self.keys = ApiKeys(redis, ks, self.live)
        self.languages = report.LanguageGuesser()  # started by the first report
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def router(self) -> Router:
        return self.live.router

    async def start(self) -> None:
        try:
            await self.experiments.seed()
            await self.live.load()
        except (RedisError, OSError) as exc:
            log.error(
                "live routing state unavailable (%s): routing by the config file until "
                "Redis answers",
                exc,
            )
        self._tasks = [
            asyncio.create_task(self.live.follow(self.experiments.seed), name="control-follow"),
            asyncio.create_task(self.adapters.run(), name="control-replicas"),
            asyncio.create_task(self.decisions.run(), name="control-decide"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        # gather, not a suppress(CancelledError) per task: that would also swallow a
        # cancellation of stop() itself (the bounded shutdown in app.py relies on it).
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def load(self) -> None:
        await self.live.load()

    async def report(self, name: str, languages: bool = True) -> Report:
        """The experiment's A/B report; with ``languages``, each arm's share of answers
        in the language of the question too (a sample, guessed now: see ``report.py``)."""
        rep = await self.decisions.report(name)
        if languages:
            arms = [a["model"] for a in rep["arms"]]
            with store.translated():
                shares = await report.languages(
                    self.decisions.redis, self.ks, self.languages, name, arms, rep["version"]
                )
            for arm in rep["arms"]:
                arm["language"] = shares[arm["model"]]
        return rep

    def models(self) -> list[ModelEntry]:
        return self.registry.models()
