"""Experiments as live state: every change a compare-and-set with its audit entry.

Experiments start from the config file: at start-up each one not yet in Redis is
written there (version 1, "created from config"). From then on Redis is the truth and
the admin API changes it; the config's copy is not read again, so a restart never
undoes an operator's change.

Every change is a compare-and-set (one Lua script) on the experiment's ``version``:
it writes the new state, appends the audit entry (who, when, before, after) and bumps
``fw:ctl:version``, which every replica follows (``live.py``).

**Operators win.** A person's change of the traffic — a ramp, a promote, a rollback, a
PUT that changes the arms' weights or the control — *pauses* automatic decisions on the
experiment: the state's ``pin`` records who paused it, when, at which version and by
what action, and the decider takes no action on it however strong the evidence
(``decisions.py``) until an operator resumes it (:meth:`Experiments.resume`, which
clears the pin without a new version, so the evidence collected since counts). Creating
an experiment, adding an arm (``retrain run``'s canary) or a PUT that leaves the
traffic as it was neither pauses nor resumes. **Ramps:** ``ramp_from`` is the first
version of the current ramp: a decider's ramp step keeps it (the evidence of the ramp's
earlier stages still counts), any other change starts a new ramp at its own version.
**Control follows the promote:** a promote (by a person or the decider) makes the winner
the experiment's ``control``, so the next candidate is compared with it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson
import redis.asyncio as aioredis
from pydantic import ValidationError

from gateway.control.live import LiveState
from gateway.core import access, keys, store
from gateway.core.config import Experiment, Settings, experiment_problems, format_path, valid_name
from gateway.core.documents import ExperimentState, HistoryEntry, Pin
from gateway.core.errors import Conflict, InvalidRequest, NotFound

HISTORY_CAP = 1000
DECIDER = "decider"  # who the decider's changes are by: they set no pin
CONFIG = "config"

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

Edit = Callable[[Experiment | None], Experiment]


def invalid(exc: ValidationError, prefix: str = "") -> InvalidRequest:
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
        raise invalid(exc) from None


class Experiments:
    def __init__(
        self, redis: aioredis.Redis, ks: keys.Keyspace, settings: Settings, live: LiveState
    ) -> None:
        self.redis = redis
        self.ks = ks
        self.settings = settings
        self.live = live
        self._change = redis.register_script(_CHANGE)

    async def seed(self) -> None:
        """Write each config experiment that Redis does not have yet (version 1)."""
        for name, exp in self.settings.experiments.items():
            state = _state(name, 1, exp, None, CONFIG, None, 1)
            entry = _entry(1, "created from config", CONFIG, None, exp)
            await self._change(
                keys=[self.ks.experiments, self.ks.history(name), self.ks.control_version],
                args=[name, 0, orjson.dumps(state), orjson.dumps(entry), HISTORY_CAP],
            )
        self.live.seeded = True

    async def states(self) -> list[ExperimentState]:
        with store.translated():
            raw = await self.redis.hgetall(self.ks.experiments)
        return [orjson.loads(v) for _, v in sorted(raw.items())]

    async def state(self, name: str) -> ExperimentState:
        with store.translated():
            raw = await self.redis.hget(self.ks.experiments, name)
        if raw is None:
            raise NotFound(f"No experiment named '{name:.128}'.", param="name")
        doc: ExperimentState = orjson.loads(raw)
        return doc

    async def history(self, name: str) -> list[HistoryEntry]:
        await self.state(name)
        with store.translated():
            raw = await self.redis.lrange(self.ks.history(name), 0, -1)
        return [orjson.loads(v) for v in raw]

    async def put(self, name: str, body: Any, who: str) -> ExperimentState:
        spec = parse_experiment(body)
        return await self.change(name, who, "replaced", lambda _cur: spec, create=True, pause=None)

    async def add_arm(self, name: str, body: Any, who: str) -> ExperimentState:
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

        return await self.change(name, who, f"added arm {body['model']:.128}", add, pause=False)

    async def promote(self, name: str, body: Any, who: str) -> ExperimentState:
        model = body.get("model") if isinstance(body, dict) else None
        if not isinstance(model, str):
            raise InvalidRequest("'model' is required: the arm to promote.", param="model")
        unknown = sorted(set(body) - {"model"})
        if unknown:
            raise InvalidRequest(
                f"Unknown field '{unknown[0]:.64}': promote takes only 'model'.",
                param=unknown[0][:64],
            )
        return await self.change(name, who, f"promoted {model:.128}", promoted(model))

    async def rollback(self, name: str, who: str) -> ExperimentState:
        return await self.change(name, who, "rolled back", None)

    async def _model_owners(self) -> dict[str, str | None]:
        """Every model's tenant (None: shared), the config's and the registered ones."""
        owners = {n: m.tenant for n, m in self.settings.models.items()}
        for k, v in (await self.redis.hgetall(self.ks.models)).items():
            try:
                tenant = orjson.loads(v)["spec"].get("tenant")
            except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
                tenant = access.NOBODY  # unreadable: nobody's to name
            owners.setdefault(keys.text(k), tenant)
        return owners

    async def change(
        self,
        name: str,
        who: str,
        action: str,
        edit: Edit | None,
        *,
        create: bool = False,
        expect_version: int | None = None,
        ramp_step: bool = False,
        pause: bool | None = True,
    ) -> ExperimentState:
        """Apply ``edit`` to the current spec (``None``: roll back) as a compare-and-set.

        With ``expect_version`` the change applies only to that version (the decider's:
        a decision about version 7 must not land on version 8 that a person just made).
        ``ramp_step``: the decider's move of a candidate to its next stage, which keeps
        the current ramp (``ramp_from``); every other change starts a new one.
        ``pause``: whether a person's change pauses automatic decisions (True), keeps the
        pause as it was (False), or pauses only when it changes the traffic (None: the
        arms' weights or the control). The decider's changes and a creation never pause.
        """
        if not valid_name(name):
            raise InvalidRequest(f"'{name:.128}' is not a valid experiment name.", param="name")
        for _ in range(10):
            with store.translated():
                raw = await self.redis.hget(self.ks.experiments, name)
                owners = await self._model_owners()
            cur: ExperimentState | None = orjson.loads(raw) if raw is not None else None
            if cur is None and not create:
                raise NotFound(f"No experiment named '{name:.128}'.", param="name")
            if cur is None and name in owners:
                raise access.name_taken(name)
            if expect_version is not None and (cur is None or cur["version"] != expect_version):
                raise Conflict(f"Experiment '{name}' changed since version {expect_version}.")
            before = Experiment.model_validate(cur["spec"]) if cur else None
            if edit is None:
                if cur is None or cur.get("previous") is None:
                    raise Conflict(f"Experiment '{name}' has no earlier state to roll back to.")
                after, previous = Experiment.model_validate(cur["previous"]), before
            else:
                after, previous = edit(before), before
            # another tenant's model is named like an unknown one: it cannot be referred to
            models = {m for m, t in owners.items() if access.referable(after.tenant, t)}
            problems = experiment_problems(after, models)
            if problems:
                raise InvalidRequest(problems[0], param=problems[0].split(":")[0])
            version = (cur["version"] if cur else 0) + 1
            action = action if cur else "created"
            pin: Pin | None
            if who == DECIDER or cur is None:
                pin = None
            elif pause or (pause is None and _traffic(before) != _traffic(after)):
                pin = {"by": who, "at": time.time(), "version": version, "action": action}
            else:
                pin = cur.get("pin")
            keep = ramp_step and who == DECIDER and cur is not None
            ramp_from = int(cur.get("ramp_from") or cur["version"]) if keep and cur else version
            state = _state(name, version, after, previous, who, pin, ramp_from)
            entry = _entry(version, action, who, before, after)
            with store.translated():
                found = await self._change(
                    keys=[self.ks.experiments, self.ks.history(name), self.ks.control_version],
                    args=[name, version - 1, orjson.dumps(state), orjson.dumps(entry), HISTORY_CAP],
                )
            if found == -1:
                await self.live.reload_quietly()
                return state
            if expect_version is not None:
                raise Conflict(f"Experiment '{name}' changed since version {expect_version}.")
        raise Conflict(f"Experiment '{name}' is being changed by others; try again.")

    async def resume(self, name: str, who: str) -> ExperimentState:
        """Let the decider act on a paused experiment again: the pin is cleared and the
        resume audited, with no new version (the evidence collected since the pause, all
        under the current weights, counts)."""
        with store.translated():
            raw = await self.redis.hget(self.ks.experiments, name)
        if raw is None:
            raise NotFound(f"No experiment named '{name:.128}'.", param="name")
        cur: ExperimentState = orjson.loads(raw)
        pin = cur.get("pin")
        if not pin:
            raise Conflict(
                f"Experiment '{name}' is not paused: automatic decisions already apply to it."
            )
        spec = Experiment.model_validate(cur["spec"])
        action = f"resumed automatic decisions (paused by {pin['by']} at version {pin['version']})"
        state: ExperimentState = {**cur, "pin": None}
        entry = _entry(int(cur["version"]), action, who, spec, spec)
        with store.translated():
            found = await self._change(
                keys=[self.ks.experiments, self.ks.history(name), self.ks.control_version],
                args=[name, cur["version"], orjson.dumps(state), orjson.dumps(entry), HISTORY_CAP],
            )
        if found != -1:
            raise Conflict(f"Experiment '{name}' changed since version {cur['version']}.")
        await self.live.reload_quietly()
        return state


def _traffic(spec: Experiment | None) -> tuple[Any, ...] | None:
    """What routes the traffic: each arm's weight, and the control."""
    if spec is None:
        return None
    return (tuple((a.model, a.weight) for a in spec.arms), spec.control_arm)


def _state(
    name: str,
    version: int,
    spec: Experiment,
    previous: Experiment | None,
    who: str,
    pin: Pin | None,
    ramp_from: int,
) -> ExperimentState:
    return {
        "object": "experiment",
        "name": name,
        "version": version,
        "spec": spec.model_dump(),
        "previous": previous.model_dump() if previous else None,
        "updated_at": time.time(),
        "updated_by": who,
        "pin": pin,
        "ramp_from": ramp_from,
    }


def _entry(
    version: int, action: str, who: str, before: Experiment | None, after: Experiment
) -> HistoryEntry:
    return {
        "version": version,
        "action": action,
        "by": who,
        "at": time.time(),
        "before": before.model_dump() if before else None,
        "after": after.model_dump(),
    }


def weighted(weights: dict[str, float]) -> Edit:
    """Set the named arms' weights, keep the others'."""

    def edit(cur: Experiment | None) -> Experiment:
        assert cur is not None
        arms = [{"model": a.model, "weight": weights.get(a.model, a.weight)} for a in cur.arms]
        return Experiment.model_validate({**cur.model_dump(), "arms": arms})

    return edit


def promoted(model: str) -> Edit:
    """The winner gets all traffic and becomes the control; the other arms stay at 0."""

    def edit(cur: Experiment | None) -> Experiment:
        assert cur is not None
        if model not in {a.model for a in cur.arms}:
            raise InvalidRequest(f"'{model:.128}' is not an arm of this experiment.", param="model")
        arms = [{"model": a.model, "weight": 100.0 if a.model == model else 0.0} for a in cur.arms]
        return Experiment.model_validate({**cur.model_dump(), "arms": arms, "control": model})

    return edit
