"""API keys: ``Authorization: Bearer <key>`` → the caller's key name, tenant and role.

Keys are looked up by their SHA-256 digest, so checking a key takes the same time
whichever key (or none) it matches, and the keys themselves are never logged.

Client keys (``auth.api_keys``) call the public API. Admin keys (``auth.admin_keys``)
call the admin API and the public one too, and may force an experiment arm. With no
key configured at all the gateway is open, admin API and forced arms included (local
development; logged as a warning at start-up); with client keys but no admin key, the
admin API is closed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from .config import ApiKey
from .errors import AuthenticationFailed, PermissionDenied


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    tenant: str
    admin: bool = False
    rpm: int | None = None  # rate limits (limits.py); None: unlimited
    tpm: int | None = None


ANONYMOUS = Principal(name="anonymous", tenant="default")
ANONYMOUS_ADMIN = Principal(name="anonymous", tenant="default", admin=True)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class KeyRing:
    def __init__(self, keys: list[ApiKey], admin_keys: list[ApiKey] | None = None) -> None:
        self._by_digest = {
            _digest(k.key.get_secret_value()): Principal(
                k.name, k.tenant or k.name, admin, rpm=k.rpm, tpm=k.tpm
            )
            for admin, ring in ((False, keys), (True, admin_keys or []))
            for k in ring
            if k.key.get_secret_value()
        }
        self._clients = any(not p.admin for p in self._by_digest.values())
        self._admins = any(p.admin for p in self._by_digest.values())

    @property
    def open(self) -> bool:
        return not self._by_digest

    def _lookup(self, authorization: str | None) -> Principal:
        if not authorization:
            raise AuthenticationFailed("Missing API key: send it as 'Authorization: Bearer <key>'.")
        scheme, _, key = authorization.partition(" ")
        principal = (
            self._by_digest.get(_digest(key.strip())) if scheme.lower() == "bearer" else None
        )
        if principal is None:
            raise AuthenticationFailed("Incorrect API key provided.")
        return principal

    def authenticate(self, authorization: str | None) -> Principal:
        """The public API: a client or an admin key (none needed without client keys)."""
        if self.open:  # no key at all: local development, where the admin API is open too
            return ANONYMOUS_ADMIN
        if not self._clients and not authorization:
            return ANONYMOUS
        return self._lookup(authorization)

    def authenticate_admin(self, authorization: str | None) -> Principal:
        """The admin API: an admin key (none needed when no key is configured at all)."""
        if self.open:
            return ANONYMOUS_ADMIN
        if not self._admins:
            raise PermissionDenied(
                "The admin API is closed: no admin key is configured (auth.admin_keys)."
            )
        principal = self._lookup(authorization)
        if not principal.admin:
            raise PermissionDenied("This endpoint needs an admin key; a client key was given.")
        return principal
