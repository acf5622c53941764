"""Model versions registered at runtime (``/admin/models``), beside the config's.

A LoRA adapter on a vLLM upstream is loaded into every replica and must then be listed
by one before it is registered; removing unloads it. A registration without a ``price``
inherits the price of its base: the first priced model on the same upstream that is not
an adapter (the config's models first), so the report's cost per request stays
comparable across arms.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import redis.asyncio as aioredis
from pydantic import ValidationError

from gateway.control.adapters import Adapters
from gateway.control.experiments import HISTORY_CAP, invalid
from gateway.control.live import LiveState
from gateway.core import access, keys, store
from gateway.core.auth import Principal
from gateway.core.config import ModelVersion, Settings, valid_name
from gateway.core.documents import ModelDetail, ModelEntry, Registration, VersionFields
from gateway.core.errors import Conflict, InvalidRequest, NotFound
from gateway.serving.upstream import UpstreamClient

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


def version_fields(spec: ModelVersion) -> VersionFields:
    """A model version's settings as the registry stores and shows them."""
    return {
        "upstream": spec.upstream,
        "model": spec.model,
        "adapter_path": spec.adapter_path,
        "price": spec.price.model_dump() if spec.price is not None else None,
        "tenant": spec.tenant,
        "in_context": spec.in_context.model_dump() if spec.in_context is not None else None,
    }


class Registry:
    def __init__(
        self,
        redis: aioredis.Redis,
        ks: keys.Keyspace,
        settings: Settings,
        upstream: UpstreamClient,
        live: LiveState,
        adapters: Adapters,
    ) -> None:
        self.redis = redis
        self.ks = ks
        self.settings = settings
        self.upstream = upstream
        self.live = live
        self.adapters = adapters
        self._model = redis.register_script(_MODEL)

    def models(self) -> list[ModelEntry]:
        out: list[ModelEntry] = []
        for name, m in self.live.router.models.items():
            parents = (
                {
                    r.parents[m.model]
                    for r in self.upstream.pools[m.upstream].replicas
                    if m.model in r.parents
                }
                if m.upstream in self.upstream.pools
                else set()
            )
            out.append(
                {
                    "id": name,
                    "object": "model",
                    "source": "config" if name in self.settings.models else "registered",
                    **version_fields(m),
                    "parent": min(parents) if parents else None,
                }
            )
        return out

    def model(self, name: str, by: Principal | None = None) -> ModelDetail:
        """One model version, with who registered it and its lineage (where it came from);
        the experiments that use it are those ``by`` sees."""
        entry = next((m for m in self.models() if m["id"] == name), None)
        if entry is None:
            raise NotFound(f"No model named '{name:.128}'.", param="name")
        record = self.live.records.get(name, {})
        used_by = sorted(
            n
            for n, e in self.live.router.experiments.items()
            if name in e.models()
            and (by is None or access.allows(by, "see", access.Resource("experiment", n, e.tenant)))
        )
        return {
            **entry,
            "registered_by": record.get("registered_by"),
            "registered_at": record.get("registered_at"),
            "price_from": record.get("price_from"),
            "lineage": record.get("lineage"),
            "experiments": used_by,
        }

    def base_price(self, upstream: str) -> tuple[str, Any] | None:
        """The price a new model on ``upstream`` inherits: (from which model, price)."""
        for name, m in self.live.router.models.items():
            if m.upstream == upstream and m.adapter_path is None and m.price is not None:
                return name, m.price
        return None

    async def register(self, body: Any, who: str) -> ModelEntry:
        if not isinstance(body, dict):
            raise InvalidRequest("The body must be a JSON object describing the model.")
        name = body.get("name")
        if not isinstance(name, str) or not valid_name(name):
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
            raise invalid(exc) from None
        pool = self.upstream.pools.get(spec.upstream)
        if pool is None:
            raise InvalidRequest(
                f"upstream: unknown upstream '{spec.upstream:.128}'.", param="upstream"
            )
        router = self.live.router
        if name in router.models or name in router.experiments:
            raise access.name_taken(name)
        if spec.adapter_path and pool.upstream.kind != "vllm":
            raise InvalidRequest(
                "adapter_path: adapters need a vllm upstream.", param="adapter_path"
            )
        exp = router.experiments.get((lineage or {}).get("experiment") or "")
        if "tenant" not in body and exp is not None and exp.tenant is not None:
            spec = spec.model_copy(update={"tenant": exp.tenant})  # a candidate is its tenant's
        price_from = None
        if spec.price is None and (base := self.base_price(spec.upstream)) is not None:
            price_from, price = base
            spec = spec.model_copy(update={"price": price})
        if spec.adapter_path:
            await self.adapters.load_everywhere(spec, spec.adapter_path)
        record: Registration = {
            "name": name,
            "spec": version_fields(spec),
            "registered_by": who,
            "registered_at": time.time(),
            "lineage": lineage,
            "price_from": price_from,
        }
        entry = {
            "action": "registered",
            "name": name,
            "by": who,
            "at": time.time(),
            "spec": spec.model_dump(),
        }
        with store.translated():
            done = await self._model(
                keys=[self.ks.models, self.ks.models_history, self.ks.control_version],
                args=[name, orjson.dumps(record), orjson.dumps(entry), HISTORY_CAP],
            )
        if not done:
            raise access.name_taken(name)
        await self.live.reload_quietly()
        return {
            "id": name,
            "object": "model",
            "source": "registered",
            **version_fields(spec),  # type: ignore[typeddict-item]  # (no parent known yet)
        }

    async def remove(self, name: str, who: str) -> dict[str, Any]:
        if name in self.settings.models:
            raise Conflict(
                f"'{name}' is defined in the config file: remove it there.", param="name"
            )
        spec = self.live.registered.get(name)
        if spec is None:
            await self.live.reload_quietly()
            spec = self.live.registered.get(name)
        if spec is None:
            raise NotFound(f"No registered model named '{name:.128}'.", param="name")
        users = sorted(n for n, e in self.live.router.experiments.items() if name in e.models())
        if users:
            raise Conflict(
                f"'{name}' is still used by experiment(s) {', '.join(users)}: take it out "
                "of them first.",
                param="name",
            )
        entry = {
            "action": "removed",
            "name": name,
            "by": who,
            "at": time.time(),
            "spec": spec.model_dump(),
        }
        async with self.adapters.lock:  # no refresh pass between the unload and the new router
            with store.translated():
                await self._model(
                    keys=[self.ks.models, self.ks.models_history, self.ks.control_version],
                    args=[name, "", orjson.dumps(entry), HISTORY_CAP],
                )
            unloaded = await self.adapters.unload_everywhere(spec) if spec.adapter_path else []
            await self.live.reload_quietly()
        return {"id": name, "object": "model", "deleted": True, "unloaded": unloaded}
