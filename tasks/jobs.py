"""Housekeeping of job records, run by beat."""

from __future__ import annotations

import logging

from celery import shared_task

from app.core.task_names import JOBS_PRUNE_INDEX
from app.runtime import runtime

logger = logging.getLogger(__name__)


@shared_task(name=JOBS_PRUNE_INDEX, acks_late=False)
def prune_index() -> int:
    removed = runtime().jobs.prune_index()
    logger.info("pruned %s expired job ids from the index", removed)
    return removed
