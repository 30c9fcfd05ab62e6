"""The rate-limit charge and the audit entry of each API request (Flask hooks).

``limit_rate`` charges a request before its view runs, except a job submission's
(a view marked ``api.common.charged_by_job``): its charge and its 202's audit entry are
made by the job script in the job's own round trip (``app.jobs.dispatch.Folding``,
``JobStore.create``). ``settle_rate`` charges what such a request still owes when it ended
before its script (refused: nothing changed), so each request is charged exactly once;
``audit_request`` records changing and denied requests, skipping one its script recorded.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from flask import Response, current_app, g, request

from app.core.store import utcnow as _utcnow
from app.jobs.dispatch import Folding, current_folding
from app.runtime import runtime
from app.security import audit
from app.security.ratelimit import RateLimitedError

logger = logging.getLogger(__name__)

PUBLIC_PATHS = ("/healthz", "/readyz", "/metrics", "/api/docs", "/api/v1/openapi.json",
                "/api/v1/integrations/slack/commands", "/api/v1/integrations/mattermost/commands")


def limit_rate() -> None:
    current_folding.set(None)  # a thread serves one request after another
    principal = g.get("principal")
    if principal is None:
        return
    rt = runtime()
    if _charged_by_job():
        # A job submission's charge is made by its job script, in the same round trip as
        # the job (``Folding``); whatever ends the request before that script
        # runs is charged by settle_rate, so every request is still charged exactly once.
        kind, limit = rt.rate_limiter.limit_for(principal, request.method, rt.settings)
        g.folding = Folding(rate=(principal.token_id, kind, limit) if limit > 0 else None,
                            audit=_job_audit_entry if _plain_answer() else None)
        current_folding.set(g.folding)
        return
    rt.rate_limiter.charge(principal, request.method, rt.settings)


def _charged_by_job() -> bool:
    """Whether the view declared (``api.common.charged_by_job``) that its request changes
    nothing but through the job script, reading before it (host, validation, policy)."""
    view = current_app.view_functions.get(request.endpoint)
    view_class = getattr(view, "view_class", None)
    method = getattr(view_class, request.method.lower(), None) if view_class else view
    return getattr(method, "charged_by_job", False)


def _plain_answer() -> bool:
    """A submission without ``?wait`` is answered 202 once its job is written."""
    return request.args.get("wait") in (None, "")


def forget_folding(_error: BaseException | None = None) -> None:
    """Teardown: no later work on this thread finds this request's ``Folding``."""
    current_folding.set(None)


def settle_rate(response: Response) -> Response:
    """Charge a deferred rate limit the job script did not make (the request ended before).

    Such a request was refused (a scope, validation, policy or lane problem) with nothing
    changed; past the limit it is answered the 429 it would have got first.
    """
    folding = g.get("folding")
    if folding is None or folding.rate is None:
        return response
    from app.factory import _dockyard_error, _redis_down  # the factory imports this module

    try:
        folding.charge_now()
    except RateLimitedError as exc:
        if response.status_code < 400:  # not reached: every change goes through the script
            logger.warning("deferred charge past the limit after a %s request_id=%s",
                           response.status_code, g.get("request_id"))
            return response
        return _dockyard_error(exc)
    except (redis.exceptions.RedisError, OSError) as exc:
        return _redis_down(exc) if response.status_code >= 400 else response
    return response


def audit_request(response: Response) -> Response:
    """Record changing and denied requests: who, what, target, decision, outcome."""
    if request.url_rule is None or request.path.startswith(PUBLIC_PATHS):
        return response
    if not audit.audited(request.method, response.status_code):
        return response
    folding = g.get("folding")
    if folding is not None and folding.audited:
        return response  # the job script wrote this 202's entry (_job_audit_entry)
    try:
        runtime().audit.record(_audit_entry(response))
    except Exception:  # the audit store being down must not turn an answer into a 500
        logger.warning("audit record failed request_id=%s", g.get("request_id"), exc_info=True)
    return response


_JOB_LOCATION = "/api/v1/jobs/"


def _audit_entry(response: Response) -> dict[str, Any]:
    # A job answer (202/200 with Location) names its job in that header: its body is never
    # parsed again here. Others (a problem with its rule, a cancelled job) still are.
    location = response.headers.get("Location", "")
    job_id = location[len(_JOB_LOCATION):] if response.status_code < 400 and \
        location.startswith(_JOB_LOCATION) else None
    answer = response.get_json(silent=True) if job_id is None and response.is_json and \
        not response.direct_passthrough else None
    return _request_audit_entry(response.status_code, answer, job_id)


def _job_audit_entry(job_id: str) -> str:
    """The entry ``audit_request`` would record for this request answered 202 with job ``job_id``,
    encoded for the job script to write."""
    return audit.encode(_request_audit_entry(202, None, job_id))


def _request_audit_entry(status: int, answer: Any, job_id: str | None) -> dict[str, Any]:
    return audit.entry(
        ts=_utcnow(), request_id=g.get("request_id"), principal=g.get("principal"),
        method=request.method, route=request.url_rule.rule, path=request.path,
        view_args=request.view_args or {}, query=request.args.to_dict(flat=False),
        body=request.get_json(silent=True) if request.is_json else None,
        status=status, answer=answer, chat=None, job_id=job_id)
