"""API keys: ``Authorization: Bearer <key>`` → the caller's :class:`Principal`.

Keys are looked up by their SHA-256 digest, so checking a key takes the same time
whichever key (or none) it matches, and the keys themselves are never logged or stored.

Two sources of keys, looked up together:

* the config file: client keys (``auth.api_keys``) and bootstrap admin keys
  (``auth.admin_keys``, admins of every tenant);
* runtime keys (:mod:`gateway.control.apikeys`: ``/admin/keys``, ``gateway keys``), kept in Redis
  as digests and followed by every replica with the rest of the live state
  (:mod:`gateway.control.live`), so a revocation reaches every replica within a second.

A key has a role: ``client`` calls the public API; ``reviewer`` also reviews (the
console); ``admin`` calls the admin API and may force an experiment arm. An admin key
made at runtime with a tenant administers that tenant only. With no key at all the
gateway is open, admin API and forced arms included (local development; logged as a
warning at start-up); with client keys but no admin key, the admin API is closed.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from gateway.core.config import ApiKey, Budget
from gateway.core.errors import AuthenticationFailed, PermissionDenied

Role = Literal["client", "reviewer", "admin"]
ROLES: tuple[Role, ...] = ("client", "reviewer", "admin")


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    tenant: str
    role: Role = "client"
    rpm: int | None = None  # rate limits (limits.py); None: unlimited
    tpm: int | None = None
    key_id: str = ""  # what spend and budgets are counted by; "": the name
    all_tenants: bool = False  # an admin of every tenant (config admin keys, or no tenant)
    budget: Budget | None = None
    experiments: frozenset[str] | None = None  # what it may call; None: all its tenant's
    models: frozenset[str] | None = None
    expires_at: float | None = None

    @property
    def admin(self) -> bool:
        return self.role == "admin"

    @property
    def account(self) -> str:
        """The key's identity for spend, budgets and metrics."""
        return self.key_id or self.name

    def sees(self, tenant: str | None) -> bool:
        """Whether this key may see what belongs to ``tenant`` (``None``: shared)."""
        return tenant is None or self.all_tenants or tenant == self.tenant

    def may_call(self, name: str, tenant: str | None, experiment: bool) -> bool:
        """Whether this key may call the experiment or model ``name`` of ``tenant``."""
        if not self.sees(tenant):
            return False
        allowed = self.experiments if experiment else self.models
        return allowed is None or name in allowed


ANONYMOUS = Principal(name="anonymous", tenant="default")
ANONYMOUS_ADMIN = Principal(name="anonymous", tenant="default", role="admin", all_tenants=True)


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def config_principals(keys: list[ApiKey], admin_keys: list[ApiKey]) -> dict[bytes, Principal]:
    return {
        digest(k.key.get_secret_value()): Principal(
            k.name,
            k.tenant or k.name,
            "admin" if admin else "client",
            rpm=k.rpm,
            tpm=k.tpm,
            all_tenants=admin,
            budget=k.budget,
        )
        for admin, ring in ((False, keys), (True, admin_keys))
        for k in ring
        if k.key.get_secret_value()
    }


class KeyRing:
    """The config's keys and the runtime ones (``runtime()``, from the live state)."""

    def __init__(
        self,
        keys: list[ApiKey],
        admin_keys: list[ApiKey] | None = None,
        runtime: Callable[[], Mapping[bytes, Principal]] | None = None,
    ) -> None:
        self._config = config_principals(keys, admin_keys or [])
        self._runtime = runtime or (lambda: {})
        self._clients = any(not p.admin for p in self._config.values())
        self._admins = any(p.admin for p in self._config.values())

    @property
    def open(self) -> bool:
        return not self._config and not self._runtime()

    def _lookup(self, authorization: str | None) -> Principal:
        if not authorization:
            raise AuthenticationFailed("Missing API key: send it as 'Authorization: Bearer <key>'.")
        scheme, _, key = authorization.partition(" ")
        principal = None
        if scheme.lower() == "bearer":
            d = digest(key.strip())
            principal = self._config.get(d) or self._runtime().get(d)
        if principal is None:
            raise AuthenticationFailed("Incorrect API key provided.")
        if principal.expires_at is not None and principal.expires_at <= time.time():
            raise AuthenticationFailed(f"The API key '{principal.name}' has expired.")
        return principal

    def by_digest(self, d: bytes) -> Principal | None:
        """The live key of that digest (config or runtime; None: revoked, rotated or
        never made), expired or not."""
        return self._config.get(d) or self._runtime().get(d)

    def digests(self) -> tuple[Mapping[bytes, Principal], Mapping[bytes, Principal]]:
        """The config's keys and the runtime ones now, by digest."""
        return self._config, self._runtime()

    def authenticate(self, authorization: str | None) -> Principal:
        """The public API: any key (none needed without client keys)."""
        if self.open:  # no key at all: local development, where the admin API is open too
            return ANONYMOUS_ADMIN
        if not authorization and not self._clients and not self._runtime():
            return ANONYMOUS
        return self._lookup(authorization)

    def authenticate_admin(self, authorization: str | None) -> Principal:
        """The admin API: an admin key (none needed when no key is configured at all)."""
        if self.open:
            return ANONYMOUS_ADMIN
        if not self._admins and not any(p.admin for p in self._runtime().values()):
            raise PermissionDenied(
                "The admin API is closed: no admin key is configured (auth.admin_keys)."
            )
        principal = self._lookup(authorization)
        if not principal.admin:
            raise PermissionDenied("This endpoint needs an admin key; a client key was given.")
        return principal


def runtime_principal(record: Mapping[str, object]) -> Principal:
    """The principal of a runtime key's record (:mod:`gateway.control.apikeys`)."""
    tenant = record.get("tenant")
    role = record.get("role")
    budget = record.get("budget")
    exps, models = record.get("experiments"), record.get("models")
    rpm, tpm, expires = record.get("rpm"), record.get("tpm"), record.get("expires_at")
    return Principal(
        name=str(record["name"]),
        tenant=str(tenant) if tenant else str(record["name"]),
        role=role if role in ROLES else "client",
        rpm=rpm if isinstance(rpm, int) else None,
        tpm=tpm if isinstance(tpm, int) else None,
        key_id=str(record["id"]),
        all_tenants=role == "admin" and not tenant,
        budget=Budget.model_validate(budget) if budget else None,
        experiments=frozenset(exps) if isinstance(exps, list) else None,
        models=frozenset(models) if isinstance(models, list) else None,
        expires_at=float(expires) if isinstance(expires, int | float) else None,
    )
