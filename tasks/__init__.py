"""Celery tasks: thin wrappers that run app/ functions as jobs and queries."""

# Importing the modules registers their tasks (and the worker's signal handlers).
from tasks import (  # noqa: F401
    backups,
    builds,
    containers,
    hosts,
    images,
    jobs,
    outbox,
    registries,
    sessions,
    transfers,
    volumes,
    watch,
    webhooks,
    worker,
)
