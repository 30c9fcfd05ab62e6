"""Celery tasks: thin wrappers that run app/ functions as jobs and queries."""

from tasks import containers, hosts, jobs, worker  # noqa: F401  (registers tasks and worker signals)
