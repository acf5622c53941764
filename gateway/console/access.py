"""Who uses the console: admin and reviewer keys, session cookies, CSRF tokens, origins.

A person logs in with a key; the console sets a signed session cookie (HttpOnly,
SameSite=Strict, path ``/ui``) naming the key's holder, role and tenant, a random nonce
(two logins never share a cookie) and a fingerprint of the key (a keyed hash of its
digest, never the key), valid for ``console.session_hours``. Every request looks the key
up again in the live key ring: a key that is revoked, rotated or expired (or whose role
changed to client) ends its sessions on the next request, as it does on the API. Scripts
send the key as ``Authorization: Bearer`` instead.

Roles: ``admin`` (``auth.admin_keys``, or a runtime admin key) may do everything in the
tenants it administers — an admin key made with a tenant is that tenant's admin in the
console exactly as on the admin API (:mod:`gateway.core.access` decides both);
``reviewer`` (``auth.reviewer_keys``, or a runtime reviewer key) may read interactions
and work the review queue — with a ``tenant`` set on the key, only that tenant's. A
client key is refused.

Every state-changing form carries a CSRF token bound to the session
(:func:`csrf_token`); a request authenticated by a bearer header needs none, since a
browser never sends that header by itself. Every form, the login included, is refused
when its ``Origin`` is not the console's own (scheme, host and port) or is ``null`` (a
sandboxed frame, a ``data:`` page): :func:`same_origin`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

import orjson

from gateway.core.auth import KeyRing, Principal
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
    key: bytes = b""  # the digest of the key it holds

    @property
    def admin(self) -> bool:
        return self.role == "admin"

    @property
    def principal(self) -> Principal:
        """The user as the access rule (:mod:`gateway.core.access`) knows a key."""
        return Principal(self.name, self.tenant or "", self.role, all_tenants=self.tenant is None)


def _default_port(scheme: str) -> int | None:
    return {"http": 80, "https": 443}.get(scheme)


def same_origin(origin: str | None, scheme: str, host: str | None) -> bool:
    """Whether a form's ``Origin`` is the console's own: the same scheme, host and port
    (``null`` never is). No ``Origin`` at all (a script, an old browser) passes: the
    session cookie is SameSite=Strict and forms carry a CSRF token."""
    if origin is None:
        return True
    if not host:
        return False
    try:
        o, h = urlsplit(origin), urlsplit(f"{scheme}://{host}")
        if o.scheme not in ("http", "https") or o.path or o.query or not o.hostname:
            return False
        o_port, h_port = o.port or _default_port(o.scheme), h.port or _default_port(h.scheme)
    except ValueError:
        return False
    return (o.scheme, o.hostname, o_port) == (h.scheme, h.hostname, h_port)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class Access:
    """Made with the app; :meth:`bind` gives it the key ring and the signing key that the
    lifespan opens (the gateway's id secret, derived for this use)."""

    def __init__(self, reviewer_keys: list[ApiKey], session_s: float) -> None:
        self.reviewers = {
            _digest(k.key.get_secret_value()): User(
                k.name, "reviewer", k.tenant, key=_digest(k.key.get_secret_value())
            )
            for k in reviewer_keys
            if k.key.get_secret_value()
        }
        self.session_s = session_s
        self.keyring = KeyRing([])
        self._secret = b""
        self._index: tuple[Mapping[bytes, Principal] | None, dict[str, bytes]] = (None, {})

    def bind(self, keyring: KeyRing, secret: bytes) -> None:
        self.keyring, self._secret = keyring, secret
        self._index = (None, {})

    @property
    def bound(self) -> bool:
        return bool(self._secret)

    @property
    def open(self) -> bool:
        """No key configured at all (local development): everyone is an admin."""
        return self.keyring.open and not self.reviewers

    def by_key(self, key: str) -> User:
        """The holder of ``key``: a reviewer, else an admin; a client key is refused."""
        d = _digest(key.strip())
        reviewer = self.reviewers.get(d)
        if reviewer is not None:
            return reviewer
        principal = self.keyring.authenticate(f"Bearer {key.strip()}")  # config or runtime key
        return _user_of(principal, d)

    def by_digest(self, d: bytes, now: float | None = None) -> User | None:
        """The holder of the key of digest ``d`` as the live key ring knows it now; None
        when it is revoked, rotated, expired or no longer a console key."""
        reviewer = self.reviewers.get(d)
        if reviewer is not None:
            return reviewer
        principal = self.keyring.by_digest(d)
        if principal is None:
            return None
        if principal.expires_at is not None and principal.expires_at <= (now or time.time()):
            return None
        try:
            return _user_of(principal, d)
        except PermissionDenied:
            return None

    # key fingerprints ---------------------------------------------------------------

    def fingerprint(self, d: bytes) -> str:
        """What a session names its key by: a keyed hash of the key's digest."""
        mac = hmac.new(self._secret, b"key:" + d, "sha256").digest()[:18]
        return base64.urlsafe_b64encode(mac).decode()

    def _by_fingerprint(self, fp: str) -> bytes | None:
        config, runtime = self.keyring.digests()
        if self._index[0] is not runtime:  # the live state moved: index the keys again
            rings = (self.reviewers, config, runtime)
            self._index = (runtime, {self.fingerprint(d): d for r in rings for d in r})
        return self._index[1].get(fp)

    # sessions -------------------------------------------------------------------------

    def _sign(self, body: bytes) -> str:
        return base64.urlsafe_b64encode(hmac.new(self._secret, body, "sha256").digest()).decode()

    def new_session(self, user: User, now: float | None = None) -> str:
        doc = {
            "n": user.name,
            "r": user.role,
            "t": user.tenant,
            "e": int((now or time.time()) + self.session_s),
            "i": secrets.token_urlsafe(12),  # a nonce: no two sessions are alike
            "k": self.fingerprint(user.key),
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
        if not isinstance(doc, dict) or doc.get("e", 0) < (now or time.time()):
            return None
        d = self._by_fingerprint(str(doc.get("k", "")))
        user = self.by_digest(d, now) if d is not None else None
        if user is None:  # the key is revoked, rotated or expired: so is the session
            return None
        return User(user.name, user.role, user.tenant, session=value, key=d or b"")

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


def _user_of(principal: Principal, d: bytes) -> User:
    """A key's console user: its role and tenant (None: an admin of every tenant)."""
    if principal.role == "reviewer":  # a reviewer key made at runtime (gateway keys)
        return User(principal.name, "reviewer", principal.tenant, key=d)
    if not principal.admin:
        raise PermissionDenied(
            "The console needs an admin or a reviewer key; a client key was given."
        )
    return User(principal.name, "admin", None if principal.all_tenants else principal.tenant, key=d)
