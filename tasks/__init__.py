"""Celery tasks: thin wrappers that run app/ functions as jobs and queries."""

# app first: it defers docker-py's SSH transport (paramiko) before the tasks import docker-py.
import app  # noqa: F401

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
