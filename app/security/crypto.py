"""Encryption at rest for engine TLS material and registry passwords."""

from __future__ import annotations

import base64
import hashlib
import json
from functools import lru_cache
from typing import Any

from cryptography.fernet import Fernet, InvalidToken

from app.core.config import Settings


class SecretKeyError(RuntimeError):
    """DOCKYARD_SECRET_KEY is missing or cannot decrypt stored secrets."""


@lru_cache(maxsize=4)
def _fernet(secret_key: str) -> Fernet:
    if not secret_key:
        raise SecretKeyError("DOCKYARD_SECRET_KEY is not set")
    # Any string works as the key: it is stretched to Fernet's 32 bytes.
    digest = hashlib.sha256(("dockyard-fernet:" + secret_key).encode()).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


def seal(settings: Settings, value: dict[str, Any]) -> str:
    """Encrypt a JSON-ready dict."""
    return _fernet(settings.secret_key).encrypt(json.dumps(value).encode()).decode()


def unseal(settings: Settings, token: str) -> dict[str, Any]:
    """Decrypt what seal() produced."""
    try:
        return json.loads(_fernet(settings.secret_key).decrypt(token.encode()))
    except InvalidToken as exc:
        raise SecretKeyError("stored secret cannot be decrypted with DOCKYARD_SECRET_KEY") from exc
