"""Who uses the console: admin and reviewer keys, session cookies, CSRF tokens.

A person logs in with a key; the console sets a signed session cookie (HttpOnly,
SameSite=Strict, path ``/ui``) naming the key's holder, role and tenant, valid for
``console.session_hours``. Scripts send the key as ``Authorization: Bearer`` instead.

Roles: ``admin`` (``auth.admin_keys``, checked by the admin API's own
:meth:`KeyRing.authenticate_admin`) may do everything; ``reviewer``
(``auth.reviewer_keys``) may read interactions and work the review queue — with a
``tenant`` set on the key, only that tenant's. A client key is refused.

Every state-changing form carries a CSRF token bound to the session
(:func:`csrf_token`); a request authenticated by a bearer header needs none, since a
browser never sends that header by itself.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import Literal

import orjson

from gateway.core.auth import KeyRing
from gateway.core.config import ApiKey
from gateway.core.errors import AuthenticationFailed, PermissionDenied

COOKIE = "fw_console"
Role = Literal["admin", "reviewer"]


@dataclass(frozen=True, slots=True)
class User:
    name: str
    role: Role
    tenant: str | None  # None: every tenant's data
    session: str | None = None  # the cookie's value; None: a bearer header

    @property
    def admin(self) -> bool:
        return self.role == "admin"


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class Access:
    """Made with the app; :meth:`bind` gives it the key ring and the signing key that the
    lifespan opens (the gateway's id secret, derived for this use)."""

    def __init__(self, reviewer_keys: list[ApiKey], session_s: float) -> None:
        self.reviewers = {
            _digest(k.key.get_secret_value()): User(k.name, "reviewer", k.tenant)
            for k in reviewer_keys
            if k.key.get_secret_value()
        }
        self.session_s = session_s
        self.keyring = KeyRing([])
        self._secret = b""

    def bind(self, keyring: KeyRing, secret: bytes) -> None:
        self.keyring, self._secret = keyring, secret

    @property
    def bound(self) -> bool:
        return bool(self._secret)

    @property
    def open(self) -> bool:
        """No key configured at all (local development): everyone is an admin."""
        return self.keyring.open and not self.reviewers

    def by_key(self, key: str) -> User:
        """The holder of ``key``: a reviewer, else an admin; a client key is refused."""
        reviewer = self.reviewers.get(_digest(key.strip()))
        if reviewer is not None:
            return reviewer
        principal = self.keyring.authenticate(f"Bearer {key.strip()}")  # config or runtime key
        if principal.role == "reviewer":  # a reviewer key made at runtime (gateway keys)
            return User(principal.name, "reviewer", principal.tenant)
        if not principal.admin:
            raise PermissionDenied(
                "The console needs an admin or a reviewer key; a client key was given."
            )
        return User(principal.name, "admin", None)

    # sessions -------------------------------------------------------------------------

    def _sign(self, body: bytes) -> str:
        return base64.urlsafe_b64encode(hmac.new(self._secret, body, "sha256").digest()).decode()

    def new_session(self, user: User, now: float | None = None) -> str:
        doc = {
            "n": user.name,
            "r": user.role,
            "t": user.tenant,
            "e": int((now or time.time()) + self.session_s),
        }
        body = base64.urlsafe_b64encode(orjson.dumps(doc))
        return f"{body.decode()}.{self._sign(body)}"

    def from_session(self, value: str, now: float | None = None) -> User | None:
        body, _, sig = value.partition(".")
        if not hmac.compare_digest(sig.encode(), self._sign(body.encode()).encode()):
            return None
        try:
            doc = orjson.loads(base64.urlsafe_b64decode(body))
        except (ValueError, orjson.JSONDecodeError):
            return None
        if doc.get("e", 0) < (now or time.time()) or doc.get("r") not in ("admin", "reviewer"):
            return None
        return User(doc["n"], doc["r"], doc.get("t"), session=value)

    def user(self, authorization: str | None, cookie: str | None) -> User | None:
        """The request's user: a bearer key wins over the cookie; None: log in first."""
        if authorization:
            scheme, _, key = authorization.partition(" ")
            if scheme.lower() != "bearer" or not key.strip():
                raise AuthenticationFailed("Send the key as 'Authorization: Bearer <key>'.")
            return self.by_key(key)
        if self.open:
            return User("anonymous", "admin", None)
        return self.from_session(cookie) if cookie else None

    # CSRF -----------------------------------------------------------------------------

    def csrf_token(self, user: User) -> str:
        return self._sign(b"csrf:" + (user.session or "").encode())[:32]

    def check_csrf(self, user: User, token: str | None) -> None:
        if user.session is None:  # a bearer header (or an open gateway): no cookie to ride
            return
        if not token or not hmac.compare_digest(token, self.csrf_token(user)):
            raise PermissionDenied("The form's CSRF token is missing or stale: reload the page.")
