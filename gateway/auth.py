"""API keys: ``Authorization: Bearer <key>`` → the caller's key name and tenant.

Keys are looked up by their SHA-256 digest, so checking a key takes the same time
whichever key (or none) it matches, and the keys themselves are never logged. With no
client key configured the gateway is open (for local development; logged as a
warning at start-up).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from .config import ApiKey
from .errors import AuthenticationFailed


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    tenant: str


ANONYMOUS = Principal(name="anonymous", tenant="default")


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class KeyRing:
    def __init__(self, keys: list[ApiKey]) -> None:
        self._by_digest = {
            _digest(k.key.get_secret_value()): Principal(k.name, k.tenant or k.name)
            for k in keys
            if k.key.get_secret_value()
        }

    @property
    def open(self) -> bool:
        return not self._by_digest

    def authenticate(self, authorization: str | None) -> Principal:
        if self.open:
            return ANONYMOUS
        if not authorization:
            raise AuthenticationFailed("Missing API key: send it as 'Authorization: Bearer <key>'.")
        scheme, _, key = authorization.partition(" ")
        principal = (
            self._by_digest.get(_digest(key.strip())) if scheme.lower() == "bearer" else None
        )
        if principal is None:
            raise AuthenticationFailed("Incorrect API key provided.")
        return principal
