"""Response ids: unguessable, time-stamped, and signed so the gateway knows its own.

``chatcmpl-`` + base64url(6-byte issue time in ms + 12 random bytes + the first 8
bytes of an HMAC-SHA256 of both). Any replica that shares the secret can verify an id
and read its age without Redis: a rating that arrives before its interaction record
is written can be told apart from a made-up or expired id.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path

PREFIX = "chatcmpl-"
_TS, _RAND, _SIG = 6, 12, 8


class IdIssuer:
    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("the id secret needs at least 16 bytes")
        self._secret = secret
        self._mac = hmac.new(secret, digestmod=hashlib.sha256)  # keyed once; copied per id

    def derive(self, purpose: str) -> bytes:
        """A key of its own for another use of the secret (the console's session cookies)."""
        return hmac.new(self._secret, b"derive:" + purpose.encode(), hashlib.sha256).digest()

    def _sign(self, body: bytes) -> bytes:
        mac = self._mac.copy()
        mac.update(body)
        return mac.digest()[:_SIG]

    def new(self, now_ms: int | None = None) -> str:
        ts = (int(time.time() * 1000) if now_ms is None else now_ms).to_bytes(_TS, "big")
        body = ts + os.urandom(_RAND)
        token = base64.urlsafe_b64encode(body + self._sign(body)).rstrip(b"=")
        return PREFIX + token.decode("ascii")

    def issued_at(self, response_id: str) -> float | None:
        """When this gateway issued the id (epoch seconds), or None if it is not ours."""
        if not response_id.startswith(PREFIX) or len(response_id) > 64:
            return None
        token = response_id[len(PREFIX) :]
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except ValueError:
            return None
        if len(raw) != _TS + _RAND + _SIG:
            return None
        body, sig = raw[: _TS + _RAND], raw[_TS + _RAND :]
        if not hmac.compare_digest(sig, self._sign(body)):
            return None
        return int.from_bytes(body[:_TS], "big") / 1000


def load_or_create_secret(data_dir: Path) -> bytes:
    """The secret for a single-node install: made once, kept in ``data_dir`` (mode 0600).

    Replicas must share one secret: set ``id_secret`` (``FLYWHEEL_ID_SECRET``) instead.
    """
    path = data_dir / "id_secret"
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        pass
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_bytes(32)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret.hex())
    os.replace(tmp, path)
    return secret
