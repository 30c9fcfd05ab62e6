"""Celery tasks: thin wrappers that run app/ functions as jobs and queries."""

from tasks import containers, hosts, images, jobs, transfers, volumes, worker  # noqa: F401  (registers tasks and worker signals)
