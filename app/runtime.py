"""Per-process singletons: the Celery app and the Redis-backed stores."""

from __future__ import annotations

import os
from functools import cached_property

from celery import Celery

from app.core.store import get_redis, get_settings
from app.fleet.hosts import HostStore
from app.jobs.celery import make_celery
from app.jobs.handoff import Replication
from app.jobs.records import IdempotencyStore, JobStore
from app.registry.registries import RegistryStore
from app.security.audit import AuditLog
from app.security.auth import TokenStore
from app.security.ratelimit import RateLimiter


class Runtime:
    """Lazily built collaborators shared by views and tasks in one process."""

    @cached_property
    def settings(self):
        return get_settings()

    @cached_property
    def celery(self) -> Celery:
        celery = make_celery(self.settings)
        celery.set_default()
        return celery

    @cached_property
    def jobs(self) -> JobStore:
        store = JobStore(get_redis(), self.settings.job_retention_seconds,
                         agent_host=self.settings.agent_host)
        if self.settings.wait_replicas > 0:
            store.replication = Replication(self.settings.wait_replicas,
                                            self.settings.redis_wait_timeout_ms)
        return store

    @cached_property
    def idempotency(self) -> IdempotencyStore:
        return IdempotencyStore(get_redis(), self.settings.job_retention_seconds)

    @cached_property
    def tokens(self) -> TokenStore:
        return TokenStore(get_redis(), self.settings.token_cache_seconds)

    @cached_property
    def hosts(self) -> HostStore:
        return HostStore(get_redis(), self.settings)

    @cached_property
    def audit(self) -> AuditLog:
        return AuditLog(get_redis())

    @cached_property
    def rate_limiter(self) -> RateLimiter:
        return RateLimiter(get_redis())

    @cached_property
    def registries(self) -> RegistryStore:
        return RegistryStore(get_redis(), self.settings)


_runtime = Runtime()


def runtime() -> Runtime:
    return _runtime


def _reset_after_fork() -> None:
    # Stores hold the parent's Redis pool; children build their own on first use.
    global _runtime
    celery = _runtime.__dict__.get("celery")
    _runtime = Runtime()
    if celery is not None:
        _runtime.__dict__["celery"] = celery


os.register_at_fork(after_in_child=_reset_after_fork)
