"""Response ids: unguessable, and signed so the gateway can tell an id it issued.

``chatcmpl-`` + base64url(16 random bytes + the first 8 bytes of an HMAC-SHA256 of
them). Any replica that shares the secret can verify an id without Redis, which lets
a rating that arrives before its interaction record is written be told apart from a
made-up id.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from pathlib import Path

PREFIX = "chatcmpl-"
_RAND = 16
_SIG = 8


class IdIssuer:
    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("the id secret needs at least 16 bytes")
        self._secret = secret

    def _sign(self, rand: bytes) -> bytes:
        return hmac.new(self._secret, rand, hashlib.sha256).digest()[:_SIG]

    def new(self) -> str:
        rand = secrets.token_bytes(_RAND)
        token = base64.urlsafe_b64encode(rand + self._sign(rand)).rstrip(b"=")
        return PREFIX + token.decode("ascii")

    def issued(self, response_id: str) -> bool:
        if not response_id.startswith(PREFIX) or len(response_id) > 64:
            return False
        token = response_id[len(PREFIX) :]
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except ValueError:
            return False
        if len(raw) != _RAND + _SIG:
            return False
        return hmac.compare_digest(raw[_RAND:], self._sign(raw[:_RAND]))


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
