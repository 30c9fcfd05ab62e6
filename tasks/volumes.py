"""Volume jobs (create, rm, prune) and reads (ls, inspect)."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from app.engine import volumes
from tasks.base import JobTask, engine_read

# -- jobs ---------------------------------------------------------------------------------


@shared_task(bind=True, base=JobTask, name="volumes.create")
def create(self: JobTask, job_id: str, host: str, name: str | None, driver: str,
           labels: dict[str, str]) -> None:
    self.run_job(job_id, host,
                 lambda job: volumes.create_volume(job.client, name, driver, labels, job_id))


@shared_task(bind=True, base=JobTask, name="volumes.remove")
def remove(self: JobTask, job_id: str, host: str, name: str, force: bool) -> None:
    self.run_job(job_id, host, lambda job: volumes.remove_volume(job.client, name, force))


@shared_task(bind=True, base=JobTask, name="volumes.prune")
def prune(self: JobTask, job_id: str, host: str, filters: dict[str, Any]) -> None:
    self.run_job(job_id, host, lambda job: volumes.prune_volumes(job.client, filters))


# -- reads --------------------------------------------------------------------------------


list_ = engine_read("volumes.list", lambda client, args: volumes.list_volumes(client, **args))
inspect = engine_read("volumes.inspect", volumes.inspect_volume)
find = engine_read("volumes.find", volumes.find_volume)
