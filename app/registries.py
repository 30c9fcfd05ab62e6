"""Private registries Dockyard pushes to and pulls from; passwords sealed at rest."""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import urlsplit

import redis
from cryptography import x509

from app import crypto
from app.config import Settings
from app.errors import ConflictError, InvalidInputError, NotFoundError
from app.registry_client import RegistryEndpoint, base_url
from app.store import PREFIX, utcnow

logger = logging.getLogger(__name__)

_REGISTRIES = PREFIX + "registries"
# What PATCH may change; a field given as null is cleared (url and insecure cannot be).
MUTABLE_FIELDS = ("url", "username", "password", "insecure", "ca_cert")


def registry_address(url: str) -> str:
    """The ``host:port`` part that prefixes image references (``127.0.0.1:5000/team/web``)."""
    parts = urlsplit(url if "://" in url else f"https://{url}")
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidInputError("registry url must be http(s)://host[:port]",
                                errors={"url": ["must be http(s)://host[:port]"]})
    return parts.netloc


def validate_ca_cert(pem: str) -> None:
    """Parse a CA bundle so a bad one is refused at registration, not at first use.

    Raises:
        InvalidInputError: ``pem`` holds no parseable PEM certificate.
    """
    try:
        x509.load_pem_x509_certificates(pem.encode())
    except ValueError:
        raise InvalidInputError("ca_cert does not parse",
                                errors={"ca_cert": ["not a PEM certificate"]}) from None


def _validate_credentials(username: str | None, password: str | None) -> None:
    if password and not username:
        raise InvalidInputError("a password needs a username",
                                errors={"username": ["required with a password"]})


class RegistryStore:
    """Registry records in ``dy:registries``."""

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.redis = client
        self.settings = settings

    def upsert(self, name: str, url: str, username: str | None = None,
               password: str | None = None, insecure: bool = False,
               ca_cert: str | None = None) -> dict[str, Any]:
        registry_address(url)
        _validate_credentials(username, password)
        if ca_cert:
            validate_ca_cert(ca_cert)
        record = {"name": name, "url": url.rstrip("/"), "username": username,
                  "password": self._seal(password), "insecure": insecure,
                  "ca_cert": ca_cert or None, "created_at": utcnow(), "updated_at": None}
        self.redis.hset(_REGISTRIES, name, json.dumps(record))
        return record

    def create(self, name: str, url: str, username: str | None, password: str | None,
               insecure: bool, ca_cert: str | None = None) -> dict[str, Any]:
        if self.redis.hexists(_REGISTRIES, name):
            raise ConflictError(f"registry '{name}' already exists")
        return self.upsert(name, url, username, password, insecure, ca_cert)

    def update(self, name: str, changes: dict[str, Any]) -> dict[str, Any]:
        """Apply a PATCH: only the fields in ``changes``; clearing the username drops the password.

        Raises:
            NotFoundError: no such registry.
            InvalidInputError: the url, the CA or the credentials do not hold together.
        """
        record = self.get(name)
        if "url" in changes:
            registry_address(changes["url"])
            record["url"] = changes["url"].rstrip("/")
        if "insecure" in changes:
            record["insecure"] = bool(changes["insecure"])
        if "ca_cert" in changes:
            if changes["ca_cert"]:
                validate_ca_cert(changes["ca_cert"])
            record["ca_cert"] = changes["ca_cert"] or None
        if "username" in changes:
            record["username"] = changes["username"] or None
            if not record["username"]:
                record["password"] = None
        if "password" in changes:
            _validate_credentials(record.get("username"), changes["password"])
            record["password"] = self._seal(changes["password"])
        record["updated_at"] = utcnow()
        self.redis.hset(_REGISTRIES, name, json.dumps(record))
        logger.info("registry %s updated fields=%s", name,
                    ",".join(sorted(k for k in changes if k in MUTABLE_FIELDS)))
        return record

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

    def _seal(self, password: str | None) -> str | None:
        return crypto.seal(self.settings, {"password": password}) if password else None

    def _password(self, record: dict[str, Any]) -> str:
        return crypto.unseal(self.settings, record["password"])["password"] \
            if record.get("password") else ""

    def endpoint(self, record: dict[str, Any]) -> RegistryEndpoint:
        """How a worker reaches this registry's v2 API (the password unsealed in memory only)."""
        return RegistryEndpoint(name=record["name"], base_url=base_url(record["url"]),
                                username=record.get("username") or None,
                                password=self._password(record) or None,
                                ca_cert=record.get("ca_cert"),
                                insecure=bool(record.get("insecure")))

    def auth_config(self, record: dict[str, Any]) -> dict[str, str] | None:
        """docker-py ``auth_config`` for this registry, brokered per engine call."""
        if not record.get("username"):
            return None
        return {"username": record["username"], "password": self._password(record),
                "serveraddress": registry_address(record["url"])}


def public_view(record: dict[str, Any]) -> dict[str, Any]:
    return {"name": record["name"], "url": record["url"], "username": record.get("username"),
            "has_password": bool(record.get("password")),
            "address": registry_address(record["url"]),
            "insecure": bool(record.get("insecure")), "ca_cert": record.get("ca_cert"),
            "created_at": record.get("created_at"), "updated_at": record.get("updated_at")}
