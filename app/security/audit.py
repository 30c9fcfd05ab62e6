"""The audit log: every request that changes something, and every denied one, append-only."""

from __future__ import annotations

import json
import re
from typing import Any

import redis

from app.core.store import PREFIX

_STREAM = STREAM = PREFIX + "audit"
_MAXLEN = MAXLEN = 1_000_000
_SECRET_KEYS = re.compile(r"pass(word)?|secret|token|private|client_key|^key$|credential|"
                          r"authorization|signature", re.IGNORECASE)
_SECRET_VALUES = re.compile(r"-----BEGIN [A-Z ]+-----|\bdy_[A-Za-z0-9_-]{8,}|\bBearer\s+\S+")
REDACTED = "***"


def redact(value: Any, key: str = "") -> Any:
    """A copy of a request body with secrets removed (by key name and by value shape)."""
    if key and _SECRET_KEYS.search(key):
        return REDACTED
    if isinstance(value, dict):
        if value.get("secret") is True and "value" in value:  # build args marked secret
            return {**value, "value": REDACTED}
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    if isinstance(value, str) and _SECRET_VALUES.search(value):
        return REDACTED
    return value


_CHANGES = ("POST", "PUT", "PATCH", "DELETE")
DENIED = (401, 403, 429)


def audited(method: str, status: int) -> bool:
    """Whether a request is recorded: it changes something, or it was denied."""
    return method in _CHANGES or status in DENIED


def entry(*, ts: str, request_id: str | None, principal: Any, method: str, route: str,
          path: str, view_args: dict[str, Any], query: dict[str, list[str]], body: Any,
          status: int, answer: Any, chat: dict[str, Any] | None,
          job_id: str | None = None) -> dict[str, Any]:
    """One audit record, the same for an HTTP request and its chat twin.

    ``principal`` is the authentication result (None when it failed); ``answer`` is the JSON
    answered (a job, a problem), ``chat`` who sent a chat command (None over HTTP);
    ``job_id`` the job answered when the caller knows it without ``answer``.
    """
    answer = answer if isinstance(answer, dict) else {}
    return {
        "ts": ts, "request_id": request_id,
        "actor": principal.name if principal else None,
        "token_id": principal.token_id if principal else None,
        "method": method, "route": route, "path": path,
        "host": view_args.get("host"),
        "target": view_args.get("ref") or view_args.get("name") or view_args.get("job_id")
        or view_args.get("token_id"),
        "request": {"query": redact(query), "body": redact(body)},
        "decision": "denied" if status in DENIED else "allowed",
        "rule": answer.get("rule"),
        "outcome": "denied" if status in DENIED else "error" if status >= 400 else "ok",
        "status": status,
        "job_id": job_id or (answer.get("id") if answer.get("links", {}).get("events")
                             else None),
        "chat": chat,
    }


def encode(entry: dict[str, Any]) -> str:
    """An entry as the stream stores it (``AuditLog.record``, or a job script's own XADD)."""
    return json.dumps(entry, default=str)


class AuditLog:
    """Records in a capped Redis stream, newest last; no API removes or edits them."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def record(self, entry: dict[str, Any]) -> None:
        self.redis.xadd(_STREAM, {"entry": encode(entry)}, maxlen=_MAXLEN, approximate=True)

    def query(self, *, actor: str | None = None, host: str | None = None,
              outcome: str | None = None, since_ms: int | None = None,
              until_ms: int | None = None, limit: int = 100,
              cursor: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
        """Newest first, filtered; returns the page and the cursor of the next page."""
        upper = f"({cursor}" if cursor else (str(until_ms) if until_ms is not None else "+")
        lower = str(since_ms) if since_ms is not None else "-"
        found: list[dict[str, Any]] = []
        if upper in ("(0-0", "(0"):  # nothing is older than the first possible id
            return found, None
        scanned = 0
        while len(found) < limit and scanned < 50_000:
            batch = self.redis.xrevrange(_STREAM, max=upper, min=lower, count=500)
            if not batch:
                return found, None
            scanned += len(batch)
            for entry_id, fields in batch:
                entry = json.loads(fields["entry"])
                if _matches(entry, actor, host, outcome):
                    found.append({"id": entry_id, **entry})
                    if len(found) == limit:
                        return found, entry_id
            upper = f"({batch[-1][0]}"
        return found, (found[-1]["id"] if found else None)


def _matches(entry: dict[str, Any], actor: str | None, host: str | None,
             outcome: str | None) -> bool:
    if actor and entry.get("actor") != actor:
        return False
    if host and entry.get("host") != host:
        return False
    return not (outcome and entry.get("outcome") != outcome)
