"""/jobs: every operation's handle, its events and its cancellation."""

from __future__ import annotations

import json

from flask import Response, request, stream_with_context
from flask.views import MethodView
from flask_smorest import Blueprint

from api.common import call, requires, visible_job
from api.services import jobs as service
from app.jobs import records as jobstates
from app.runtime import runtime
from schemas.common import JobSchema
from schemas.jobs import JobListArgsSchema, JobPageSchema, JobWaitArgsSchema

blp = Blueprint("jobs", __name__, description="Jobs: the state of every operation")

_SSE_IDLE_SECONDS = 15


@blp.route("/jobs")
class Jobs(MethodView):
    @requires("viewer")
    @blp.arguments(JobListArgsSchema, location="query")
    @blp.response(200, JobPageSchema)
    def get(self, args: dict) -> dict:
        """List jobs, newest first."""
        return service.list_jobs(call(), args=args)


@blp.route("/jobs/<string:job_id>")
class Job(MethodView):
    @requires("viewer")
    @blp.arguments(JobWaitArgsSchema, location="query")
    @blp.response(200, JobSchema)
    def get(self, args: dict, job_id: str) -> dict:
        """Get one job; ``?wait=N`` long-polls until it finishes or N seconds pass."""
        return service.get_job(call(), job_id=job_id, args=args)


@blp.route("/jobs/<string:job_id>/cancel")
class JobCancel(MethodView):
    @requires("operator")
    @blp.response(200, JobSchema)
    def post(self, job_id: str) -> dict:
        """Cancel a job: a queued one at once, a running one at its next checkpoint."""
        return service.cancel_job(call(), job_id=job_id)


@blp.route("/jobs/<string:job_id>/events")
class JobEvents(MethodView):
    @requires("viewer")
    @blp.response(200, description="text/event-stream of progress, log and state events")
    def get(self, job_id: str) -> Response:
        """Stream a job's events (SSE); resumes after ``Last-Event-ID``."""
        visible_job(job_id)
        after = request.headers.get("Last-Event-ID") or request.args.get("after") or "0-0"
        return Response(stream_with_context(_sse(job_id, after)), mimetype="text/event-stream",
                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _sse(job_id: str, after: str):
    store = runtime().jobs
    yield "retry: 2000\n\n"
    while True:
        events = store.read_events(job_id, after, block_ms=_SSE_IDLE_SECONDS * 1000)
        if not events:
            if store.get(job_id)["state"] in jobstates.FINAL_STATES:
                return
            yield ": keep-alive\n\n"
            continue
        for event_id, fields in events:
            after = event_id
            kind, data = fields.get("type", "message"), fields.get("data", "{}")
            yield f"id: {event_id}\nevent: {kind}\ndata: {data}\n\n"
            if fields.get("type") == "state" and \
                    json.loads(fields.get("data", "{}")).get("state") in jobstates.FINAL_STATES:
                return
