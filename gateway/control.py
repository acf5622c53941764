"""Live routing state: experiments and runtime models in Redis, shared by every replica.

Experiments start from the config file: at start-up each one not yet in Redis is
written there (version 1, "created from config"). From then on Redis is the truth and
the admin API changes it; the config's copy is not read again, so a restart never
undoes an operator's change.

Every change is a compare-and-set (one Lua script) on the experiment's ``version``:
it writes the new state, appends the audit entry (who, when, before, after) and bumps
``fw:ctl:version``. Each replica polls that counter every ``control.refresh_s`` and,
when it moved, reloads the state and swaps in a new :class:`~gateway.routing.Router`
— so a change reaches every replica within a second, with no restart. While Redis is
unreachable a replica keeps routing with what it last loaded.

Model versions may be registered at runtime. A LoRA adapter on a vLLM upstream is
loaded into every replica (``/v1/load_lora_adapter``) and must then be listed by it
before it is registered; removing unloads it. A background task lists each vLLM
replica's models every ``control.replica_refresh_s`` and loads any registered adapter
it lacks (a replica that restarted or appeared), and :class:`~gateway.replicas.Pool`
sends a model only to replicas that list it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable
from typing import Any

import orjson
import redis.asyncio as aioredis
from pydantic import ValidationError
from redis.exceptions import RedisError

from . import keys, report
from .config import (
    NAME_PATTERN,
    Experiment,
    ModelVersion,
    Settings,
    experiment_problems,
    format_path,
)
from .errors import Conflict, InvalidRequest, NotFound, StoreUnavailable
from .metrics import Metrics
from .routing import Router
from .upstream import UpstreamClient

log = logging.getLogger(__name__)

HISTORY_CAP = 1000

# KEYS: state hash, history list, version counter
# ARGV: name, expected version, new state JSON, history entry JSON, history cap
# Returns -1 when written, else the version found (the caller retries or reports).
_CHANGE = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
local v = 0
if cur then v = tonumber(cjson.decode(cur)['version']) end
if v ~= tonumber(ARGV[2]) then return v end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('RPUSH', KEYS[2], ARGV[4])
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[5]), -1)
redis.call('INCR', KEYS[3])
return -1
"""

# KEYS: models hash, models history, version counter
# ARGV: name, record JSON ('' removes), history entry JSON, history cap
# Returns 1 when done, 0 when the name is taken (add) or absent (remove).
_MODEL = """
local done
if ARGV[2] == '' then
  done = redis.call('HDEL', KEYS[1], ARGV[1])
else
  done = redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])
end
if done == 1 then
  redis.call('RPUSH', KEYS[2], ARGV[3])
  redis.call('LTRIM', KEYS[2], -tonumber(ARGV[4]), -1)
  redis.call('INCR', KEYS[3])
end
return done
"""


def _store_error(exc: Exception) -> StoreUnavailable:
    return StoreUnavailable(f"The control store (Redis) is unavailable: {exc}")


def _invalid(exc: ValidationError, prefix: str = "") -> InvalidRequest:
    first = exc.errors()[0]
    path = format_path(tuple(first["loc"]))[:256]  # a key of the body: bounded in the reply
    msg = "unknown field" if first["type"] == "extra_forbidden" else first["msg"]
    return InvalidRequest(f"{prefix}{path}: {msg}", param=f"{prefix}{path}".rstrip("."))


def parse_experiment(body: Any) -> Experiment:
    if not isinstance(body, dict):
        raise InvalidRequest("The body must be a JSON object describing the experiment.")
    try:
        # strict: the API takes JSON types as they are ("90" or false is no weight); the
        # config file stays lax, where ${ENV} substitution yields strings
        return Experiment.model_validate(body, strict=True)
    except ValidationError as exc:
        raise _invalid(exc) from None


class Control:
    def __init__(
        self,
        *,
        redis: aioredis.Redis,
        settings: Settings,
        upstream: UpstreamClient,
        metrics: Metrics,
    ) -> None:
        self.redis = redis
        self.settings = settings
        self.upstream = upstream
        self.metrics = metrics
        self.router = Router.from_settings(settings)  # until the live state is loaded
        self.registered: dict[str, ModelVersion] = {}
        self.records: dict[str, dict[str, Any]] = {}  # registration records, with lineage
        self.loaded_version: bytes | None = None
        self._seeded = False
        self._change = redis.register_script(_CHANGE)
        self._model = redis.register_script(_MODEL)
        self._replicas_due = asyncio.Event()
        # Held by a refresh pass and by a removal: a pass that began before a model was
        # removed must not load its adapter back after the removal unloaded it.
        self._adapters = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []

    # -- start, stop, follow ------------------------------------------------------------

    async def start(self) -> None:
        try:
            await self.seed()
            await self.load()
        except (RedisError, OSError) as exc:
            log.error(
                "live routing state unavailable (%s): routing by the config file until "
                "Redis answers",
                exc,
            )
        self._tasks = [
            asyncio.create_task(self._follow(), name="control-follow"),
            asyncio.create_task(self._replicas(), name="control-replicas"),
            asyncio.create_task(self._decide(), name="control-decide"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        # gather, not a suppress(CancelledError) per task: that would also swallow a
        # cancellation of stop() itself (the bounded shutdown in app.py relies on it).
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def seed(self) -> None:
        """Write each config experiment that Redis does not have yet (version 1)."""
        for name, exp in self.settings.experiments.items():
            state = self._state(name, 1, exp, None, "config")
            entry = self._entry(1, "created from config", "config", None, exp)
            await self._change(
                keys=[keys.EXPERIMENTS, keys.history(name), keys.CONTROL_VERSION],
                args=[name, 0, orjson.dumps(state), orjson.dumps(entry), HISTORY_CAP],
            )
        self._seeded = True

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

    async def _follow(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self.settings.control.refresh_s)
            try:
                if not self._seeded:  # Redis was down at start-up
                    await self.seed()
                if await self.redis.get(keys.CONTROL_VERSION) != self.loaded_version:
                    await self.load()
                    self._replicas_due.set()  # a new adapter: list replicas now
                failing = False
            except (RedisError, OSError) as exc:
                if not failing:
                    log.warning("live routing state: cannot refresh (%s); keeping the last", exc)
                failing = True

    async def _replicas(self) -> None:
        while True:
            await self.refresh_replicas()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._replicas_due.wait(), self.settings.control.replica_refresh_s
                )
            self._replicas_due.clear()

    async def refresh_replicas(self) -> None:
        """Discover replicas, list what each vLLM replica serves, load missing adapters."""
        async with self._adapters:
            await self._refresh_replicas()

    async def _refresh_replicas(self) -> None:
        adapters = {
            m.model: (m.upstream, m.adapter_path)
            for m in self.router.models.values()
            if m.adapter_path
        }
        for name, pool in self.upstream.pools.items():
            await pool.discover()
            if pool.upstream.kind != "vllm":
                continue
            wanted = {model: path for model, (up, path) in adapters.items() if up == name}
            for replica in list(pool.replicas):
                await self.upstream.list_models(pool, replica)
                if replica.models is None:
                    continue
                missing = {m: p for m, p in wanted.items() if m not in replica.models}
                for model, path in missing.items():
                    ok, message = await self.upstream.load_adapter(pool, replica, model, path)
                    log_fn = log.info if ok else log.error
                    log_fn("replica %s: loading adapter %s: %s", replica.url, model, message)
                if missing:
                    await self.upstream.list_models(pool, replica)

    # -- experiments --------------------------------------------------------------------

    async def states(self) -> list[dict[str, Any]]:
        try:
            raw = await self.redis.hgetall(keys.EXPERIMENTS)
        except (RedisError, OSError) as exc:
            raise _store_error(exc) from None
        return [orjson.loads(v) for _, v in sorted(raw.items())]

    async def state(self, name: str) -> dict[str, Any]:
        try:
            raw = await self.redis.hget(keys.EXPERIMENTS, name)
        except (RedisError, OSError) as exc:
            raise _store_error(exc) from None
        if raw is None:
            raise NotFound(f"No experiment named '{name:.128}'.", param="name")
        doc: dict[str, Any] = orjson.loads(raw)
        return doc

    async def history(self, name: str) -> list[dict[str, Any]]:
        await self.state(name)
        try:
            raw = await self.redis.lrange(keys.history(name), 0, -1)
        except (RedisError, OSError) as exc:
            raise _store_error(exc) from None
        return [orjson.loads(v) for v in raw]

    async def put(self, name: str, body: Any, who: str) -> dict[str, Any]:
        spec = parse_experiment(body)
        return await self.change(name, who, "replaced", lambda _cur: spec, create=True)

    async def add_arm(self, name: str, body: Any, who: str) -> dict[str, Any]:
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            raise InvalidRequest("'model' is required: the model to add as an arm.", param="model")

        def add(cur: Experiment | None) -> Experiment:
            assert cur is not None
            if any(a.model == body["model"] for a in cur.arms):
                raise Conflict(
                    f"'{body['model']:.128}' is already an arm of '{name}': change its weight "
                    f"with PUT /admin/experiments/{name}.",
                    param="model",
                )
            arms = [a.model_dump() for a in cur.arms] + [body]
            return parse_experiment({**cur.model_dump(), "arms": arms})

        return await self.change(name, who, f"added arm {body['model']:.128}", add)

    async def promote(self, name: str, body: Any, who: str) -> dict[str, Any]:
        model = body.get("model") if isinstance(body, dict) else None
        if not isinstance(model, str):
            raise InvalidRequest("'model' is required: the arm to promote.", param="model")
        return await self.change(name, who, f"promoted {model:.128}", _promoted(model))

    async def rollback(self, name: str, who: str) -> dict[str, Any]:
        return await self.change(name, who, "rolled back", None)

    async def change(
        self,
        name: str,
        who: str,
        action: str,
        edit: Callable[[Experiment | None], Experiment] | None,
        *,
        create: bool = False,
    ) -> dict[str, Any]:
        """Apply ``edit`` to the current spec (``None``: roll back) as a compare-and-set."""
        if not _valid_name(name):
            raise InvalidRequest(f"'{name:.128}' is not a valid experiment name.", param="name")
        for _ in range(10):
            try:
                raw = await self.redis.hget(keys.EXPERIMENTS, name)
                models = set(self.settings.models) | {
                    keys.text(k) for k in await self.redis.hkeys(keys.MODELS)
                }
            except (RedisError, OSError) as exc:
                raise _store_error(exc) from None
            cur = orjson.loads(raw) if raw is not None else None
            if cur is None and not create:
                raise NotFound(f"No experiment named '{name:.128}'.", param="name")
            if cur is None and name in models:
                raise Conflict(f"'{name}' is already the name of a model.", param="name")
            before = Experiment.model_validate(cur["spec"]) if cur else None
            if edit is None:
                if cur is None or cur.get("previous") is None:
                    raise Conflict(f"Experiment '{name}' has no earlier state to roll back to.")
                after, previous = Experiment.model_validate(cur["previous"]), before
            else:
                after, previous = edit(before), before
            problems = experiment_problems(after, models)
            if problems:
                raise InvalidRequest(problems[0], param=problems[0].split(":")[0])
            version = (cur["version"] if cur else 0) + 1
            state = self._state(name, version, after, previous, who)
            entry = self._entry(version, action if cur else "created", who, before, after)
            try:
                found = await self._change(
                    keys=[keys.EXPERIMENTS, keys.history(name), keys.CONTROL_VERSION],
                    args=[name, version - 1, orjson.dumps(state), orjson.dumps(entry),
                          HISTORY_CAP],
                )  # fmt: skip
            except (RedisError, OSError) as exc:
                raise _store_error(exc) from None
            if found == -1:
                await self._reload_quietly()
                return state
        raise Conflict(f"Experiment '{name}' is being changed by others; try again.")

    def _state(
        self, name: str, version: int, spec: Experiment, previous: Experiment | None, who: str
    ) -> dict[str, Any]:
        return {
            "object": "experiment",
            "name": name,
            "version": version,
            "spec": spec.model_dump(),
            "previous": previous.model_dump() if previous else None,
            "updated_at": time.time(),
            "updated_by": who,
        }

    @staticmethod
    def _entry(
        version: int, action: str, who: str, before: Experiment | None, after: Experiment
    ) -> dict[str, Any]:
        return {
            "version": version,
            "action": action,
            "by": who,
            "at": time.time(),
            "before": before.model_dump() if before else None,
            "after": after.model_dump(),
        }

    async def _reload_quietly(self) -> None:
        """Route by a change at once on the replica that made it (others follow by polling)."""
        with contextlib.suppress(RedisError, OSError):
            await self.load()
            self._replicas_due.set()

    # -- reports and automatic decisions ------------------------------------------------

    async def report(self, name: str) -> dict[str, Any]:
        state = await self.state(name)
        try:
            return await report.report(
                self.redis,
                name,
                Experiment.model_validate(state["spec"]),
                int(state["version"]),
                self.router.models,
            )
        except (RedisError, OSError) as exc:
            raise _store_error(exc) from None

    async def _decide(self) -> None:
        while True:
            await asyncio.sleep(self.settings.control.decide_s)
            for name, exp in list(self.router.experiments.items()):
                if not exp.auto_promote:
                    continue
                try:
                    await self.decide(name)
                except (RedisError, OSError, StoreUnavailable) as exc:
                    log.warning("auto decision for %s skipped: %s", name, exc)
                except (Conflict, InvalidRequest, NotFound) as exc:
                    log.warning("auto decision for %s not applied: %s", name, exc.message)

    async def decide(self, name: str) -> dict[str, Any] | None:
        """Apply the report's decision (auto_promote); one replica at a time. None: nothing."""
        lock = keys.decision_lock(name)
        if not await self.redis.set(lock, "1", nx=True, ex=30):
            return None
        try:
            rep = await self.report(name)
            decision = rep["decision"]
            model = decision["model"]
            current = Experiment.model_validate((await self.state(name))["spec"])
            if decision["action"] == report.PROMOTE:
                edit = _promoted(model)
            elif decision["action"] == report.ROLLBACK:
                edit = _weighted(model, 0.0)
            else:
                return None
            if edit(current).arms == current.arms:
                return None  # already applied
            why = "; ".join(decision["reasons"])
            return await self.change(name, "auto-decision", f"auto {decision['action']} "
                                     f"{model}: {why}", edit)  # fmt: skip
        finally:
            await self.redis.delete(lock)

    # -- models -------------------------------------------------------------------------

    def models(self) -> list[dict[str, Any]]:
        out = []
        for name, m in self.router.models.items():
            parents = {
                r.parents[m.model]
                for r in self.upstream.pools[m.upstream].replicas
                if m.model in r.parents
            } if m.upstream in self.upstream.pools else set()  # fmt: skip
            out.append(
                {
                    "id": name,
                    "object": "model",
                    "source": "config" if name in self.settings.models else "registered",
                    **m.model_dump(),
                    "parent": min(parents) if parents else None,
                }
            )
        return out

    def model(self, name: str) -> dict[str, Any]:
        """One model version, with who registered it and its lineage (where it came from)."""
        entry = next((m for m in self.models() if m["id"] == name), None)
        if entry is None:
            raise NotFound(f"No model named '{name:.128}'.", param="name")
        record = self.records.get(name, {})
        used_by = sorted(n for n, e in self.router.experiments.items() if name in e.models())
        return {**entry, "registered_by": record.get("registered_by"),
                "registered_at": record.get("registered_at"),
                "lineage": record.get("lineage"), "experiments": used_by}  # fmt: skip

    async def register(self, body: Any, who: str) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise InvalidRequest("The body must be a JSON object describing the model.")
        name = body.get("name")
        if not isinstance(name, str) or not _valid_name(name):
            raise InvalidRequest(
                "'name' is required: letters, digits and . _ / - (at most 128).", param="name"
            )
        lineage = body.get("lineage")
        if lineage is not None and not isinstance(lineage, dict):
            raise InvalidRequest("'lineage' must be an object.", param="lineage")
        spec_doc = {k: v for k, v in body.items() if k not in ("name", "lineage")}
        spec_doc.setdefault("model", name)
        try:
            spec = ModelVersion.model_validate(spec_doc, strict=True)
        except ValidationError as exc:
            raise _invalid(exc) from None
        pool = self.upstream.pools.get(spec.upstream)
        if pool is None:
            raise InvalidRequest(f"upstream: unknown upstream '{spec.upstream:.128}'.",
                                 param="upstream")  # fmt: skip
        if name in self.router.models or name in self.router.experiments:
            raise Conflict(f"'{name}' is already the name of a model or experiment.", param="name")
        if spec.adapter_path and pool.upstream.kind != "vllm":
            raise InvalidRequest("adapter_path: adapters need a vllm upstream.",
                                 param="adapter_path")  # fmt: skip
        if spec.adapter_path:
            await self._load_everywhere(spec, spec.adapter_path)
        record = {"name": name, "spec": spec.model_dump(), "registered_by": who,
                  "registered_at": time.time(), "lineage": lineage}  # fmt: skip
        entry = {"action": "registered", "name": name, "by": who, "at": time.time(),
                 "spec": spec.model_dump()}  # fmt: skip
        try:
            done = await self._model(
                keys=[keys.MODELS, keys.MODELS_HISTORY, keys.CONTROL_VERSION],
                args=[name, orjson.dumps(record), orjson.dumps(entry), HISTORY_CAP],
            )
        except (RedisError, OSError) as exc:
            raise _store_error(exc) from None
        if not done:
            raise Conflict(f"'{name}' is already registered.", param="name")
        await self._reload_quietly()
        return {"id": name, "object": "model", "source": "registered", **spec.model_dump()}

    async def _load_everywhere(self, spec: ModelVersion, path: str) -> None:
        """Load an adapter on every replica; it must be listed by at least one afterwards."""
        pool = self.upstream.pools[spec.upstream]
        results = await asyncio.gather(
            *(self.upstream.load_adapter(pool, r, spec.model, path) for r in pool.replicas)
        )
        if not any(ok for ok, _ in results):
            raise InvalidRequest(
                f"adapter_path: vLLM could not load '{path:.256}': "
                + "; ".join(msg for _, msg in results),
                param="adapter_path",
                code="adapter_load_failed",
            )
        for replica, (ok, _) in zip(pool.replicas, results, strict=True):
            if ok:
                await self.upstream.list_models(pool, replica)
        if not any(r.models and spec.model in r.models for r in pool.replicas):
            raise InvalidRequest(
                f"adapter_path: vLLM accepted '{path:.256}' but does not list "
                f"'{spec.model}' among its models.",
                param="adapter_path",
                code="adapter_load_failed",
            )

    async def remove(self, name: str, who: str) -> dict[str, Any]:
        if name in self.settings.models:
            raise Conflict(f"'{name}' is defined in the config file: remove it there.",
                           param="name")  # fmt: skip
        spec = self.registered.get(name)
        if spec is None:
            await self._reload_quietly()
            spec = self.registered.get(name)
        if spec is None:
            raise NotFound(f"No registered model named '{name:.128}'.", param="name")
        users = sorted(n for n, e in self.router.experiments.items() if name in e.models())
        if users:
            raise Conflict(
                f"'{name}' is still used by experiment(s) {', '.join(users)}: take it out "
                "of them first.",
                param="name",
            )
        entry = {"action": "removed", "name": name, "by": who, "at": time.time(),
                 "spec": spec.model_dump()}  # fmt: skip
        async with self._adapters:  # no refresh pass between the unload and the new router
            try:
                await self._model(
                    keys=[keys.MODELS, keys.MODELS_HISTORY, keys.CONTROL_VERSION],
                    args=[name, "", orjson.dumps(entry), HISTORY_CAP],
                )
            except (RedisError, OSError) as exc:
                raise _store_error(exc) from None
            unloaded: list[str] = []
            if spec.adapter_path:
                pool = self.upstream.pools[spec.upstream]
                for r in pool.replicas:
                    ok, msg = await self.upstream.unload_adapter(pool, r, spec.model)
                    unloaded.append(r.url if ok else f"{r.url}: {msg}")
            await self._reload_quietly()
        return {"id": name, "object": "model", "deleted": True, "unloaded": unloaded}


def _valid_name(name: str) -> bool:
    return re.fullmatch(NAME_PATTERN, name) is not None


def _weighted(model: str, weight: float) -> Callable[[Experiment | None], Experiment]:
    def edit(cur: Experiment | None) -> Experiment:
        assert cur is not None
        arms = [
            {"model": a.model, "weight": weight if a.model == model else a.weight} for a in cur.arms
        ]
        return Experiment.model_validate({**cur.model_dump(), "arms": arms})

    return edit


def _promoted(model: str) -> Callable[[Experiment | None], Experiment]:
    def edit(cur: Experiment | None) -> Experiment:
        assert cur is not None
        if model not in {a.model for a in cur.arms}:
            raise InvalidRequest(f"'{model:.128}' is not an arm of this experiment.",
                                 param="model")  # fmt: skip
        arms = [{"model": a.model, "weight": 100.0 if a.model == model else 0.0}
                for a in cur.arms]  # fmt: skip
        return Experiment.model_validate({**cur.model_dump(), "arms": arms})

    return edit
