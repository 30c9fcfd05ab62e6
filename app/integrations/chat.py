"""Chat integrations: Slack/Mattermost request verification and chat users mapped to principals."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from datetime import UTC, datetime
from typing import Any

import redis

from app.core.errors import NotFoundError, UnauthorizedError
from app.core.names import ROLES
from app.core.store import PREFIX, utcnow
from app.security.auth import Principal, TokenStore

PLATFORMS = ("slack", "mattermost")
SLACK_WINDOW_SECONDS = 300
MESSAGE_LIMIT = 3500
_USERS = PREFIX + "chat:users"


def slack_signature(secret: str, timestamp: str, body: bytes) -> str:
    """Slack's v0 signature: ``v0=`` + hex HMAC-SHA256 of ``v0:{timestamp}:{raw body}``."""
    base = f"v0:{timestamp}:".encode() + body
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


def verify_slack_request(secret: str, timestamp: str | None, signature: str | None,
                         body: bytes, now: float | None = None) -> None:
    """Accept only a request Slack signed in the last five minutes.

    Raises:
        UnauthorizedError: no secret configured, a missing or stale timestamp, or a
            signature that does not match (compared in constant time).
    """
    if not secret:
        raise UnauthorizedError("Slack commands are disabled (DOCKYARD_SLACK_SIGNING_SECRET)")
    try:
        sent = int(timestamp or "")
    except ValueError:
        raise UnauthorizedError("missing or malformed X-Slack-Request-Timestamp") from None
    if abs((now if now is not None else time.time()) - sent) > SLACK_WINDOW_SECONDS:
        raise UnauthorizedError("stale Slack request (timestamp outside the 5-minute window)")
    expected = slack_signature(secret, str(sent), body)
    if not hmac.compare_digest(expected.encode(), (signature or "").encode()):
        raise UnauthorizedError("invalid Slack signature")


def verify_mattermost_token(expected: str, given: str | None) -> None:
    """Mattermost sends its slash command's token in the ``token`` form field.

    Raises:
        UnauthorizedError: no token configured or a different one (constant-time compare).
    """
    if not expected:
        raise UnauthorizedError("Mattermost commands are disabled (DOCKYARD_MATTERMOST_TOKEN)")
    if not hmac.compare_digest(expected.encode(), (given or "").encode()):
        raise UnauthorizedError("invalid Mattermost token")


def message(text: str, code: bool = False) -> dict[str, Any]:
    """An ephemeral reply (only the caller sees it), optionally as a code block.

    Long answers (logs) keep their end: chat messages are limited to a few thousand lines.
    """
    if len(text) > MESSAGE_LIMIT:
        text = "…" + text[-MESSAGE_LIMIT:]
    return {"response_type": "ephemeral", "text": f"```\n{text}\n```" if code else text}


class ChatUserStore:
    """Chat users an admin mapped to a Dockyard role and host scope (``dy:chat:users``)."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    @staticmethod
    def _key(platform: str, user_id: str) -> str:
        return f"{platform}:{user_id}"

    def put(self, platform: str, user_id: str, *, role: str | None, hosts: list[str] | None,
            token_id: str | None, name: str | None, created_by: str) -> dict[str, Any]:
        """Map a chat user to a role and host scope, or to an existing token's.

        Raises:
            NotFoundError: ``token_id`` names no token.
        """
        if token_id is not None:
            token = self._token(token_id)
            if token is None:
                raise NotFoundError(f"no token '{token_id}'")
            role, hosts = token["role"], token.get("hosts")
        if role not in ROLES:
            raise ValueError(role)
        record = {"platform": platform, "user_id": user_id, "role": role, "hosts": hosts,
                  "token_id": token_id, "name": name or user_id, "created_at": utcnow(),
                  "created_by": created_by}
        self.redis.hset(_USERS, self._key(platform, user_id), json.dumps(record))
        return record

    def list(self, platform: str) -> list[dict[str, Any]]:
        records = [json.loads(raw) for raw in self.redis.hvals(_USERS)]
        return sorted((r for r in records if r["platform"] == platform),
                      key=lambda r: r["user_id"])

    def delete(self, platform: str, user_id: str) -> None:
        if not self.redis.hdel(_USERS, self._key(platform, user_id)):
            raise NotFoundError(f"no {platform} user '{user_id}'")

    def principal_for(self, platform: str, user_id: str) -> Principal | None:
        """The principal a chat user acts as, or None for a user nobody mapped.

        A user mapped to a token acts as that token: its role, scope and rate limits, and
        its id, so the user's commands count against the token's limits.
        """
        raw = self.redis.hget(_USERS, self._key(platform, user_id)) if user_id else None
        if raw is None:
            return None
        record = json.loads(raw)
        name = f"{platform}:{record['name']}"
        if record.get("token_id"):
            # Read the token on every command, so revoking or expiring it refuses the user.
            token = self._token(record["token_id"])
            if token is None or _expired(token.get("expires_at")):
                return None
            hosts = token.get("hosts")
            return Principal(token["id"], name, token["role"],
                             None if hosts is None else frozenset(hosts), token.get("rate_limit"))
        hosts = record.get("hosts")
        return Principal(f"{platform}:{user_id}", name, record["role"],
                         None if hosts is None else frozenset(hosts))

    def _token(self, token_id: str) -> dict[str, Any] | None:
        return next((t for t in TokenStore(self.redis).list() if t["id"] == token_id), None)


def _expired(expires_at: str | None) -> bool:
    if not expires_at:
        return False
    moment = datetime.fromisoformat(expires_at.replace("Z", "+00:00"))
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)) <= datetime.now(UTC)
