"""Least-privilege agents: one Redis ACL user per agent host, reaching only that host.

An agent host's workers log in as ``dockyard-agent-<host>@<db>``. The user may run data
commands (no SCAN/KEYS/RANDOMKEY, pub/sub, admin or dangerous commands, functions) on:

* its host's queues ``host.<h>.ops`` and ``host.<h>.query``, kombu's priority lists of
  them and their binding sets (``_kombu.binding.<q>``, ``_kombu.binding_permanent.<q>``);
* its lanes' heartbeats ``dy:lane:host.<h>.ops|query``;
* every key under ``dy:h:<h>:`` (its jobs, events, replies, pipes, kombu's unacked
  bookkeeping for the agent, a secret-free copy of its host record).

Host names hold no ``:`` and no glob character (``NAME_PATTERN``), so ``dy:h:<h>:*``
never matches another host's keys; queue and lane keys are named exactly, no pattern.

Only the password's SHA-256 is kept (in the host record and in the ACL itself); the
password and the agent's own key are shown once, when they are issued. ACL users live
in the server's memory and are not replicated: ``sync`` rebuilds them from the host
records (central read workers at start, beat every minute).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import secrets
from typing import Any
from urllib.parse import quote

import redis
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from app.core.config import Settings
from app.core.store import PREFIX
from app.security import signing

logger = logging.getLogger(__name__)

USER_PREFIX = "dockyard-agent-"
# kombu's Redis transport keeps priorities 3, 6 and 9 in lists named queue + this + digit.
_PRIORITY_SEP = "\x06\x16"
_PRIORITY_STEPS = ("3", "6", "9")
_KEY_INFO = b"dockyard agent key v1:"

# Commands: data commands only. ACL checks the keys of every command, inside Lua too, so
# EVAL/EVALSHA reach only declared keys the patterns allow.
_COMMANDS = (
    "-@all", "+@read", "+@write", "+@list", "+@hash", "+@string", "+@set", "+@sortedset",
    "+@stream", "+@keyspace", "+@transaction", "+@connection", "+@blocking",
    "+eval", "+evalsha", "+script|load", "+script|exists",
    "-@dangerous", "-@admin", "-@pubsub", "-keys", "-scan", "-randomkey", "-copy", "-move",
    "-function", "-fcall", "-fcall_ro", "-publish", "-spublish", "-subscribe",
    "-psubscribe", "-ssubscribe", "-dbsize", "-swapdb", "-flushdb", "-flushall",
    "-client|list", "-client|kill", "-client|info", "-sort", "-sort_ro", "-object",
    "-readonly", "-readwrite",
    "+time",  # the job scripts' runner leases read the server's clock
)


def key_prefix(host: str) -> str:
    """Every key a host's worker writes lives under this prefix."""
    return f"{PREFIX}h:{host}:"


def redis_db(settings: Settings) -> int:
    return int(redis.connection.parse_url(settings.redis_url).get("db") or 0)


def user_name(host: str, db: int) -> str:
    return f"{USER_PREFIX}{host}@{db}"


def queue_keys(host: str) -> list[str]:
    """The broker keys of a host's two queues: lists, priority lists, binding sets."""
    keys = []
    for queue in (f"host.{host}.ops", f"host.{host}.query"):
        keys.append(queue)
        keys.extend(queue + _PRIORITY_SEP + step for step in _PRIORITY_STEPS)
        keys.append(f"_kombu.binding.{queue}")
        # kombu >= 5.7 also records a permanent (non-expiring) queue's binding here.
        keys.append(f"_kombu.binding_permanent.{queue}")
        keys.append(f"{PREFIX}lane:{queue}")
    return keys


def acl_rules(host: str, password_sha256: str) -> list[str]:
    """The ``ACL SETUSER`` rules of a host's agent user."""
    return ["reset", "on", "#" + password_sha256, "resetchannels",
            *(f"~{key}" for key in queue_keys(host)), f"~{key_prefix(host)}*", *_COMMANDS]


def transport_options(host: str) -> dict[str, str]:
    """kombu's unacked bookkeeping for an agent, under its own prefix (the defaults are shared)."""
    prefix = key_prefix(host)
    return {"unacked_key": prefix + "unacked", "unacked_index_key": prefix + "unacked_index",
            "unacked_mutex_key": prefix + "unacked_mutex"}


def agent_key(settings: Settings, host: str, salt: str) -> str:
    """The agent's own sealing key (urlsafe base64 of 32 bytes), derived from the secret key."""
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=bytes.fromhex(salt),
                   info=_KEY_INFO + host.encode()).derive(settings.secret_key.encode())
    return base64.urlsafe_b64encode(derived).decode()


def seal_for_agent(key: str, value: dict[str, Any]) -> str:
    return Fernet(key.encode()).encrypt(json.dumps(value).encode()).decode()


def unseal_as_agent(key: str, token: str) -> dict[str, Any]:
    return json.loads(Fernet(key.encode()).decrypt(token.encode()))


def agent_records(client: redis.Redis) -> list[dict[str, Any]]:
    """The host records of agent hosts that have credentials."""
    records = (json.loads(raw) for raw in client.hvals(PREFIX + "hosts"))
    return [r for r in records if r.get("route") == "agent" and r.get("agent")]


def new_access(settings: Settings, host: str) -> tuple[dict[str, str], dict[str, str]]:
    """Fresh credentials for a host's agent.

    Returns:
        (what the host record keeps: the password's SHA-256 and the key salt,
         what the caller is shown once: ``redis_url``, ``agent_key``, ``task_verify_key``).
    """
    password = secrets.token_urlsafe(32)
    salt = secrets.token_hex(16)
    stored = {"password_sha256": hashlib.sha256(password.encode()).hexdigest(), "key_salt": salt}
    shown = {"redis_url": agent_redis_url(settings, host, password),
             "agent_key": agent_key(settings, host, salt),
             "task_verify_key": signing.encode_verify_key(signing.verify_key(settings)),
             "user": user_name(host, redis_db(settings))}
    return stored, shown


def agent_redis_url(settings: Settings, host: str, password: str) -> str:
    """Dockyard's Redis URL with the agent's login instead of the data password."""
    parts = redis.connection.parse_url(settings.redis_url)
    db = redis_db(settings)
    user = quote(user_name(host, db), safe="")
    login = f"{user}:{quote(password, safe='')}@"
    if "path" in parts:
        return f"unix://{login}{parts['path']}?db={db}"
    scheme = "rediss" if settings.redis_url.startswith("rediss://") else "redis"
    address = parts.get("host", "127.0.0.1")
    if ":" in address:
        address = f"[{address}]"
    return f"{scheme}://{login}{address}:{parts.get('port', 6379)}/{db}"


def apply(client: redis.Redis, host: str, db: int, password_sha256: str) -> None:
    """Create or replace the host's ACL user."""
    client.execute_command("ACL", "SETUSER", user_name(host, db),
                           *acl_rules(host, password_sha256))


def revoke(client: redis.Redis, host: str, db: int) -> None:
    """Delete the host's ACL user and close its open connections."""
    name = user_name(host, db)
    client.execute_command("ACL", "DELUSER", name)
    kill_connections(client, name)


def kill_connections(client: redis.Redis, name: str) -> None:
    try:
        client.execute_command("CLIENT", "KILL", "USER", name)
    except redis.ResponseError as exc:  # no such user: nothing was open
        if "No such user" not in str(exc):
            raise


def sync(client: redis.Redis, db: int, records: list[dict[str, Any]]) -> dict[str, int]:
    """Make the server's agent users exactly those the host records name (for this db).

    Returns:
        How many users were set and how many stray ones removed.
    """
    wanted = {user_name(r["name"], db): r for r in records
              if r.get("route") == "agent" and (r.get("agent") or {}).get("password_sha256")}
    suffix = f"@{db}"
    existing = {name.decode() if isinstance(name, bytes) else name
                for name in client.execute_command("ACL", "USERS")}
    existing = {name for name in existing if name.startswith(USER_PREFIX)}
    removed = 0
    for name in existing:
        if name.endswith(suffix) and name not in wanted:
            client.execute_command("ACL", "DELUSER", name)
            kill_connections(client, name)
            removed += 1
    for record in wanted.values():
        apply(client, record["name"], db, record["agent"]["password_sha256"])
    # A host deleted or re-keyed while this ran wrote its record before changing its user:
    # read the records again, so an old password this applied is never left in place.
    now = {user_name(r["name"], db): r["agent"]["password_sha256"]
           for r in agent_records(client)}
    for name, record in wanted.items():
        if now.get(name) != record["agent"]["password_sha256"]:
            if name in now:
                apply(client, record["name"], db, now[name])
            else:
                client.execute_command("ACL", "DELUSER", name)
            kill_connections(client, name)
    return {"set": len(wanted), "removed": removed}
