"""The host inventory: how each Docker engine is reached and which queues serve it."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from typing import Any
from urllib.parse import SplitResult, urlsplit

import redis
from cryptography.hazmat.primitives import serialization

from app.core.config import Settings
from app.core.errors import ConflictError, InvalidInputError, NotFoundError
from app.core.names import NAME_PATTERN
from app.core.store import PREFIX, utcnow
from app.registry.registries import RegistryStore
from app.security import agent_access, crypto

_HOSTS = PREFIX + "hosts"
HOSTS_KEY = _HOSTS  # the hash of host records (name -> JSON), read by the job script
_STATUS = PREFIX + "hosts:status"
_REVISION = PREFIX + "hosts:revision"
RESERVED_NAMES = frozenset({"auto"})
TLS_FIELDS = ("ca_cert", "client_cert", "client_key")
SSH_FIELDS = ("private_key", "known_hosts", "passphrase")
_SSH_USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}")
_CACHE_SIZE = 10_000


def validate_url(url: str, has_tls: bool, has_ssh: bool = False) -> None:
    """Check a host URL the way the engine client will use it.

    Raises:
        InvalidInputError: unsupported scheme, missing path/port/user, plain TCP off loopback,
            or credentials that do not fit the scheme.
    """
    parts = urlsplit(url)
    if parts.scheme == "ssh":
        _validate_ssh_url(parts, has_tls, has_ssh)
        return
    if has_ssh:
        message = "ssh material only applies to ssh:// URLs"
        raise InvalidInputError(message, errors={"ssh": [message]})
    if parts.scheme == "unix":
        if not parts.path.startswith("/"):
            raise _url_error("unix:// URLs need an absolute socket path, e.g. unix:///var/run/docker.sock")
        return
    if parts.scheme == "tcp":
        try:
            port = parts.port
        except ValueError:
            port = None
        if not parts.hostname or not port:
            raise _url_error("tcp:// URLs need a host and a port, e.g. tcp://10.0.0.5:2376")
        if not has_tls and not _is_loopback(parts.hostname):
            raise _url_error("tcp:// engines off loopback must use mutual TLS: give tls "
                             "{ca_cert, client_cert, client_key}")
        return
    raise _url_error(f"unsupported scheme '{parts.scheme or url}': use unix://, tcp:// or ssh://")


def _validate_ssh_url(parts: SplitResult, has_tls: bool, has_ssh: bool) -> None:
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        raise _url_error("ssh:// URLs take a port from 1 to 65535, e.g. ssh://deploy@10.0.0.5:2222")
    if not parts.hostname or not parts.username or not _SSH_USER.fullmatch(parts.username):
        raise _url_error("ssh:// URLs need a user and a host, e.g. ssh://deploy@10.0.0.5")
    if parts.password is not None:
        raise _url_error("ssh:// URLs carry no password: authenticate with ssh.private_key")
    if parts.path or parts.query or parts.fragment:
        raise _url_error("ssh:// URLs are ssh://user@host[:port], with no path or query")
    if has_tls:
        raise _url_error("ssh:// hosts authenticate with ssh {private_key, known_hosts}, not tls")
    if not has_ssh:
        message = "ssh:// hosts need ssh {private_key, known_hosts}"
        raise InvalidInputError(message, errors={"ssh": [message]})


def validate_ssh(ssh: dict[str, str | None], url: str) -> None:
    """Parse the SSH key (and known_hosts) so a bad key is refused at registration.

    Raises:
        InvalidInputError: a field does not parse, the passphrase does not fit the key, or
            known_hosts has no entry for the URL's server.
    """
    # Imported here: paramiko and docker-py are worker libraries; the API loads them only
    # when an ssh:// host is registered (see docs/benchmarks.md, idle memory).
    from app.engine.ssh import SSHMaterialError, validate_material

    try:
        validate_material(ssh, url)
    except SSHMaterialError as exc:
        raise InvalidInputError(f"ssh {exc.field}: {exc.message}",
                                errors={"ssh": {exc.field: [exc.message]}}) from None


def validate_tls(tls: dict[str, str]) -> None:
    """Parse PEM material so a bad certificate is refused at registration, not at first use.

    Raises:
        InvalidInputError: a field is missing or does not parse, or key and cert do not pair.
    """
    errors: dict[str, list[str]] = {}
    for name in TLS_FIELDS:
        if not tls.get(name):
            errors[name] = ["required for mutual TLS"]
    if errors:
        raise InvalidInputError("incomplete TLS material", errors={"tls": errors})
    # Imported here: only registering a TLS host parses certificates (~1.3 MiB per process).
    from cryptography import x509

    certs = {}
    for name in ("ca_cert", "client_cert"):
        try:
            certs[name] = x509.load_pem_x509_certificates(tls[name].encode())[0]
        except ValueError:
            errors[name] = ["not a PEM certificate"]
    try:
        key = serialization.load_pem_private_key(tls["client_key"].encode(), password=None)
    except (ValueError, TypeError):
        errors["client_key"] = ["not an unencrypted PEM private key"]
        key = None
    if key is not None and "client_cert" in certs:
        cert_public = certs["client_cert"].public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        key_public = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        if cert_public != key_public:
            errors["client_key"] = ["does not match client_cert"]
    if errors:
        raise InvalidInputError("TLS material does not parse", errors={"tls": errors})


def queues_for(record: dict[str, Any]) -> tuple[str, str]:
    """The (ops, query) queues that serve a host."""
    if record.get("route") == "agent":
        return f"host.{record['name']}.ops", f"host.{record['name']}.query"
    return "engine.ops", "engine.query"


class HostStore:
    """Host records in ``dy:hosts``; TLS and SSH material sealed with the secret key."""

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.redis = client
        self.settings = settings
        # name -> (stored JSON, its SHA-1): see ``get_checked``.
        self._cache: dict[str, tuple[str, str]] = {}

    def create(self, name: str, url: str, tls: dict[str, str] | None, route: str,
               labels: dict[str, str], ssh: dict[str, str | None] | None = None) -> dict[str, Any]:
        if name in RESERVED_NAMES:
            raise InvalidInputError(f"'{name}' is a reserved host name",
                                    errors={"name": ["reserved"]})
        validate_url(url, bool(tls), bool(ssh))
        if tls:
            validate_tls(tls)
        if ssh:
            validate_ssh(ssh, url)
        now = utcnow()
        record = {"name": name, "url": url, "route": route, "labels": labels,
                  "tls": crypto.seal(self.settings, tls) if tls else None,
                  "ssh": crypto.seal(self.settings, _ssh_fields(ssh)) if ssh else None,
                  "created_at": now, "updated_at": now, "revision": self._next_revision()}
        if not self.redis.hsetnx(_HOSTS, name, json.dumps(record)):
            raise ConflictError(f"host '{name}' already exists")
        self._write_copy(record)
        return record

    def upsert(self, name: str, url: str, tls: dict[str, str] | None = None,
               route: str = "central", labels: dict[str, str] | None = None) -> dict[str, Any]:
        """Create or replace a host (used by bootstrap, where re-running must be safe)."""
        try:
            return self.create(name, url, tls, route, labels or {})
        except ConflictError:
            return self.update(name, {"url": url, "tls": tls, "route": route,
                                      "labels": labels or {}})

    def update(self, name: str, changes: dict[str, Any]) -> dict[str, Any]:
        record = self.get(name)
        if "tls" in changes:
            tls = changes.pop("tls")
            if tls:
                validate_tls(tls)
            record["tls"] = crypto.seal(self.settings, tls) if tls else None
        ssh = changes.pop("ssh") if "ssh" in changes else self.ssh_material(record)
        was_agent = record.get("route") == "agent"
        record.update(changes)
        validate_url(record["url"], bool(record["tls"]), bool(ssh))
        if ssh:
            # Checked against the URL even when only the URL changed: known_hosts must name it.
            validate_ssh(ssh, record["url"])
        record["ssh"] = crypto.seal(self.settings, _ssh_fields(ssh)) if ssh else None
        record["updated_at"] = utcnow()
        record["revision"] = self._next_revision()
        if was_agent and record.get("route") != "agent":
            record.pop("agent", None)
        self.redis.hset(_HOSTS, name, json.dumps(record))
        if was_agent and record.get("route") != "agent":
            agent_access.revoke(self.redis, name, agent_access.redis_db(self.settings))
            self.redis.delete(agent_access.key_prefix(name) + "registries")
        self._write_copy(record)
        return record

    def issue_agent_access(self, name: str) -> dict[str, str]:
        """New credentials for an agent host's agent (its ACL user); the old ones stop working.

        Returns:
            What the caller is shown once (see ``agent_access.new_access``).
        """
        record = self.get(name)
        stored, shown = agent_access.new_access(self.settings, name)
        record["agent"] = stored
        self.redis.hset(_HOSTS, name, json.dumps(record))
        db = agent_access.redis_db(self.settings)
        agent_access.apply(self.redis, name, db, stored["password_sha256"])
        # Connections already logged in keep their user until closed: close them.
        agent_access.kill_connections(self.redis, agent_access.user_name(name, db))
        self._registries().publish_to_agents([record])  # sealed with the new key
        return shown

    def _registries(self) -> RegistryStore:
        return RegistryStore(self.redis, self.settings)

    def _write_copy(self, record: dict[str, Any]) -> None:
        """The secret-free copy of the record an agent may read (under its own prefix)."""
        copy = {key: record.get(key) for key in ("name", "url", "route", "labels", "revision")}
        self.redis.set(agent_access.key_prefix(record["name"]) + "host", json.dumps(copy))

    def get_copy(self, name: str) -> dict[str, Any]:
        """The secret-free copy ``_write_copy`` keeps (what an agent reads of its host)."""
        raw = self.redis.get(agent_access.key_prefix(name) + "host")
        if raw is None:
            raise NotFoundError(f"no host '{name}'", host=name)
        return json.loads(raw)

    def _next_revision(self) -> int:
        # One counter for all hosts: a host deleted and registered again never reuses a
        # revision, so no worker keeps serving it with a client for the old URL.
        return int(self.redis.incr(_REVISION))

    def get(self, name: str) -> dict[str, Any]:
        if self.settings.agent_host:
            # An agent reads only its own host, from the secret-free copy under its prefix.
            return self.get_copy(name)
        raw = self.redis.hget(_HOSTS, name)
        if raw is None:
            raise NotFoundError(f"no host '{name}'", host=name)
        return json.loads(raw)

    def get_checked(self, name: str) -> tuple[dict[str, Any], str]:
        """A host's record and the SHA-1 of its stored JSON, from this process's cache.

        Only for a caller whose write checks that digest in the same round trip (a job
        submission: the job script compares it with ``redis.sha1hex`` of the stored record
        and writes nothing on a mismatch, see ``JobStore.create``), and calls
        ``forget_checked`` then: a cached record is never used unchecked. Absent hosts are
        not cached (404 every time).
        """
        hit = self._cache.get(name)
        if hit is None:
            raw = self.redis.hget(_HOSTS, name)
            if raw is None:
                raise NotFoundError(f"no host '{name}'", host=name)
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.clear()
            hit = self._cache[name] = (raw, _digest(raw))
        return json.loads(hit[0]), hit[1]

    def is_current(self, name: str, digest: str) -> bool:
        """Whether the stored record still has this SHA-1 (False once deleted)."""
        raw = self.redis.hget(_HOSTS, name)
        return raw is not None and _digest(raw) == digest

    def forget_checked(self, name: str) -> None:
        """Drop a cached record its job script found changed (or deleted)."""
        self._cache.pop(name, None)

    def list(self) -> list[dict[str, Any]]:
        return sorted((json.loads(raw) for raw in self.redis.hvals(_HOSTS)),
                      key=lambda r: r["name"])

    def delete(self, name: str) -> None:
        raw = self.redis.hget(_HOSTS, name)
        if raw is None or not self.redis.hdel(_HOSTS, name):
            raise NotFoundError(f"no host '{name}'", host=name)
        self.redis.hdel(_STATUS, name)
        self.redis.delete(*(agent_access.key_prefix(name) + suffix
                            for suffix in ("host", "status", "registries", "outbox")))
        if json.loads(raw).get("route") == "agent":
            agent_access.revoke(self.redis, name, agent_access.redis_db(self.settings))

    def sync_agent_access(self) -> dict[str, int]:
        """Rebuild every agent's ACL user from the records (ACL users are not persisted)."""
        records = self.list()
        for record in records:
            self._write_copy(record)  # hosts registered before copies were kept
        self._registries().publish_to_agents()
        return agent_access.sync(self.redis, agent_access.redis_db(self.settings), records)

    def credentials(self, record: dict[str, Any]) -> dict[str, Any] | None:
        """The unsealed secret an engine client needs: SSH material for ssh://, else TLS."""
        if record["url"].startswith("ssh://"):
            return self.ssh_material(record)
        return crypto.unseal(self.settings, record["tls"]) if record.get("tls") else None

    def tls_material(self, record: dict[str, Any]) -> dict[str, Any] | None:
        """Kept for callers written before ssh://; the same as ``credentials``."""
        return self.credentials(record)

    def ssh_material(self, record: dict[str, Any]) -> dict[str, Any] | None:
        return crypto.unseal(self.settings, record["ssh"]) if record.get("ssh") else None

    def record_seen(self, name: str, engine_version: str | None) -> None:
        # Under the host's prefix: an agent writes its own host's status, no one else's.
        self.redis.set(agent_access.key_prefix(name) + "status", json.dumps(
            {"last_seen": utcnow(), "engine_version": engine_version}))

    def statuses(self) -> dict[str, dict[str, Any]]:
        names = sorted(self.redis.hkeys(_HOSTS))
        found = {name: json.loads(raw) for name, raw in self.redis.hgetall(_STATUS).items()}
        if names:
            keys = [agent_access.key_prefix(name) + "status" for name in names]
            for name, raw in zip(names, self.redis.mget(keys), strict=True):
                if raw is not None:
                    found[name] = json.loads(raw)
        return found


def _digest(raw: str) -> str:
    # SHA-1 because the job script compares it with Redis's ``redis.sha1hex``: it tells a
    # changed record from the cached one (records are written by admins), no secret.
    return hashlib.sha1(raw.encode(), usedforsecurity=False).hexdigest()


def public_view(record: dict[str, Any], status: dict[str, Any] | None = None) -> dict[str, Any]:
    """A host as the API shows it: never the TLS or SSH material, only whether it is set."""
    status = status or {}
    return {
        "name": record["name"], "url": record["url"], "route": record.get("route", "central"),
        "labels": record.get("labels") or {}, "tls": bool(record.get("tls")),
        "ssh": bool(record.get("ssh")),
        "created_at": record.get("created_at"), "updated_at": record.get("updated_at"),
        "last_seen": status.get("last_seen"), "engine_version": status.get("engine_version"),
    }


def _ssh_fields(ssh: dict[str, Any]) -> dict[str, Any]:
    return {field: ssh.get(field) for field in SSH_FIELDS}


def _url_error(message: str) -> InvalidInputError:
    return InvalidInputError(message, errors={"url": [message]})


def _is_loopback(hostname: str) -> bool:
    if hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


def name_is_valid(name: str) -> bool:
    return re.fullmatch(NAME_PATTERN, name) is not None
