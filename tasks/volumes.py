"""Volume jobs (create, rm, prune) and reads (ls, inspect)."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from app.core.task_names import (
    VOLUMES_CREATE,
    VOLUMES_FIND,
    VOLUMES_INSPECT,
    VOLUMES_LIST,
    VOLUMES_PRUNE,
    VOLUMES_REMOVE,
)
from app.engine import guard, volumes
from app.security.auth import Principal
from tasks.base import JobContext, JobTask, engine_read

# -- jobs ---------------------------------------------------------------------------------


@shared_task(bind=True, base=JobTask, name=VOLUMES_CREATE)
def create(self: JobTask, job_id: str, host: str, name: str | None, driver: str,
           labels: dict[str, str]) -> None:
    self.run_job(job_id, host,
                 lambda job: volumes.create_volume(job.client, name, driver, labels, job_id))


@shared_task(bind=True, base=JobTask, name=VOLUMES_REMOVE)
def remove(self: JobTask, job_id: str, host: str, name: str, force: bool,
           caller: dict[str, Any]) -> None:
    def operation(job: JobContext) -> dict[str, Any]:
        guard.require_volume_access(job.client, name, Principal.from_caller(caller), "remove")
        return volumes.remove_volume(job.client, name, force)

    self.run_job(job_id, host, operation)


@shared_task(bind=True, base=JobTask, name=VOLUMES_PRUNE)
def prune(self: JobTask, job_id: str, host: str, filters: dict[str, Any],
          caller: dict[str, Any]) -> None:
    self.run_job(job_id, host, lambda job: volumes.prune_volumes(
        job.client, guard.prune_filters(filters, Principal.from_caller(caller))))


# -- reads --------------------------------------------------------------------------------


list_ = engine_read(VOLUMES_LIST, lambda client, args: volumes.list_volumes(client, **args))
inspect = engine_read(VOLUMES_INSPECT, volumes.inspect_volume)
find = engine_read(VOLUMES_FIND, volumes.find_volume)
