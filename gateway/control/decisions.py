"""Automatic decisions: every ``control.decide_s`` each ``auto_promote`` experiment's
report is computed and its decision applied (rules: :mod:`gateway.control.decider`).

One replica at a time decides an experiment (a lock in Redis). A look moves each
candidate's running minimum of the always-valid p-value (kept per experiment version);
an action is a compare-and-set on the version the look was about, so a change an
operator made in the meantime is never overwritten. Each step is an audited change
by ``decider``, its reason in the history entry.

**A person's change pauses it.** While the experiment is paused (its state's ``pin``:
a ramp, promote, rollback or weights change by anyone but the decider,
:mod:`gateway.control.experiments`) a look is still recorded but nothing is applied,
however strong the evidence — a person's rollback stays — until an operator resumes
(``POST /admin/experiments/{name}/resume``, the console, ``gateway experiments resume``).
"""

from __future__ import annotations

import asyncio
import logging

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.control import report
from gateway.control.decider import PROMOTE, RAMP, ROLLBACK
from gateway.control.experiments import DECIDER, Experiments, promoted, weighted
from gateway.control.live import LiveState
from gateway.core import keys, store
from gateway.core.config import Experiment, Settings
from gateway.core.documents import ExperimentState, Report
from gateway.core.errors import Conflict, InvalidRequest, NotFound, StoreUnavailable
from gateway.core.locks import AsyncLock
from gateway.serving.metrics import Metrics

log = logging.getLogger(__name__)

SEQUENTIAL_TTL_S = 90 * 86400
PAUSED = "paused"  # the metric's action for a look at a paused experiment


class Decisions:
    def __init__(
        self,
        redis: aioredis.Redis,
        ks: keys.Keyspace,
        settings: Settings,
        live: LiveState,
        experiments: Experiments,
        metrics: Metrics,
    ) -> None:
        self.redis = redis
        self.ks = ks
        self.settings = settings
        self.live = live
        self.experiments = experiments
        self.metrics = metrics

    async def report(self, name: str) -> Report:
        state = await self.experiments.state(name)
        with store.translated():
            return await report.report(self.redis, self.ks, name, state, self.live.router.models)

    async def run(self) -> None:
        """Background task: decide every ``auto_promote`` experiment each period."""
        while True:
            await asyncio.sleep(self.settings.control.decide_s)
            for name, exp in list(self.live.router.experiments.items()):
                if not exp.auto_promote:
                    continue
                try:
                    await self.decide(name)
                except (RedisError, OSError, StoreUnavailable) as exc:
                    log.warning("auto decision for %s skipped: %s", name, exc)
                except (Conflict, InvalidRequest, NotFound) as exc:
                    log.warning("auto decision for %s not applied: %s", name, exc.message)

    async def decide(self, name: str) -> ExperimentState | None:
        """One look: record it, apply the decision. The new state, or None: nothing done."""
        lock = AsyncLock(self.redis, self.ks.decision_lock(name))
        if not await lock.acquire():
            return None
        try:
            rep = await self.report(name)
            await self._record_look(name, rep)
            if rep.get("pin"):  # paused by a person: look, never act
                self.metrics.decisions.labels(name, PAUSED).inc()
                return None
            decision = rep["decision"]
            model, action = decision["model"], decision["action"]
            self.metrics.decisions.labels(name, action).inc()
            if action == PROMOTE:
                edit = promoted(model)
                text = f"auto promote {model}"
            elif action in (RAMP, ROLLBACK):
                edit = weighted(decision["weights"])
                text = (
                    f"auto ramp {model} to {decision['share']:g}%"
                    if action == RAMP
                    else f"auto rollback {model}"
                )
            else:
                return None
            state = await self.experiments.state(name)
            if state["version"] != rep["version"]:
                return None  # changed since the look: the next look decides
            current = Experiment.model_validate(state["spec"])
            if edit(current) == current:
                return None  # already applied
            why = "; ".join(decision["reasons"])
            return await self.experiments.change(
                name,
                DECIDER,
                f"{text}: {why}",
                edit,
                expect_version=rep["version"],
                ramp_step=action == RAMP,
            )
        finally:
            await lock.release()

    async def _record_look(self, name: str, rep: Report) -> None:
        """Keep each ready candidate's running minimum p for the version looked at."""
        ready = {
            c["candidate"]: c["p_value"]
            for c in rep["comparisons"]
            if c["ready"] and c["p_value"] is not None
        }
        if not ready:
            return
        key = self.ks.sequential(name, rep["version"])
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(key, mapping={k: repr(v) for k, v in ready.items()})
        pipe.expire(key, SEQUENTIAL_TTL_S)
        await pipe.execute()
