"""Volume jobs (create, rm, prune) and reads (ls, inspect)."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from app.engine import volumes
from tasks.base import JobTask, QueryTask

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


@shared_task(bind=True, base=QueryTask, name="volumes.list")
def list_(self: QueryTask, reply_id: str, host: str, revision: int, args: dict[str, Any]) -> None:
    self.reply(reply_id, host, revision, lambda client: volumes.list_volumes(client, **args))


@shared_task(bind=True, base=QueryTask, name="volumes.inspect")
def inspect(self: QueryTask, reply_id: str, host: str, revision: int, name: str) -> None:
    self.reply(reply_id, host, revision, lambda client: volumes.inspect_volume(client, name))


@shared_task(bind=True, base=QueryTask, name="volumes.find")
def find(self: QueryTask, reply_id: str, host: str, revision: int, name: str) -> None:
    self.reply(reply_id, host, revision, lambda client: volumes.find_volume(client, name))
