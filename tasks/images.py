"""Image jobs (pull, push, tag, rmi, prune) and reads (images, inspect, history, search)."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from app.core.task_names import (
    IMAGES_HISTORY,
    IMAGES_INSPECT,
    IMAGES_LIST,
    IMAGES_PRUNE,
    IMAGES_PULL,
    IMAGES_PUSH,
    IMAGES_REMOVE,
    IMAGES_REMOVE_MANY,
    IMAGES_SEARCH,
    IMAGES_TAG,
)
from app.engine import images
from tasks.base import JobTask, engine_read, layer_progress
from tasks.containers import registry_auth

# -- jobs ---------------------------------------------------------------------------------


@shared_task(bind=True, base=JobTask, name=IMAGES_PULL)
def pull(self: JobTask, job_id: str, host: str, reference: str, registry: str | None) -> None:
    self.run_job(job_id, host, lambda job: images.pull_and_inspect(
        job.client, reference, registry_auth(reference, registry), layer_progress(job)))


@shared_task(bind=True, base=JobTask, name=IMAGES_PUSH)
def push(self: JobTask, job_id: str, host: str, source: str, repository: str, tag: str,
         registry: str | None) -> None:
    self.run_job(job_id, host, lambda job: images.push_image(
        job.client, source, repository, tag, registry_auth(repository, registry),
        layer_progress(job)))


@shared_task(bind=True, base=JobTask, name=IMAGES_TAG)
def tag(self: JobTask, job_id: str, host: str, ref: str, repository: str, tag: str) -> None:
    self.run_job(job_id, host, lambda job: images.tag_image(job.client, ref, repository, tag))


@shared_task(bind=True, base=JobTask, name=IMAGES_REMOVE)
def remove(self: JobTask, job_id: str, host: str, ref: str, force: bool) -> None:
    self.run_job(job_id, host, lambda job: images.remove_image(job.client, ref, force))


@shared_task(bind=True, base=JobTask, name=IMAGES_REMOVE_MANY)
def remove_many(self: JobTask, job_id: str, host: str, refs: list[str], force: bool) -> None:
    self.run_job(job_id, host, lambda job: images.remove_images(job.client, refs, force, host))


@shared_task(bind=True, base=JobTask, name=IMAGES_PRUNE)
def prune(self: JobTask, job_id: str, host: str, all: bool, filters: dict[str, Any]) -> None:
    self.run_job(job_id, host,
                 lambda job: images.prune_images(job.client, all=all, filters=filters))


# -- reads --------------------------------------------------------------------------------


list_ = engine_read(IMAGES_LIST, lambda client, args: images.list_images(client, **args))
inspect = engine_read(IMAGES_INSPECT, images.inspect_image)
history = engine_read(IMAGES_HISTORY, images.image_history)
search = engine_read(IMAGES_SEARCH, images.search_images)
