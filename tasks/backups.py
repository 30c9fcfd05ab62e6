"""Backup and restore jobs, and the beat task that runs backup schedules and their retention."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from celery import shared_task

from app.backups.schedules import BackupScheduleStore, apply_retention, due_minutes
from app.backups.storage import storage_for
from app.core.errors import DockyardError
from app.core.store import get_redis
from app.core.task_names import BACKUPS_CREATE, BACKUPS_RESTORE, BACKUPS_RUN_SCHEDULES
from app.engine import backups
from app.jobs.dispatch import submit_job
from app.runtime import runtime
from app.security.auth import Principal
from app.security.policy import policy_from_settings
from tasks.base import JobContext, JobTask
from tasks.containers import enforce_policy_on_host, guarded

logger = logging.getLogger(__name__)


def _progress(job: JobContext):
    return lambda done, total, unit, message: job.progress(done, total, unit, message)


def bind_under_roots(source: str) -> bool:
    """Whether the policy lets a bind source be read (under the roots, not the engine socket)."""
    spec = {"image": "", "volumes": [{"type": "bind", "source": source}]}
    found = policy_from_settings(runtime().settings).violations(spec)
    return not [v for v in found if v.rule in ("bind-roots", "no-engine-socket")]


@shared_task(bind=True, base=JobTask, name=BACKUPS_CREATE)
def create(self: JobTask, job_id: str, host: str, ref: str, options: dict[str, Any],
           caller: dict[str, Any]) -> None:
    # The bundle's id is the job's, so a redelivered job finds (or replaces) its own work.
    self.run_job(job_id, host, lambda job: backups.back_up_container(
        job.client, guarded(job, ref, caller, "backup"), storage_for(runtime().settings),
        job_id, options, host=host, stall=runtime().settings.backup_stall_seconds,
        progress=_progress(job),
        checkpoint=job.check_cancelled, bind_allowed=bind_under_roots))


@shared_task(bind=True, base=JobTask, name=BACKUPS_RESTORE)
def restore(self: JobTask, job_id: str, host: str, backup_id: str, spec: dict[str, Any],
            caller: dict[str, Any]) -> None:
    def operation(job: JobContext) -> dict[str, Any]:
        principal = Principal.from_caller(caller)
        policy = enforce_policy_on_host(job, spec, principal)
        return backups.restore_container(job.client, storage_for(runtime().settings), backup_id,
                                         spec, job_id, caller=principal, policy=policy,
                                         progress=_progress(job), checkpoint=job.check_cancelled)

    self.run_job(job_id, host, operation)


@shared_task(name=BACKUPS_RUN_SCHEDULES, acks_late=False)
def run_schedules() -> dict[str, Any]:
    """Enqueue the backups that are due and apply every schedule's retention."""
    store = BackupScheduleStore(get_redis())
    storage = storage_for(runtime().settings)
    now = datetime.now(UTC)
    started, pruned = [], []
    catalog = storage.catalog()
    for schedule in store.list():
        try:
            due = due_minutes(schedule["cron"], now)
            if any([store.claim_run(schedule["id"], minute) for minute in due]):
                started.append(_start_scheduled_backup(store, schedule))
            pruned.extend(apply_retention(storage, schedule["id"], schedule["keep"], catalog))
        except (DockyardError, ValueError) as exc:
            logger.warning("backup schedule %s host=%s skipped: %s", schedule["id"],
                           schedule.get("host"), exc)
    if started or pruned:
        logger.info("backup schedules: %s jobs started, %s bundles pruned", len(started),
                    len(pruned))
    return {"started": started, "pruned": pruned}


def _start_scheduled_backup(store: BackupScheduleStore, schedule: dict[str, Any]) -> str:
    host_record = runtime().hosts.get(schedule["host"])
    # The schedule acts with its creator's role and scope (older schedules: an operator).
    creator = schedule.get("caller") or {"role": "operator", "hosts": None}
    scheduler = Principal(token_id=f"schedule:{schedule['id']}",
                          name=f"backup-schedule:{schedule['id']}", role=creator["role"],
                          hosts=None if creator.get("hosts") is None
                          else frozenset(creator["hosts"]))
    options = {"compression": schedule["compression"], "consistency": schedule["consistency"],
               "include_volumes": schedule["include_volumes"], "include_binds": False,
               "note": f"scheduled by {schedule['id']} ({schedule['cron']})",
               "schedule_id": schedule["id"]}
    record, _ = submit_job(BACKUPS_CREATE, scheduler, host_record=host_record,
                           target=schedule["container"],
                           args=[schedule["container"], options, scheduler.as_caller()],
                           idempotency=None)
    store.record_run(schedule["id"], record["id"])
    logger.info("job %s queued by backup schedule %s host=%s", record["id"], schedule["id"],
                schedule["host"])
    return record["id"]
