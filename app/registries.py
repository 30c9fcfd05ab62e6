"""Private registries Dockyard pushes to and pulls from; passwords sealed at rest."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

import redis

from app import crypto
from app.config import Settings
from app.errors import ConflictError, InvalidInputError, NotFoundError
from app.store import PREFIX, utcnow

_REGISTRIES = PREFIX + "registries"


def registry_address(url: str) -> str:
    """The ``host:port`` part that prefixes image references (``127.0.0.1:5000/team/web``)."""
    parts = urlsplit(url if "://" in url else f"https://{url}")
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidInputError("registry url must be http(s)://host[:port]",
                                errors={"url": ["must be http(s)://host[:port]"]})
    return parts.netloc


class RegistryStore:
    """Registry records in ``dy:registries``."""

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.redis = client
        self.settings = settings

    def upsert(self, name: str, url: str, username: str | None = None,
               password: str | None = None, insecure: bool = False) -> dict[str, Any]:
        registry_address(url)
        record = {"name": name, "url": url.rstrip("/"), "username": username,
                  "password": crypto.seal(self.settings, {"password": password})
                  if password else None,
                  "insecure": insecure, "created_at": utcnow()}
        self.redis.hset(_REGISTRIES, name, json.dumps(record))
        return record

    def create(self, name: str, url: str, username: str | None, password: str | None,
               insecure: bool) -> dict[str, Any]:
        if self.redis.hexists(_REGISTRIES, name):
            raise ConflictError(f"registry '{name}' already exists")
        return self.upsert(name, url, username, password, insecure)

    def get(self, name: str) -> dict[str, Any]:
        raw = self.redis.hget(_REGISTRIES, name)
        if raw is None:
            raise NotFoundError(f"no registry '{name}'")
        return json.loads(raw)

    def list(self) -> list[dict[str, Any]]:
        return sorted((json.loads(r) for r in self.redis.hvals(_REGISTRIES)),
                      key=lambda r: r["name"])

    def delete(self, name: str) -> None:
        if not self.redis.hdel(_REGISTRIES, name):
            raise NotFoundError(f"no registry '{name}'")

    def auth_config(self, record: dict[str, Any]) -> dict[str, str] | None:
        """docker-py ``auth_config`` for this registry, brokered per engine call."""
        if not record.get("username"):
            return None
        password = crypto.unseal(self.settings, record["password"])["password"] \
            if record.get("password") else ""
        return {"username": record["username"], "password": password,
                "serveraddress": registry_address(record["url"])}


def public_view(record: dict[str, Any]) -> dict[str, Any]:
    return {"name": record["name"], "url": record["url"], "username": record.get("username"),
            "has_password": bool(record.get("password")),
            "address": registry_address(record["url"]),
            "insecure": bool(record.get("insecure")), "created_at": record.get("created_at")}
