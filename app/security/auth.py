"""Bearer tokens (stored hashed), roles and host scope."""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis

from app.core.errors import (
    ConflictError,
    ForbiddenError,
    NotFoundError,
    PolicyViolationError,
    UnauthorizedError,
)
from app.core.ids import new_id
from app.core.names import ROLES
from app.core.store import PREFIX, utcnow

_RANK = {role: rank for rank, role in enumerate(ROLES)}
_BY_HASH = PREFIX + "tokens:by-hash"
_BY_ID = PREFIX + "tokens:by-id"
BOOTSTRAP_ID = "bootstrap-admin"
GRANT_RULE = "grant-within-scope"


@dataclass(frozen=True)
class Principal:
    """Who is calling: a token's identity, role and host scope."""

    token_id: str
    name: str
    role: str
    hosts: frozenset[str] | None  # None: every host
    rate_limit: dict[str, int] | None = None  # per-second limits by route class, overriding

    def require_role(self, role: str) -> None:
        if _RANK[self.role] < _RANK[role]:
            raise ForbiddenError(f"this needs the '{role}' role; token '{self.name}' is "
                                 f"'{self.role}'", required_role=role)

    def require_host(self, host: str) -> None:
        if self.hosts is not None and host not in self.hosts:
            raise ForbiddenError(f"token '{self.name}' is not scoped to host '{host}'", host=host)

    def may_see_host(self, host: str) -> bool:
        return self.hosts is None or host in self.hosts

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def scope(self) -> str:
        """The token's host scope as a label value: ``*`` or the sorted host names."""
        return "*" if self.hosts is None else ",".join(sorted(self.hosts))

    def within_scope(self, scope: str | None) -> bool:
        """Whether something labelled with ``scope`` lies within this token's scope.

        An unscoped token covers every scope; a scoped one only scopes made of its own hosts
        (something created by an unscoped token, or before scopes were recorded, is not).
        """
        if self.hosts is None:
            return True
        if not scope or scope == "*":
            return False
        return set(scope.split(",")) <= self.hosts

    def as_caller(self) -> dict[str, Any]:
        """What a worker needs to know of the caller, JSON-ready (it travels with the job)."""
        return {"id": self.token_id, "name": self.name, "role": self.role,
                "hosts": None if self.hosts is None else sorted(self.hosts)}

    @classmethod
    def from_caller(cls, caller: dict[str, Any]) -> Principal:
        hosts = caller.get("hosts")
        return cls(caller.get("id", ""), caller.get("name", ""), caller["role"],
                   None if hosts is None else frozenset(hosts))

    def require_grant_within_scope(self, role: str, hosts: list[str] | None, what: str) -> None:
        """Refuse to hand anyone (a token, a chat user, a subscription) more than this caller has.

        Raises:
            PolicyViolationError: ``role`` outranks the caller's, or ``hosts`` (None: every
                host) is not inside the caller's host scope (rule ``grant-within-scope``).
        """
        if _RANK[role] > _RANK[self.role]:
            raise PolicyViolationError(
                GRANT_RULE, f"token '{self.name}' is '{self.role}' and cannot grant {what} "
                f"the '{role}' role", required_role=role)
        if self.hosts is None:
            return
        if hosts is None:
            raise PolicyViolationError(
                GRANT_RULE, f"token '{self.name}' is scoped to hosts "
                f"({', '.join(sorted(self.hosts))}) and cannot grant {what} every host")
        outside = sorted(set(hosts) - self.hosts)
        if outside:
            raise PolicyViolationError(
                GRANT_RULE, f"token '{self.name}' is scoped to hosts "
                f"({', '.join(sorted(self.hosts))}) and cannot grant {what} host(s) "
                f"{', '.join(outside)}", hosts=outside)


def hash_token(secret: str) -> str:
    # Tokens carry 256 random bits, so a fast hash is enough; no salt is needed.
    return hashlib.sha256(secret.encode()).hexdigest()


class TokenStore:
    """Token records, keyed by the SHA-256 of the secret for lookup and by id for admin."""

    def __init__(self, client: redis.Redis, cache_seconds: float = 0.0) -> None:
        self.redis = client
        self.cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def create(self, name: str, role: str, hosts: list[str] | None = None,
               expires_at: str | None = None,
               rate_limit: dict[str, int] | None = None) -> tuple[dict[str, Any], str]:
        """Create a token; returns its record and the secret (shown once)."""
        token_id = new_id()
        secret = f"dy_{secrets.token_urlsafe(32)}"
        record = {"id": token_id, "name": name, "role": role, "hosts": hosts,
                  "expires_at": expires_at, "created_at": utcnow(), "rate_limit": rate_limit}
        self._store(record, hash_token(secret))
        return record, secret

    def ensure_bootstrap(self, secret: str) -> None:
        """Make ``secret`` the bootstrap admin token, replacing an earlier one."""
        digest = hash_token(secret)
        old = self.redis.hget(_BY_ID, BOOTSTRAP_ID)
        if old and json.loads(old)["hash"] == digest:
            return
        if old:
            self.redis.hdel(_BY_HASH, json.loads(old)["hash"])
        record = {"id": BOOTSTRAP_ID, "name": BOOTSTRAP_ID, "role": "admin", "hosts": None,
                  "expires_at": None, "created_at": utcnow()}
        self._store(record, digest)

    def _store(self, record: dict[str, Any], digest: str) -> None:
        pipe = self.redis.pipeline()
        pipe.hset(_BY_HASH, digest, json.dumps(record))
        pipe.hset(_BY_ID, record["id"], json.dumps({"hash": digest, **record}))
        pipe.execute()

    def list(self) -> list[dict[str, Any]]:
        records = [json.loads(raw) for raw in self.redis.hvals(_BY_ID)]
        for record in records:
            record.pop("hash", None)
        return sorted(records, key=lambda r: r["created_at"])

    def get(self, token_id: str) -> dict[str, Any]:
        """One token's record (without its hash).

        Raises:
            NotFoundError: no such token.
        """
        raw = self.redis.hget(_BY_ID, token_id)
        if raw is None:
            raise NotFoundError(f"no token '{token_id}'")
        record = json.loads(raw)
        record.pop("hash", None)
        return record

    def delete(self, token_id: str) -> None:
        """Revoke a token.

        Raises:
            NotFoundError: no such token.
            ConflictError: the bootstrap admin token, which is configuration
                (DOCKYARD_ADMIN_TOKEN) and would come back at the next start.
        """
        if token_id == BOOTSTRAP_ID:
            raise ConflictError(f"token '{BOOTSTRAP_ID}' is configuration, not data: change or "
                                "unset DOCKYARD_ADMIN_TOKEN and restart to replace it",
                                token=BOOTSTRAP_ID)
        raw = self.redis.hget(_BY_ID, token_id)
        if raw is None:
            raise NotFoundError(f"no token '{token_id}'")
        pipe = self.redis.pipeline()
        pipe.hdel(_BY_HASH, json.loads(raw)["hash"])
        pipe.hdel(_BY_ID, token_id)
        pipe.execute()

    def authenticate(self, authorization: str | None) -> Principal:
        """The principal behind an ``Authorization: Bearer`` header.

        Raises:
            UnauthorizedError: no header, not a bearer token, unknown or expired token.
        """
        if not authorization:
            raise UnauthorizedError("missing Authorization header")
        scheme, _, secret = authorization.partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise UnauthorizedError("Authorization must be 'Bearer <token>'")
        record = self._lookup(hash_token(secret.strip()))
        if record is None:
            raise UnauthorizedError("invalid token")
        expires_at = record.get("expires_at")
        if expires_at and _parse_time(expires_at) <= datetime.now(UTC):
            raise UnauthorizedError("token expired")
        hosts = record.get("hosts")
        return Principal(record["id"], record["name"], record["role"],
                         None if hosts is None else frozenset(hosts), record.get("rate_limit"))

    def _lookup(self, digest: str) -> dict[str, Any] | None:
        now = time.monotonic()
        if self.cache_seconds:
            with self._lock:
                hit = self._cache.get(digest)
            if hit and hit[0] > now:
                return hit[1]
        raw = self.redis.hget(_BY_HASH, digest)
        record = json.loads(raw) if raw else None
        if record is not None and self.cache_seconds:
            with self._lock:
                if len(self._cache) > 10000:
                    self._cache.clear()
                self._cache[digest] = (now + self.cache_seconds, record)
        return record


def _parse_time(value: str) -> datetime:
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
