"""Typed settings read from the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from urllib.parse import SplitResult, parse_qsl, quote, urlencode, urlsplit

_ROOT = Path(__file__).resolve().parents[2]


class SettingsError(ValueError):
    """A DOCKYARD_* variable cannot be used; the message names it."""


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def _env_secret(name: str) -> str:
    """A secret from the file ``NAME_FILE`` names (e.g. a compose secret), else from ``NAME``.

    Files keep secrets out of the environment, which ``docker inspect`` and ``/proc`` show.

    Raises:
        SettingsError: ``NAME_FILE`` is set but cannot be read.
    """
    path = os.environ.get(f"{name}_FILE")
    if not path:
        return os.environ.get(name, "")
    try:
        return Path(path).read_text().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise SettingsError(f"{name}_FILE: cannot read {path}: {reason}") from None


secret_from_env = _env_secret  # for tools and tests that need one secret the way Settings reads it


def _with_password(url: str, password: str) -> str:
    """``url`` with ``password`` as its Redis AUTH password (``unix://`` takes it as a query).

    Raises:
        SettingsError: the URL already carries a password of its own.
    """
    parts = urlsplit(url)
    query = parse_qsl(parts.query)
    if parts.password is not None or any(key == "password" for key, _ in query):
        raise SettingsError("DOCKYARD_REDIS_URL carries a password and DOCKYARD_REDIS_PASSWORD "
                            "(or _FILE) is set too: give the password in one place")
    if parts.scheme == "unix":
        return _unsplit(parts._replace(query=urlencode([*query, ("password", password)])))
    user = quote(parts.username or "", safe="")
    netloc = f"{user}:{quote(password, safe='')}@{parts.netloc.rpartition('@')[2]}"
    return _unsplit(parts._replace(netloc=netloc))


def redacted_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, fit for logs and diagnostics."""
    parts = urlsplit(url)
    query = [(key, "***" if key == "password" else value) for key, value in parse_qsl(parts.query)]
    netloc = parts.netloc
    if parts.password is not None:
        netloc = f"{parts.username or ''}:***@{netloc.rpartition('@')[2]}"
    return _unsplit(parts._replace(netloc=netloc, query=urlencode(query, safe="*")))


def _unsplit(parts: SplitResult) -> str:
    # urlunsplit would turn unix:///path into unix:/path, which redis-py does not read.
    query = f"?{parts.query}" if parts.query else ""
    return f"{parts.scheme}://{parts.netloc}{parts.path}{query}"


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    return default if raw in (None, "") else int(raw)


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    return default if raw in (None, "") else float(raw)


def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    return raw.strip().lower() in ("1", "true", "yes", "on")


def _env_list(name: str, default: str) -> tuple[str, ...]:
    raw = os.environ.get(name, default)
    return tuple(part.strip() for part in raw.split(",") if part.strip())


@dataclass(frozen=True)
class Settings:
    """Every knob Dockyard reads; each maps to one ``DOCKYARD_*`` variable."""

    # With a password set, redis_url is the URL with it (see __post_init__): every client
    # (store, Celery broker, health checks) connects with settings.redis_url.
    redis_url: str = field(default_factory=lambda: _env("DOCKYARD_REDIS_URL", "redis://127.0.0.1:6379/0"))
    redis_password: str = field(default_factory=lambda: _env_secret("DOCKYARD_REDIS_PASSWORD"))
    # `make run` on a machine whose loopback Redis already runs without a password: readyz
    # accepts that Redis (only if it is on loopback); everywhere else an open Redis is unready.
    dev_open_redis: bool = field(default_factory=lambda: _env_bool("DOCKYARD_DEV_OPEN_REDIS", False))
    # High availability: find the primary through Redis Sentinel. DOCKYARD_REDIS_URL then
    # gives only the database (and a password, if not given apart).
    redis_sentinels: tuple[str, ...] = field(
        default_factory=lambda: _env_list("DOCKYARD_REDIS_SENTINELS", ""))
    redis_master: str = field(default_factory=lambda: _env("DOCKYARD_REDIS_MASTER", ""))
    # Replicas that must confirm a job's creation (and a worker's final write) before it is
    # answered: WAIT n. -1 means the default: 1 with sentinels, else 0. Only replicas the
    # primary has connected are counted, so losing the only one does not block.
    redis_wait_replicas: int = field(
        default_factory=lambda: _env_int("DOCKYARD_REDIS_WAIT_REPLICAS", -1))
    redis_wait_timeout_ms: int = field(
        default_factory=lambda: _env_int("DOCKYARD_REDIS_WAIT_TIMEOUT_MS", 1000))
    secret_key: str = field(default_factory=lambda: _env_secret("DOCKYARD_SECRET_KEY"))
    admin_token: str = field(default_factory=lambda: _env_secret("DOCKYARD_ADMIN_TOKEN"))
    state_dir: Path = field(
        default_factory=lambda: Path(_env("DOCKYARD_STATE_DIR", str(_ROOT / ".state"))).resolve()
    )
    bind_roots: tuple[str, ...] = field(
        default_factory=lambda: _env_list("DOCKYARD_BIND_ROOTS", "/srv/dockyard")
    )
    allowed_registries: tuple[str, ...] = field(
        default_factory=lambda: _env_list("DOCKYARD_ALLOWED_REGISTRIES", "")
    )
    allowed_networks: tuple[str, ...] = field(
        default_factory=lambda: _env_list("DOCKYARD_ALLOWED_NETWORKS", "")
    )
    allowed_volumes: tuple[str, ...] = field(
        default_factory=lambda: _env_list("DOCKYARD_ALLOWED_VOLUMES", "")
    )
    git_allowed_hosts: tuple[str, ...] = field(
        default_factory=lambda: _env_list("DOCKYARD_GIT_ALLOWED_HOSTS", "")
    )
    admin_policy_exceptions: tuple[str, ...] = field(
        default_factory=lambda: _env_list("DOCKYARD_ADMIN_POLICY_EXCEPTIONS", "")
    )
    max_body_bytes: int = field(default_factory=lambda: _env_int("DOCKYARD_MAX_BODY_BYTES", 1 << 20))
    max_upload_bytes: int = field(
        default_factory=lambda: _env_int("DOCKYARD_MAX_UPLOAD_BYTES", 8 << 30))
    job_retention_seconds: int = field(
        default_factory=lambda: _env_int("DOCKYARD_JOB_RETENTION_SECONDS", 7 * 24 * 3600)
    )
    max_wait_seconds: float = field(default_factory=lambda: _env_float("DOCKYARD_MAX_WAIT_SECONDS", 60.0))
    query_timeout_seconds: float = field(
        default_factory=lambda: _env_float("DOCKYARD_QUERY_TIMEOUT_SECONDS", 15.0)
    )
    engine_timeout_seconds: float = field(
        default_factory=lambda: _env_float("DOCKYARD_ENGINE_TIMEOUT_SECONDS", 10.0)
    )
    task_time_limit_seconds: int = field(
        default_factory=lambda: _env_int("DOCKYARD_TASK_TIME_LIMIT_SECONDS", 3600)
    )
    visibility_timeout_seconds: int = field(
        default_factory=lambda: _env_int("DOCKYARD_VISIBILITY_TIMEOUT_SECONDS", 0)
    )
    engine_pool_size: int = field(default_factory=lambda: _env_int("DOCKYARD_ENGINE_POOL_SIZE", 4))
    agent_host: str = field(default_factory=lambda: _env("DOCKYARD_AGENT_HOST", ""))
    # An agent's own sealing key (agent_credentials.agent_key): opens the registry passwords
    # sealed for its host, nothing else.
    agent_key: str = field(default_factory=lambda: _env_secret("DOCKYARD_AGENT_KEY"))
    agent_engine_url: str = field(
        default_factory=lambda: _env("DOCKYARD_AGENT_ENGINE_URL", "unix:///var/run/docker.sock"))
    rate_limit_reads: int = field(
        default_factory=lambda: _env_int("DOCKYARD_RATE_LIMIT_READS", 1000))
    rate_limit_ops: int = field(default_factory=lambda: _env_int("DOCKYARD_RATE_LIMIT_OPS", 2000))
    token_cache_seconds: float = field(
        default_factory=lambda: _env_float("DOCKYARD_TOKEN_CACHE_SECONDS", 2.0)
    )
    # Interactive sessions: a session ends after this long with no byte either way, or
    # after the maximum however busy; its WebSocket ticket is good for the TTL, once.
    session_idle_seconds: float = field(
        default_factory=lambda: _env_float("DOCKYARD_SESSION_IDLE_SECONDS", 900.0))
    session_max_seconds: float = field(
        default_factory=lambda: _env_float("DOCKYARD_SESSION_MAX_SECONDS", 8 * 3600.0))
    session_ticket_seconds: float = field(
        default_factory=lambda: _env_float("DOCKYARD_SESSION_TICKET_SECONDS", 30.0))
    public_metrics: bool = field(default_factory=lambda: _env_bool("DOCKYARD_PUBLIC_METRICS", True))
    # Workers and agents verify task messages with this public key (base64 Ed25519); when
    # empty it is derived from secret_key, which also derives the signing key.
    task_verify_key: str = field(default_factory=lambda: _env("DOCKYARD_TASK_VERIFY_KEY", ""))
    task_signature_max_age_seconds: int = field(
        default_factory=lambda: _env_int("DOCKYARD_TASK_SIGNATURE_MAX_AGE_SECONDS", 24 * 3600))
    # Backups: bundles live here (one shared mount for the API and every worker, agents
    # included); empty means <state_dir>/backups. An export stream silent this long fails.
    backup_dir: str = field(default_factory=lambda: _env("DOCKYARD_BACKUP_DIR", "").strip())
    backup_stall_seconds: float = field(
        default_factory=lambda: _env_float("DOCKYARD_BACKUP_STALL_SECONDS", 60.0))
    # Outbound webhooks and job callbacks: only to these hosts (empty: none), callbacks signed
    # with webhook_secret; deliveries run on webhook_queue (the central read lane by default,
    # so agents never need outbound access beyond Redis).
    webhook_allowed_hosts: tuple[str, ...] = field(
        default_factory=lambda: tuple(h.lower() for h in _env_list("DOCKYARD_WEBHOOK_ALLOWED_HOSTS", "")))
    webhook_secret: str = field(default_factory=lambda: _env_secret("DOCKYARD_WEBHOOK_SECRET"))
    webhook_retry_base_seconds: float = field(
        default_factory=lambda: _env_float("DOCKYARD_WEBHOOK_RETRY_BASE_SECONDS", 5.0))
    webhook_max_attempts: int = field(
        default_factory=lambda: int(_env_float("DOCKYARD_WEBHOOK_MAX_ATTEMPTS", 5)))
    webhook_timeout_seconds: float = field(
        default_factory=lambda: _env_float("DOCKYARD_WEBHOOK_TIMEOUT_SECONDS", 5.0))
    webhook_queue: str = field(default_factory=lambda: _env("DOCKYARD_WEBHOOK_QUEUE", "engine.query"))
    events_maxlen: int = field(default_factory=lambda: int(_env_float("DOCKYARD_EVENTS_MAXLEN", 100_000)))
    # Chat integrations: each is off while its secret is empty.
    slack_signing_secret: str = field(
        default_factory=lambda: _env_secret("DOCKYARD_SLACK_SIGNING_SECRET"))
    mattermost_token: str = field(default_factory=lambda: _env_secret("DOCKYARD_MATTERMOST_TOKEN"))
    # Logs: text on a terminal, json in the image; the level of every Dockyard process.
    log_format: str = field(
        default_factory=lambda: "json" if _env("DOCKYARD_LOG_FORMAT", "text").strip().lower() == "json"
        else "text")
    log_level: str = field(
        default_factory=lambda: (_env("DOCKYARD_LOG_LEVEL", "") or "INFO").strip().upper())

    def __post_init__(self) -> None:
        if self.redis_sentinels and not self.redis_master:
            raise SettingsError("DOCKYARD_REDIS_SENTINELS is set but DOCKYARD_REDIS_MASTER is not: "
                                "name the master the sentinels monitor")
        for address in self.redis_sentinels:
            host, _, port = address.rpartition(":")
            if not host or not port.isdigit():
                raise SettingsError(f"DOCKYARD_REDIS_SENTINELS: '{address}' is not host:port")
        if self.visibility_timeout_seconds and \
                self.visibility_timeout_seconds <= self.task_time_limit_seconds:
            raise ValueError(
                "DOCKYARD_VISIBILITY_TIMEOUT_SECONDS must exceed DOCKYARD_TASK_TIME_LIMIT_SECONDS, "
                "or running jobs are delivered a second time")
        if self.redis_password:
            # The one place the password joins the URL (frozen: set through object).
            object.__setattr__(self, "redis_url", _with_password(self.redis_url, self.redis_password))

    @property
    def run_dir(self) -> Path:
        return self.state_dir / "run"

    @property
    def wait_replicas(self) -> int:
        """DOCKYARD_REDIS_WAIT_REPLICAS, or its default (1 with sentinels, else 0)."""
        if self.redis_wait_replicas >= 0:
            return self.redis_wait_replicas
        return 1 if self.redis_sentinels else 0

    @property
    def effective_visibility_timeout(self) -> int:
        """Broker visibility timeout: explicit, or comfortably above the longest task."""
        return self.visibility_timeout_seconds or self.task_time_limit_seconds + 600

    def as_public_dict(self) -> dict[str, object]:
        """Settings without secrets, for diagnostics."""
        hidden = {"secret_key", "agent_key", "admin_token", "redis_password", "webhook_secret",
                  "slack_signing_secret", "mattermost_token"}
        public = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in hidden}
        public["redis_url"] = redacted_url(self.redis_url)
        return public
