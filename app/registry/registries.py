"""Private registries Dockyard pushes to and pulls from; passwords sealed at rest."""

from __future__ import annotations

import ipaddress
import json
import logging
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import redis

from app.core.config import Settings
from app.core.errors import ConflictError, InvalidInputError, NotFoundError
from app.core.store import PREFIX, utcnow
from app.security import agent_access, crypto
from app.security.policy import image_registry, registry_host

if TYPE_CHECKING:
    from app.registry.client import RegistryEndpoint

logger = logging.getLogger(__name__)

_REGISTRIES = PREFIX + "registries"
# What PATCH may change; a field given as null is cleared (url and insecure cannot be).
MUTABLE_FIELDS = ("url", "username", "password", "insecure", "ca_cert")


_URL_ERROR = "must be http(s)://host[:port]: no user info, path, query or fragment"
_HOST_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


def parse_registry_url(url: str) -> str:
    """``url`` as ``scheme://host[:port]`` (scheme and host lower-cased, an IDN host in ASCII).

    Raises:
        InvalidInputError: anything else: another scheme, user info, a path other than ``/``,
            a query or fragment, a host that is not a hostname or IP, a port outside 1-65535.
    """
    def refuse(reason: str) -> InvalidInputError:
        return InvalidInputError(f"registry url {reason}", errors={"url": [_URL_ERROR]})

    if not url.isprintable() or any(ch.isspace() for ch in url):
        raise refuse("holds whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise refuse("does not parse") from None
    if parts.scheme.lower() not in ("http", "https") or "://" not in url:
        raise refuse("needs the scheme http:// or https://")
    if "@" in parts.netloc:
        raise refuse("must not carry user info; give username and password as fields")
    if parts.path not in ("", "/") or "?" in url or "#" in url:
        raise refuse("must not have a path, query or fragment")
    host = _ascii_host(parts.hostname or "")
    if host is None:
        raise refuse("has no valid host name or IP address")
    if (port is not None and not 1 <= port <= 65535) or parts.netloc.endswith(":"):
        raise refuse("has a port outside 1-65535")
    return f"{parts.scheme.lower()}://{host}" + (f":{port}" if port is not None else "")


def _ascii_host(host: str) -> str | None:
    """The host as it prefixes image references, or None when it is neither a name nor an IP."""
    if not host:
        return None
    try:
        address = ipaddress.ip_address(host)
        return f"[{address.compressed}]" if address.version == 6 else address.compressed
    except ValueError:
        pass
    try:
        ascii_host = host.encode("idna").decode("ascii").lower()
    except UnicodeError:
        return None
    labels = ascii_host.split(".")
    if len(ascii_host) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in labels):
        return None
    return ascii_host


def registry_address(url: str) -> str:
    """The ``host:port`` part that prefixes image references (``127.0.0.1:5000/team/web``).

    A record stored before URLs were checked strictly may lack the scheme (docker reads that
    as https).
    """
    parts = urlsplit(url if "://" in url else f"https://{url}")
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidInputError("registry url must be http(s)://host[:port]",
                                errors={"url": ["must be http(s)://host[:port]"]})
    return parts.netloc.lower()


def require_reference_in_registry(reference: str, record: dict[str, Any]) -> None:
    """Stored credentials go only to the registry they belong to.

    Raises:
        InvalidInputError: ``reference`` lives in another registry than ``record`` (422 on
            field ``registry``); a reference naming no registry lives on Docker Hub.
    """
    named = registry_host(image_registry(reference))
    address = registry_host(registry_address(record["url"]))
    if named != address:
        raise InvalidInputError(
            f"'{reference}' is in registry '{named}'; the credentials of registry "
            f"'{record['name']}' ({address}) are only sent to {address}",
            errors={"registry": [f"registry '{record['name']}' is {address}, the image is "
                                 f"in '{named}'"]})


def validate_ca_cert(pem: str) -> None:
    """Parse a CA bundle so a bad one is refused at registration, not at first use.

    Raises:
        InvalidInputError: ``pem`` holds no parseable PEM certificate.
    """
    from cryptography import x509  # only a registration parses certificates (~1.3 MiB)

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
        url = parse_registry_url(url)
        _validate_credentials(username, password)
        if ca_cert:
            validate_ca_cert(ca_cert)
        record = {"name": name, "url": url, "username": username,
                  "password": self._seal(password), "insecure": insecure,
                  "ca_cert": ca_cert or None, "created_at": utcnow(), "updated_at": None}
        self.redis.hset(_REGISTRIES, name, json.dumps(record))
        self.publish_to_agents()
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
            record["url"] = parse_registry_url(changes["url"])
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
        self.publish_to_agents()
        logger.info("registry %s updated fields=%s", name,
                    ",".join(sorted(k for k in changes if k in MUTABLE_FIELDS)))
        return record

    def _hash(self) -> str:
        # An agent reads the copy sealed for its host (see publish_to_agents), no other.
        agent = self.settings.agent_host
        return agent_access.key_prefix(agent) + "registries" if agent else _REGISTRIES

    def publish_to_agents(self, hosts: list[dict[str, Any]] | None = None) -> None:
        """Copy the registries under each agent host's prefix, each password sealed with
        that agent's own key (an agent holds no DOCKYARD_SECRET_KEY)."""
        records = self.list()
        for host in agent_access.agent_records(self.redis) if hosts is None else hosts:
            key = agent_access.agent_key(self.settings, host["name"], host["agent"]["key_salt"])
            copy = {}
            for record in records:
                password = self._password(record)
                copy[record["name"]] = json.dumps({**record, "password": agent_access.seal_for_agent(
                    key, {"password": password}) if password else None})
            target = agent_access.key_prefix(host["name"]) + "registries"
            pipe = self.redis.pipeline(transaction=True)
            pipe.delete(target)
            if copy:
                pipe.hset(target, mapping=copy)
            pipe.execute()

    def get(self, name: str) -> dict[str, Any]:
        raw = self.redis.hget(self._hash(), name)
        if raw is None:
            raise NotFoundError(f"no registry '{name}'")
        return json.loads(raw)

    def list(self) -> list[dict[str, Any]]:
        return sorted((json.loads(r) for r in self.redis.hvals(self._hash())),
                      key=lambda r: r["name"])

    def delete(self, name: str) -> None:
        if not self.redis.hdel(_REGISTRIES, name):
            raise NotFoundError(f"no registry '{name}'")
        self.publish_to_agents()

    def _seal(self, password: str | None) -> str | None:
        return crypto.seal(self.settings, {"password": password}) if password else None

    def _password(self, record: dict[str, Any]) -> str:
        if self.settings.agent_host and record.get("password"):
            return agent_access.unseal_as_agent(self.settings.agent_key,
                                                record["password"])["password"]
        return crypto.unseal(self.settings, record["password"])["password"] \
            if record.get("password") else ""

    def endpoint(self, record: dict[str, Any]) -> RegistryEndpoint:
        """How a worker reaches this registry's v2 API (the password unsealed in memory only)."""
        # Imported here: it loads requests, which beat never needs.
        from app.registry.client import RegistryEndpoint, base_url

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
