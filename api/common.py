"""What every view shares: the caller, role checks, job answers and idempotency."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flask import Response, current_app, g, request

from app import jobs as jobstates
from app.auth import Principal
from app.dispatch import submit_job
from app.errors import BadRequestError
from app.redaction import redact_for
from app.runtime import runtime
from app.webhooks import check_callback_url, watch_job

CALLBACK_HEADER = "Dockyard-Callback-URL"


def principal() -> Principal:
    return g.principal


def caller_context() -> dict[str, Any]:
    """The caller as the worker needs it (role and host scope), JSON-ready."""
    return principal().as_caller()


def redacted(kind: str, value: Any) -> Any:
    """``value`` as the caller may see it (see ``app.redaction``)."""
    return redact_for(principal().role, kind, value)


def requires(role: str) -> Callable:
    """Allow a view method only to ``role`` or above, and only on hosts in the token's scope."""

    def decorator(view: Callable) -> Callable:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            caller = principal()
            caller.require_role(role)
            if "host" in kwargs:
                caller.require_host(kwargs["host"])
            return view(*args, **kwargs)

        wrapper.required_role = role
        return wrapper

    return decorator


def accepts(*mimetypes: str) -> Callable:
    """Declare which request body types a view method takes besides JSON."""

    def decorator(view: Callable) -> Callable:
        view.accepted_mimetypes = mimetypes
        return view

    return decorator


def wait_seconds() -> float:
    raw = request.args.get("wait")
    if raw in (None, ""):
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        from app.errors import InvalidInputError
        raise InvalidInputError("wait must be a number of seconds",
                                errors={"wait": ["Not a valid number."]}) from None
    return max(0.0, min(value, runtime().settings.max_wait_seconds))


def dumped_job(record: dict[str, Any]) -> dict[str, Any] | None:
    """The job as its ``…JobSchema`` would dump it, without the schema pass, or None.

    Only a record without progress, result or error qualifies (a queued job as it was just
    written): every other member of ``public_view`` is already what the schema's fields
    dump it to (strings or None, a bool, a dict of strings, a list of strings), so the two
    are equal; ``tests/unit/test_dumped_job.py`` holds them equal. Anything else (a
    replayed or finished job, whose progress the schema filters) is dumped by the schema.
    """
    if record.get("progress") is not None or record.get("result") is not None \
            or record.get("error") is not None:
        return None
    children = record.get("children")
    if children is not None and not (isinstance(children, list)
                                     and all(isinstance(c, str) for c in children)):
        return None
    view = jobstates.public_view(record)
    for name in ("id", "kind", "state"):
        if not isinstance(view[name], str):
            return None
    for name in ("host", "target", "created_at", "started_at", "finished_at", "requested_by",
                 "parent"):
        if view[name] is not None and not isinstance(view[name], str):
            return None
    return view


ANSWERED_JOB = "dockyard.answered_job"


def answered(record: dict[str, Any]) -> None:
    """Name the job this request answers with, for its audit entry (no body parse there).

    Kept in the request's environ, not ``g``: a chat command dispatches its operation as a
    nested request in the same app context, and the outer request answers no job.
    """
    request.environ[ANSWERED_JOB] = record["id"]


def job_answer(record: dict[str, Any], wait: float | None = None
               ) -> tuple[dict | Response, int, dict]:
    """A job as the answer to an operation: 202 + Location, or 200 once finished in ``wait``.

    A job still as it was written is sent as JSON at once (``dumped_job``): the same bytes
    flask-smorest would send after dumping it through the view's schema, without that pass.
    """
    wait = wait_seconds() if wait is None else wait
    if wait > 0 and record["state"] not in jobstates.FINAL_STATES:
        record = runtime().jobs.wait_final(record["id"], wait)
    answered(record)
    status = 200 if record["state"] in jobstates.FINAL_STATES and wait > 0 else 202
    headers = {"Location": f"/api/v1/jobs/{record['id']}"}
    dumped = dumped_job(record)
    if dumped is not None:
        return current_app.json.response(dumped), status, headers
    return jobstates.public_view(record), status, headers


def start_job(kind: str, *, host_record: dict[str, Any] | None, target: str | None,
              args: list[Any], body: Any = None,
              precheck: Callable[[], None] | None = None,
              spool: Path | None = None,
              submit: Callable[[tuple[str, str] | None], tuple[dict[str, Any], bool]] | None = None
              ) -> tuple[dict, int, dict]:
    """Record and enqueue a job for the current request, honouring Idempotency-Key.

    ``submit`` replaces the one-host submission (placement and fan-out pass their own); it
    gets the Idempotency-Key claim and answers (record, created).

    ``spool`` is an upload already on disk that the job consumes: it is deleted when the job
    is refused (any error here), when a replay answers with an earlier job, and, as the job
    record names it, when the job is cancelled while queued.

    A repeated request answers with the original job before ``precheck`` runs, since the
    state it checks (a free container name, say) is what the first request changed.
    A ``Dockyard-Callback-URL`` header gets the job's outcome posted there (signed), and is
    refused with 422 before anything is recorded if its host is not allowed.
    """
    try:
        record, created = _record_job(kind, host_record, target, args, body, precheck, spool,
                                      submit)
    except BaseException:
        if spool is not None:
            spool.unlink(missing_ok=True)
        raise
    if spool is not None and not created:
        spool.unlink(missing_ok=True)  # a replay: the earlier job had its own upload
    return job_answer(record)


def _record_job(kind: str, host_record: dict[str, Any] | None, target: str | None,
                args: list[Any], body: Any, precheck: Callable[[], None] | None,
                spool: Path | None, submit: Callable | None) -> tuple[dict[str, Any], bool]:
    """The job this request made now (True), or the one an Idempotency-Key replays (False)."""
    callback = request.headers.get(CALLBACK_HEADER) or g.get("callback_url")
    if callback is not None:
        check_callback_url(callback)
    key = request.headers.get("Idempotency-Key")
    idempotency = None
    if key is not None:
        body = body if body is not None else request.get_json(silent=True)
        fingerprint = runtime().idempotency.fingerprint(request.method, request.path, body)
        earlier = runtime().idempotency.lookup(principal().token_id, key, fingerprint)
        if earlier is not None:
            return runtime().jobs.get(earlier), False
        idempotency = (key, fingerprint)
    if precheck is not None:
        precheck()
    if submit is not None:
        record, created = submit(idempotency)
    else:
        record, created = submit_job(kind, principal(), host_record=host_record, target=target,
                                     args=args, idempotency=idempotency,
                                     spool=str(spool) if spool is not None else None)
    if callback is not None and created:
        watch_job(record["id"], {"format": "dockyard", "url": callback})
    return record, created


def require_json_object() -> dict:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise BadRequestError("the body must be a JSON object")
    return body
