"""The Celery app: Redis broker, at-least-once delivery, two lanes per route."""

from __future__ import annotations

import gc
import importlib
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from celery import Celery, signals
from celery.schedules import crontab

from app.core import logs
from app.core.config import Settings
from app.core.store import broker_url_and_options, get_redis_bytes
from app.core.task_names import BACKUPS_RUN_SCHEDULES, HOSTS_SYNC_AGENT_ACCESS, JOBS_PRUNE_INDEX
from app.security import agent_access, signing

# The task modules, imported by path in a worker only: app/ never imports tasks/.
TASKS_PACKAGE = "tasks"


def make_celery(settings: Settings) -> Celery:
    """Build the Celery app from settings.

    Delivery is at-least-once: a task is acknowledged only after it ran, and a task
    whose worker died is redelivered, so every task must be idempotent.
    """
    # No include=["tasks"]: the API and beat send tasks by name and never load the task
    # modules (nor docker-py and paramiko with them); workers import them at start-up.
    broker, transport = broker_url_and_options(settings)
    if settings.agent_host:
        # An agent's login reaches kombu's unacked bookkeeping only under its own prefix.
        transport = {**transport, **agent_access.transport_options(settings.agent_host)}
    celery = Celery("dockyard", broker=broker)
    limit = settings.task_time_limit_seconds
    celery.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # Job state and results live in Dockyard's own Redis records, not Celery's backend.
        task_ignore_result=True,
        task_store_errors_even_if_ignored=False,
        task_time_limit=limit,
        task_soft_time_limit=max(limit - 30, 1),
        # Unacknowledged messages come back after this long; it must exceed the longest task
        # or a slow task would run twice while still running.
        broker_transport_options={"visibility_timeout": settings.effective_visibility_timeout,
                                  **transport},
        broker_connection_retry_on_startup=True,
        broker_pool_limit=64,
        task_default_queue="engine.ops",
        # Task messages are signed JSON; workers accept nothing else (see app/security/signing.py).
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_send_sent_event=False,
        # Remote control is pub/sub on shared keys, which an agent's login may not use.
        worker_enable_remote_control=not settings.agent_host,
        timezone="UTC",
        # Any number of beats may run: only the holder of the Redis lease sends (app/ops/beat.py).
        beat_scheduler="app.ops.beat:LeaderScheduler",
        beat_schedule={
            # Job records expire by TTL; this keeps the listing index from growing with them.
            "prune-job-index": {"task": JOBS_PRUNE_INDEX, "schedule": 3600.0,
                                "options": {"queue": "engine.ops", "expires": 3000}},
            # Due backup schedules are enqueued and their retention applied once a minute.
            "run-backup-schedules": {"task": BACKUPS_RUN_SCHEDULES, "schedule": crontab(),
                                     "options": {"queue": "engine.ops", "expires": 55}},
            # Agents' Redis ACL users live in memory only: rebuilt from the host records.
            "sync-agent-access": {"task": HOSTS_SYNC_AGENT_ACCESS, "schedule": 60.0,
                                  "options": {"queue": "engine.query", "expires": 55}},
        },
    )
    _wire_logging()
    signals.celeryd_init.connect(_import_tasks, weak=False, dispatch_uid="dockyard-tasks")
    signals.worker_init.connect(_freeze_heap, weak=False, dispatch_uid="dockyard-freeze")
    # gunicorn forks its workers with os.fork (no multiprocessing hooks): a child must not
    # reuse the broker connections of a parent that preloaded the app.
    os.register_at_fork(after_in_child=celery._after_fork)
    # After the logging receivers: the signature covers every header they add.
    signing.install(celery, settings)
    _guard_closed_channel_clients()
    return celery


def _no_client_after_close(channel: object) -> bool:
    """Whether kombu can no longer build a client for ``channel``: its pools are gone and so
    is the broker connection they were made from (the channel is being closed after the
    connection was released)."""
    transport = getattr(channel, "connection", None)
    return getattr(channel, "_pool", None) is None and (
        transport is None or getattr(transport, "client", None) is None)


def _guard_closed_channel_clients() -> None:
    """Let kombu's Redis channel ack and restore after its connection was released.

    kombu 5.7 closes a channel whose broker connection was lost (a Redis failover) only
    after releasing that connection; closing restores the unacknowledged messages, and
    building the client for that (``conn_or_acquire``) reads the released connection's
    address: ``AttributeError: 'NoneType' object has no attribute 'hostname'``, which
    Celery calls an unrecoverable error and stops the worker. The broker is Dockyard's own
    Redis (``broker_url_and_options``), so such an ack or restore goes through Dockyard's
    client of it instead, Sentinel-aware like the broker. If that Redis is down too, the
    error is a connection error, which kombu and Celery do recover from (the messages stay
    unacknowledged and come back after the visibility timeout).
    """
    from kombu.transport import redis as kombu_redis

    channel_class = kombu_redis.Channel
    original = channel_class.conn_or_acquire
    if getattr(original, "dockyard_guard", False):
        return

    @contextmanager
    def conn_or_acquire(self, client=None) -> Iterator[object]:
        if client is None and _no_client_after_close(self):
            yield get_redis_bytes()
            return
        with original(self, client) as acquired:
            yield acquired

    conn_or_acquire.dockyard_guard = True  # type: ignore[attr-defined]
    channel_class.conn_or_acquire = conn_or_acquire


def load_before_fork(celery: Celery) -> None:
    """Import what the first send or lane check would, so forked children share it.

    Celery and kombu load their producer and transport machinery on first use; in a
    preloading parent (gunicorn's master) that would happen in every child instead. No
    connection is opened here.
    """
    for module in ("celery.app.task", "celery.canvas", "celery.result",
                   # what the first send_task loads (the disabled result backend, events)
                   "celery.backends.base", "celery.app.events", "celery.events.dispatcher",
                   "kombu.mixins", "kombu.utils.limits",
                   "prometheus_client.multiprocess", "prometheus_client.core"):
        importlib.import_module(module)
    celery.loader.import_default_modules  # noqa: B018 (the loader is built on first access)
    celery.amqp  # noqa: B018
    connection = celery.connection_for_write()
    connection.transport  # noqa: B018 (imports kombu's Redis transport; no socket yet)
    connection.release()


def _import_tasks(**_: object) -> None:
    """Register the task modules in a worker (before its pool forks, so children share them)."""
    importlib.import_module(TASKS_PACKAGE)  # importing registers the tasks


def _freeze_heap(sender: object = None, **_: object) -> None:
    """Keep the collector off what the worker loaded, so pool children share those pages.

    A prefork child is forked after this; a full collection in it would otherwise write to
    every object header and copy the parent's heap page by page.
    """
    if _forks_a_pool(sender):
        _load_what_each_child_would()
    gc.freeze()


def _forks_a_pool(worker: object) -> bool:
    """Whether ``worker`` (Celery's WorkController, before its pool starts) runs prefork."""
    from celery.concurrency import get_implementation
    from celery.concurrency.prefork import TaskPool

    pool = getattr(worker, "pool_cls", None)
    if pool is None:
        return False
    pool = get_implementation(pool)
    return isinstance(pool, type) and issubclass(pool, TaskPool)


def _load_what_each_child_would() -> None:
    """Load once in the parent what every prefork child would otherwise load on its own.

    Each child asks the kernel to kill it with its parent (billiard's ``set_pdeathsig``), which
    with cffi installed declares ``prctl`` through cffi's C parser: pycparser and its parser
    built anew in every child, ~5 MiB of private memory each. Reading the setting here builds
    the parser (cffi keeps it) where the children share it.
    """
    from billiard import util

    with suppress(OSError):
        util.get_pdeathsig()


def _wire_logging() -> None:
    """Workers and beat log through app.core.logs; a request id travels with the task message."""
    # Connecting setup_logging at all stops Celery from installing its own handlers.
    signals.setup_logging.connect(logs.celery_setup_logging, weak=False,
                                  dispatch_uid="dockyard-logging")
    signals.before_task_publish.connect(logs.add_request_id_header, weak=False,
                                        dispatch_uid="dockyard-request-id")
    signals.task_prerun.connect(logs.bind_task_request_id, weak=False,
                                dispatch_uid="dockyard-request-id")
    signals.task_postrun.connect(logs.unbind_task_request_id, weak=False,
                                 dispatch_uid="dockyard-request-id")
