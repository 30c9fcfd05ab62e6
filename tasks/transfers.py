"""Tar transfers and follow streams: downloads relayed through pipes, uploads run as jobs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from celery import shared_task

from app.core.task_names import (
    TRANSFERS_ARCHIVE_IN,
    TRANSFERS_ARCHIVE_OUT,
    TRANSFERS_FOLLOW_EVENTS,
    TRANSFERS_FOLLOW_LOGS,
    TRANSFERS_IMPORT,
    TRANSFERS_LOAD,
    TRANSFERS_SAVE,
)
from app.engine import transfers
from tasks.base import JobContext, JobTask, StreamTask
from tasks.containers import accessible, guarded


def _consuming(task: JobTask, job_id: str, host: str, spool: str,
               operation: Callable[[JobContext, Path], dict[str, Any] | None]) -> None:
    """Run an operation on an uploaded file and delete the file once the job is final.

    The file goes before the job's final state is written (whoever waits for the job then
    finds it gone), and also when the job does not run at all (cancelled while queued). A
    worker killed mid-job reaches neither: the redelivered job finds the file.
    """
    def run(job: JobContext) -> dict[str, Any] | None:
        try:
            return operation(job, Path(spool))
        finally:
            Path(spool).unlink(missing_ok=True)

    try:
        task.run_job(job_id, host, run)
    finally:
        Path(spool).unlink(missing_ok=True)


# -- downloads ----------------------------------------------------------------------------


@shared_task(bind=True, base=StreamTask, name=TRANSFERS_ARCHIVE_OUT)
def archive_out(self: StreamTask, pipe_id: str, host: str, revision: int, caller: dict[str, Any],
                ref: str, path: str) -> None:
    self.stream(pipe_id, host, revision, lambda client: transfers.archive_out(
        client, accessible(client, host, caller, ref, "archive", revision)["Id"], path))


@shared_task(bind=True, base=StreamTask, name=TRANSFERS_SAVE)
def save(self: StreamTask, pipe_id: str, host: str, revision: int, refs: list[str]) -> None:
    self.stream(pipe_id, host, revision, lambda client: transfers.save_images(client, refs))


@shared_task(bind=True, base=StreamTask, name=TRANSFERS_FOLLOW_LOGS)
def follow_logs(self: StreamTask, pipe_id: str, host: str, revision: int, caller: dict[str, Any],
                ref: str, args: dict[str, Any]) -> None:
    self.stream(pipe_id, host, revision, lambda client: transfers.follow_logs(
        client, accessible(client, host, caller, ref, "logs", revision)["Id"], **args))


@shared_task(bind=True, base=StreamTask, name=TRANSFERS_FOLLOW_EVENTS)
def follow_events(self: StreamTask, pipe_id: str, host: str, revision: int,
                  args: dict[str, Any]) -> None:
    self.stream(pipe_id, host, revision, lambda client: transfers.follow_events(client, **args))


# -- uploads ------------------------------------------------------------------------------


@shared_task(bind=True, base=JobTask, name=TRANSFERS_ARCHIVE_IN)
def archive_in(self: JobTask, job_id: str, host: str, ref: str, path: str, spool: str,
               caller: dict[str, Any]) -> None:
    _consuming(self, job_id, host, spool, lambda job, file: transfers.archive_in(
        job.client, guarded(job, ref, caller, "archive"), path, file))


@shared_task(bind=True, base=JobTask, name=TRANSFERS_LOAD)
def load(self: JobTask, job_id: str, host: str, spool: str) -> None:
    _consuming(self, job_id, host, spool,
               lambda job, file: transfers.load_images(job.client, file, on_line=job.log))


@shared_task(bind=True, base=JobTask, name=TRANSFERS_IMPORT)
def import_(self: JobTask, job_id: str, host: str, spool: str, repository: str | None,
            tag: str | None, changes: list[str]) -> None:
    _consuming(self, job_id, host, spool,
               lambda job, file: transfers.import_image(job.client, file, repository, tag,
                                                        changes))
