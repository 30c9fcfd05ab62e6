"""Housekeeping of job records, run by beat."""

from __future__ import annotations

import logging

from celery import shared_task

from app import handoff
from app.runtime import runtime
from app.store import get_redis
from app.task_names import JOBS_PRUNE_INDEX, JOBS_SWEEP

logger = logging.getLogger(__name__)


@shared_task(name=JOBS_PRUNE_INDEX, acks_late=False)
def prune_index() -> int:
    removed = runtime().jobs.prune_index()
    logger.info("pruned %s expired job ids from the index", removed)
    return removed


@shared_task(name=JOBS_SWEEP, acks_late=False)
def sweep() -> dict[str, int]:
    """Give back messages dead workers held; re-send, once, one lost in delivery."""
    done = handoff.sweep(get_redis(), runtime().jobs)
    if any(done.values()):
        logger.warning("job sweep: %s", done)
    return done
