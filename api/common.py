"""What every view shares: the caller, role checks, job answers and idempotency."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any

from flask import Response, g, request, stream_with_context

from api import services
from api.services import Call, host_record  # noqa: F401  (blueprints take it from here)
from api.services import jobs as job_service
from app.core.errors import BadRequestError
from app.jobs.dispatch import StaleHostError
from app.jobs.pipes import PipeReader
from app.security.auth import Principal
from app.security.redaction import redact_for

CALLBACK_HEADER = "Dockyard-Callback-URL"


def principal() -> Principal:
    return g.principal


def caller_context() -> dict[str, Any]:
    """The caller as the worker needs it (role and host scope), JSON-ready."""
    return principal().as_caller()


def redacted(kind: str, value: Any) -> Any:
    """``value`` as the caller may see it (see ``app.security.redaction``)."""
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


def call() -> Call:
    """The current request as a service call: its principal and what it carries."""
    return Call(principal=principal(), method=request.method, path=request.path,
                body=request.get_json(silent=True),
                idempotency_key=request.headers.get("Idempotency-Key"),
                callback_url=request.headers.get(CALLBACK_HEADER) or g.get("callback_url"),
                wait=request.args.get("wait"), folding=g.get("folding"))


_STALE_HOST_ATTEMPTS = 3


def charged_by_job(view: Callable) -> Callable:
    """Declare that a view changes nothing but through its job script (it reads, checks and
    calls ``start_job``; no upload): its request's rate-limit charge, its 202's audit entry
    and the check of the (cached) host record are made by that script (see
    ``app/request_accounting.py``, ``app.jobs.dispatch.Folding``). When the host record
    changed, nothing was written: the view runs again with the record re-read."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        for attempt in range(1, _STALE_HOST_ATTEMPTS + 1):
            try:
                return view(*args, **kwargs)
            except StaleHostError:
                if attempt == _STALE_HOST_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    wrapper.charged_by_job = True
    return wrapper


def start_job(kind: str, **kwargs: Any) -> tuple[dict, int, dict]:
    """``services.start_job`` for the current request (see there)."""
    return services.start_job(call(), kind, **kwargs)


def require_json_object() -> dict:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise BadRequestError("the body must be a JSON object")
    return body


def visible_job(job_id: str) -> dict:
    """The job, if the caller may see it (404 otherwise, as for a job that does not exist)."""
    return job_service.visible_job(call(), job_id)


# -- Server-Sent Events ---------------------------------------------------------------------


def sse_lines(reader: PipeReader, event: str,
              transform: Callable[[str], str] = lambda line: line) -> Iterator[str]:
    """Each complete line from the pipe as one SSE event (``transform``ed)."""
    pending = b""
    yield "retry: 2000\n\n"
    for chunk in reader.chunks():
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            yield f"event: {event}\ndata: {transform(line.decode('utf-8', 'replace'))}\n\n"
    if pending:
        yield f"event: {event}\ndata: {transform(pending.decode('utf-8', 'replace'))}\n\n"
    yield "event: end\ndata: {}\n\n"


def sse_response(reader: PipeReader, event: str,
                 transform: Callable[[str], str] = lambda line: line) -> Response:
    return Response(stream_with_context(sse_lines(reader, event, transform)),
                    mimetype="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
