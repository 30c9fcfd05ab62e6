"""Registries reads and deletes: Distribution v2 calls from a worker, never the API process."""

from __future__ import annotations

from celery import shared_task

from app.core.task_names import (
    REGISTRIES_CHECK,
    REGISTRIES_DELETE_MANIFEST,
    REGISTRIES_REPOSITORIES,
    REGISTRIES_TAGS,
)
from app.registry import client as registry_client
from app.registry.client import RegistryEndpoint
from app.runtime import runtime
from tasks.base import QueryTask


def endpoint(name: str) -> RegistryEndpoint:
    """The stored registry ``name`` as the client needs it; only its name travels in messages."""
    store = runtime().registries
    return store.endpoint(store.get(name))


@shared_task(bind=True, base=QueryTask, name=REGISTRIES_CHECK)
def check(self: QueryTask, reply_id: str, name: str) -> None:
    self.reply_plain(reply_id, lambda: registry_client.check(endpoint(name)))


@shared_task(bind=True, base=QueryTask, name=REGISTRIES_REPOSITORIES)
def repositories(self: QueryTask, reply_id: str, name: str, n: int | None,
                 last: str | None) -> None:
    self.reply_plain(reply_id, lambda: registry_client.list_repositories(endpoint(name), n, last))


@shared_task(bind=True, base=QueryTask, name=REGISTRIES_TAGS)
def tags(self: QueryTask, reply_id: str, name: str, repository: str, n: int | None,
         last: str | None) -> None:
    self.reply_plain(reply_id,
                     lambda: registry_client.list_tags(endpoint(name), repository, n, last))


@shared_task(bind=True, base=QueryTask, name=REGISTRIES_DELETE_MANIFEST)
def delete_manifest(self: QueryTask, reply_id: str, name: str, repository: str,
                    reference: str) -> None:
    self.reply_plain(reply_id, lambda: registry_client.delete_manifest(endpoint(name),
                                                                       repository, reference))
