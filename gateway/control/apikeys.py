"""Runtime API keys and tenant policies: create, list, change, revoke, rotate, audit.

A key's secret (``fwk-`` and 43 random characters) is returned once, when it is made
or rotated; Redis keeps only its SHA-256 digest (``fw:auth:keys``). Every change is one
transaction that writes the record, appends an audit entry (who, when, before, after —
never a secret nor a digest) and bumps the live-state version, so every replica
follows it within ``control.refresh_s`` (:mod:`gateway.control.live`).

An admin of every tenant (a config admin key, or a runtime admin key without tenant)
manages every key; a tenant's admin manages that tenant's keys only, and cannot make
an admin of every tenant. Keys of other tenants are a 404 to it, as if absent.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any, cast

import orjson
import redis.asyncio as aioredis
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from redis.exceptions import RedisError, WatchError

from gateway.control.experiments import invalid
from gateway.control.live import LiveState
from gateway.core import access, keys, store
from gateway.core.auth import Principal, Role, digest
from gateway.core.config import NAME_MAX, NAME_PATTERN, Budget, valid_name
from gateway.core.documents import (
    ApiKey,
    AuditEntry,
    IssuedKey,
    KeyFields,
    StoredKey,
    TenantPolicy,
)
from gateway.core.errors import Conflict, InvalidRequest, NotFound, PermissionDenied

AUDIT_CAP = 10_000
SECRET_PREFIX = "fwk-"


class KeySpec(BaseModel):
    """What an admin sets on a runtime key (``POST /admin/keys``, ``PATCH``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(
        pattern=NAME_PATTERN, max_length=NAME_MAX, description="who the key belongs to"
    )
    tenant: str | None = Field(
        None,
        pattern=NAME_PATTERN,
        max_length=NAME_MAX,
        description="whose data it sees; default: the name (admins: none is every tenant)",
    )
    role: Role = Field("client", description="client, reviewer or admin")
    rpm: int | None = Field(None, ge=1, description="requests per minute")
    tpm: int | None = Field(None, ge=1, description="tokens per minute")
    budget: Budget | None = Field(None, description="spend limit per period")
    experiments: list[str] | None = Field(None, description="callable experiments; null: all")
    models: list[str] | None = Field(None, description="callable models; null: all")
    expires_at: float | None = Field(None, gt=0, description="Unix time it stops working")


class TenantSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    budget: Budget | None = Field(None, description="the tenant's spend limit per period")


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def public(record: StoredKey) -> ApiKey:
    """A key's record as shown: without its digest."""
    shown = {k: v for k, v in record.items() if k != "digest"}
    return cast(ApiKey, shown)


def fields(spec: KeySpec) -> KeyFields:
    """A key's spec as its record holds it."""
    return {
        "name": spec.name,
        "tenant": spec.tenant,
        "role": spec.role,
        "rpm": spec.rpm,
        "tpm": spec.tpm,
        "budget": spec.budget.model_dump() if spec.budget is not None else None,
        "experiments": spec.experiments,
        "models": spec.models,
        "expires_at": spec.expires_at,
    }


class ApiKeys:
    def __init__(self, redis: aioredis.Redis, ks: keys.Keyspace, live: LiveState) -> None:
        self.redis = redis
        self.ks = ks
        self.live = live

    # -- reading ----------------------------------------------------------------------

    async def _records(self) -> dict[str, StoredKey]:
        with store.translated():
            raw = await self.redis.hgetall(self.ks.api_keys)
        return {keys.text(k): orjson.loads(v) for k, v in raw.items()}

    async def all(self, by: Principal) -> list[ApiKey]:
        records = await self._records()
        return [
            public(r)
            for _, r in sorted(records.items(), key=lambda kv: kv[1]["created_at"])
            if _manages(by, r)
        ]

    async def get(self, key_id: str, by: Principal) -> ApiKey:
        return public(await self._one(key_id, by))

    async def _one(self, key_id: str, by: Principal) -> StoredKey:
        with store.translated():
            raw = await self.redis.hget(self.ks.api_keys, key_id)
        record: StoredKey | None = orjson.loads(raw) if raw is not None else None
        if record is None or not _manages(by, record):
            raise NotFound(f"No key with id '{key_id:.64}'.", param="id")
        return record

    async def audit(self, by: Principal, limit: int = 1000) -> list[AuditEntry]:
        with store.translated():
            raw = await self.redis.lrange(self.ks.auth_audit, -limit, -1)
        entries: list[AuditEntry] = [orjson.loads(v) for v in raw]
        return [
            e
            for e in entries
            if access.allows(by, "see", access.Resource("audit", "", e.get("tenant")))
        ]

    # -- changing ---------------------------------------------------------------------

    async def create(self, body: Any, by: Principal) -> IssuedKey:
        spec = _scoped(_spec(body), by)
        secret = new_secret()
        record: StoredKey = {
            "id": "key_" + secrets.token_hex(8),
            "object": "api_key",
            **fields(spec),  # type: ignore[typeddict-item]  # (revoked_by, rotated_at: later)
            "hint": f"{SECRET_PREFIX}…{secret[-4:]}",
            "digest": digest(secret).hex(),
            "created_at": time.time(),
            "created_by": by.name,
            "revoked_at": None,
        }
        await self._write(record["id"], None, record, "key.created", by)
        return {**public(record), "key": secret}

    async def update(self, key_id: str, body: Any, by: Principal) -> ApiKey:
        if not isinstance(body, dict):
            raise InvalidRequest("The body must be a JSON object.")

        def edit(cur: StoredKey) -> StoredKey:
            now = {k: cur.get(k) for k in KeySpec.model_fields}
            spec = _scoped(_spec({**now, **body}), by)
            return {**cur, **fields(spec)}

        return public(await self._change(key_id, by, "key.updated", edit))

    async def revoke(self, key_id: str, by: Principal) -> ApiKey:
        def edit(cur: StoredKey) -> StoredKey:
            if cur.get("revoked_at"):
                raise Conflict(f"Key '{key_id}' is already revoked.", param="id")
            return {**cur, "revoked_at": time.time(), "revoked_by": by.name}

        return public(await self._change(key_id, by, "key.revoked", edit))

    async def rotate(self, key_id: str, by: Principal) -> IssuedKey:
        """A new secret for the key (same id, settings and spend); the old one stops now."""
        secret = new_secret()

        def edit(cur: StoredKey) -> StoredKey:
            if cur.get("revoked_at"):
                raise Conflict(f"Key '{key_id}' is revoked: create a new one.", param="id")
            hint = f"{SECRET_PREFIX}…{secret[-4:]}"
            return {**cur, "digest": digest(secret).hex(), "hint": hint, "rotated_at": time.time()}

        record = await self._change(key_id, by, "key.rotated", edit)
        return {**public(record), "key": secret}

    async def tenant(self, tenant: str, by: Principal) -> TenantPolicy:
        if not valid_name(tenant):
            raise InvalidRequest(f"'{tenant:.128}' is not a valid tenant name.", param="tenant")
        access.check(by, "see", access.Resource("tenant", tenant, tenant), param="tenant")
        with store.translated():
            raw = await self.redis.hget(self.ks.tenants, tenant)
        doc: TenantPolicy = (
            orjson.loads(raw) if raw else {"object": "tenant", "tenant": tenant, "budget": None}
        )
        return {**doc, "object": "tenant"}

    async def set_tenant(self, tenant: str, body: Any, by: Principal) -> TenantPolicy:
        if not access.allows(by, "change", access.Resource("tenant", tenant, tenant)):
            raise PermissionDenied("Only an admin of every tenant sets a tenant's budget.")
        try:
            spec = TenantSpec.model_validate(body, strict=True)
        except ValidationError as exc:
            raise invalid(exc) from None
        before = await self.tenant(tenant, by)
        after: TenantPolicy = {
            "object": "tenant",
            "tenant": tenant,
            "budget": spec.budget.model_dump() if spec.budget is not None else None,
            "updated_at": time.time(),
            "updated_by": by.name,
        }
        entry = _entry("tenant.updated", by, tenant, tenant, before, after)
        with store.translated():
            pipe = self.redis.pipeline(transaction=True)
            pipe.hset(self.ks.tenants, tenant, orjson.dumps(after))
            _append(pipe, self.ks, entry)
            await pipe.execute()
        await self.live.reload_quietly()
        return after

    async def _change(
        self,
        key_id: str,
        by: Principal,
        action: str,
        edit: Callable[[StoredKey], StoredKey],
    ) -> StoredKey:
        for _ in range(10):
            try:
                async with self.redis.pipeline(transaction=True) as pipe:
                    await pipe.watch(self.ks.api_keys)
                    raw = await pipe.hget(self.ks.api_keys, key_id)
                    cur: StoredKey | None = orjson.loads(raw) if raw is not None else None
                    if cur is None or not _manages(by, cur):
                        raise NotFound(f"No key with id '{key_id:.64}'.", param="id")
                    after = edit(cur)
                    pipe.multi()  # type: ignore[no-untyped-call]
                    _record(pipe, self.ks, key_id, cur, after, action, by)
                    await pipe.execute()
            except WatchError:
                continue
            except (RedisError, OSError) as exc:
                raise store.unavailable(exc) from None
            await self.live.reload_quietly()
            return after
        raise Conflict(f"Key '{key_id}' is being changed by others; try again.")

    async def _write(
        self,
        key_id: str,
        before: StoredKey | None,
        after: StoredKey,
        action: str,
        by: Principal,
    ) -> None:
        with store.translated():
            pipe = self.redis.pipeline(transaction=True)
            _record(pipe, self.ks, key_id, before, after, action, by)
            await pipe.execute()
        await self.live.reload_quietly()


def _record(
    pipe: Any,
    ks: keys.Keyspace,
    key_id: str,
    before: StoredKey | None,
    after: StoredKey,
    action: str,
    by: Principal,
) -> None:
    pipe.hset(ks.api_keys, key_id, orjson.dumps(after))
    entry = _entry(
        action, by, key_id, after.get("tenant"), public(before) if before else None, public(after)
    )
    _append(pipe, ks, entry)
    pipe.incr(ks.control_version)


def _append(pipe: Any, ks: keys.Keyspace, entry: AuditEntry) -> None:
    pipe.rpush(ks.auth_audit, orjson.dumps(entry))
    pipe.ltrim(ks.auth_audit, -AUDIT_CAP, -1)


def _entry(
    action: str,
    by: Principal,
    target: str,
    tenant: str | None,
    before: ApiKey | TenantPolicy | None,
    after: ApiKey | TenantPolicy | None,
) -> AuditEntry:
    return {
        "at": time.time(),
        "by": by.name,
        "by_tenant": by.tenant,
        "action": action,
        "target": target,
        "tenant": tenant,
        "before": before,
        "after": after,
    }


def _spec(body: Any) -> KeySpec:
    if not isinstance(body, dict):
        raise InvalidRequest("The body must be a JSON object describing the key.")
    try:
        return KeySpec.model_validate(body, strict=True)  # JSON types as they are
    except ValidationError as exc:
        raise invalid(exc) from None


def _scoped(spec: KeySpec, by: Principal) -> KeySpec:
    """The spec a tenant's admin may set: its own tenant only, no admin of every tenant."""
    if spec.tenant is None and not by.all_tenants:
        spec = spec.model_copy(update={"tenant": by.tenant})
    if spec.role != "admin" and spec.tenant is None:
        spec = spec.model_copy(update={"tenant": spec.name})
    if not access.allows(by, "create", access.Resource("key", spec.name, spec.tenant)):
        raise PermissionDenied(
            f"A key of tenant '{by.tenant}' manages keys of that tenant only.", param="tenant"
        )
    return spec


def _manages(by: Principal, record: ApiKey) -> bool:
    """Keys without a tenant (admins of every tenant) are theirs only."""
    resource = access.Resource("key", str(record.get("id", "")), record.get("tenant"))
    return access.allows(by, "change", resource)
