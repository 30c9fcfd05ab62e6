"""Job queries shared by views and chat: list, get (long-poll) and cancel."""

from __future__ import annotations

import functools
from typing import Any

from api.services import Call, operation
from app.core.errors import NotFoundError
from app.jobs import records as jobstates
from app.runtime import runtime


def visible_job(call: Call, job_id: str) -> dict:
    """The job, if the caller may see it (404 otherwise, as for a job that does not exist)."""
    record = runtime().jobs.get(job_id)
    if not jobstates.visible_to(record, call.principal):
        raise NotFoundError(f"no job '{job_id}'")
    return record


@operation("viewer")
def list_jobs(call: Call, *, args: dict[str, Any]) -> dict:
    """Jobs the caller may see, newest first, one page."""
    items, next_cursor = runtime().jobs.list(
        state=args.get("state"), kind=args.get("kind"), host=args.get("host"),
        visible=functools.partial(jobstates.visible_to, caller=call.principal),
        limit=args["limit"], cursor=args.get("cursor"))
    return {"items": [jobstates.public_view(r) for r in items], "next_cursor": next_cursor}


@operation("viewer")
def get_job(call: Call, *, job_id: str, args: dict[str, Any]) -> dict:
    """One job; ``wait`` long-polls until it finishes or that many seconds pass."""
    record = visible_job(call, job_id)
    wait = min(args["wait"], runtime().settings.max_wait_seconds)
    if wait > 0:
        record = runtime().jobs.wait_final(job_id, wait)
    return jobstates.public_view(record)


@operation("operator")
def cancel_job(call: Call, *, job_id: str) -> dict:
    """Cancel a job: a queued one at once, a running one at its next checkpoint."""
    visible_job(call, job_id)
    return jobstates.public_view(runtime().jobs.request_cancel(job_id))
