"""LoRA adapters on vLLM replicas: loaded everywhere a registered model needs them.

A background task lists each vLLM replica's models every ``control.replica_refresh_s``
(at once after a change of the live state) and loads any registered adapter it lacks
(a replica that restarted or appeared); :class:`~gateway.serving.replicas.Pool` sends a model
only to replicas that list it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from gateway.control.live import LiveState
from gateway.core.config import ModelVersion
from gateway.core.errors import InvalidRequest
from gateway.serving.upstream import UpstreamClient

log = logging.getLogger(__name__)


class Adapters:
    def __init__(self, live: LiveState, upstream: UpstreamClient) -> None:
        self.live = live
        self.upstream = upstream
        # Held by a refresh pass and by a removal: a pass that began before a model was
        # removed must not load its adapter back after the removal unloaded it.
        self.lock = asyncio.Lock()

    async def run(self) -> None:
        """Background task: refresh, then wait for the period or a change."""
        due = self.live.replicas_due
        while True:
            await self.refresh()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(due.wait(), self.live.settings.control.replica_refresh_s)
            due.clear()

    async def refresh(self) -> None:
        """Discover replicas, list what each vLLM replica serves, load missing adapters."""
        async with self.lock:
            await self._refresh()

    async def _refresh(self) -> None:
        adapters = {
            m.model: (m.upstream, m.adapter_path)
            for m in self.live.router.models.values()
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

    async def load_everywhere(self, spec: ModelVersion, path: str) -> None:
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

    async def unload_everywhere(self, spec: ModelVersion) -> list[str]:
        """Unload a model's adapter from every replica: each replica's URL, or why not."""
        pool = self.upstream.pools[spec.upstream]
        unloaded: list[str] = []
        for r in pool.replicas:
            ok, msg = await self.upstream.unload_adapter(pool, r, spec.model)
            unloaded.append(r.url if ok else f"{r.url}: {msg}")
        return unloaded
