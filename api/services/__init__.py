"""Service functions: what an operation does, whoever asks (an HTTP view or a chat command).

Each function takes a ``Call`` (the authentication result and what the request carries
besides its validated arguments: Idempotency-Key, callback URL, ``wait``) and the arguments
already loaded by the operation's marshmallow schema. It checks role, host scope and policy,
then starts the job (``start_job``) or runs the query, and returns what the view answers.
Views (``api/<area>.py``) and the chat dispatcher (``api/integrations.py``) are thin callers;
the rate-limit charge and the audit record are made where a request enters (the Flask hooks
in ``app/factory.py`` for HTTP, the dispatcher for chat) with the same functions
(``RateLimiter.charge``, ``app.security.audit.entry``), since denied and unknown requests are charged
and audited too and never reach a service. Services import ``app`` and ``schemas``, never
Flask's request or another blueprint.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.core.errors import InvalidInputError
from app.integrations.webhook_targets import check_callback_url
from app.integrations.webhooks import watch_job
from app.jobs import records as jobstates
from app.jobs.dispatch import Folding, current_folding, submit_job
from app.runtime import runtime
from app.security.auth import Principal
from app.security.redaction import redact_for


@dataclass(frozen=True)
class Call:
    """Who calls (``principal``) and what the call carries besides its arguments.

    ``method``, ``path`` and ``body`` fingerprint an Idempotency-Key; ``wait`` is the raw
    ``?wait=`` value (parsed only when a job is answered, as it always was).
    """

    principal: Principal
    method: str = "POST"
    path: str = ""
    body: Any = None
    idempotency_key: str | None = None
    callback_url: str | None = None
    wait: str | None = None
    folding: Folding | None = None

    def caller(self) -> dict[str, Any]:
        """The caller as the worker needs it (role and host scope), JSON-ready."""
        return self.principal.as_caller()

    def redacted(self, kind: str, value: Any) -> Any:
        """``value`` as the caller may see it (see ``app.security.redaction``)."""
        return redact_for(self.principal.role, kind, value)

    @property
    def is_admin(self) -> bool:
        return self.principal.role == "admin"


def operation(role: str) -> Callable:
    """A service function allowed to ``role`` or above, on a ``host`` in the caller's scope."""

    def decorator(function: Callable) -> Callable:
        @functools.wraps(function)
        def wrapper(call: Call, *args: Any, **kwargs: Any) -> Any:
            call.principal.require_role(role)
            if kwargs.get("host") is not None:
                call.principal.require_host(kwargs["host"])
            return function(call, *args, **kwargs)

        wrapper.role = role
        return wrapper

    return decorator


def host_record(name: str) -> dict[str, Any]:
    """A host's record (404 for an unknown one); scope is checked by ``operation``.

    Within an HTTP job submission (``api.common.charged_by_job``) it comes from the
    process cache, and the job script checks it is still the stored one (see ``Folding``).
    """
    folding = current_folding.get()
    if folding is not None:
        return folding.host_record(name)
    return runtime().hosts.get(name)


def parse_wait(raw: str | None) -> float:
    if raw in (None, ""):
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        raise InvalidInputError("wait must be a number of seconds",
                                errors={"wait": ["Not a valid number."]}) from None
    return max(0.0, min(value, runtime().settings.max_wait_seconds))


class DumpedJob(dict):
    """A job's view that already is what its ``…JobSchema`` dumps: ``JobSchema.dump`` passes
    it through unchanged, so flask-smorest (and the chat dispatcher) skip the schema pass."""


def dumped_job(record: dict[str, Any]) -> DumpedJob | None:
    """The job as its ``…JobSchema`` would dump it, made from the record itself, or None.

    Only a record without progress, result or error qualifies (a queued job as it was just
    written): every other member of ``public_view`` is already what the schema's fields
    dump it to (strings or None, a bool, a dict of strings, a list of strings), so the two
    are equal; ``tests/unit/test_dumped_job.py`` holds them equal byte for byte. Anything
    else (a replayed or finished job, whose progress the schema filters) goes through it.
    """
    if record.get("progress") is not None or record.get("result") is not None \
            or record.get("error") is not None:
        return None
    children = record.get("children")
    if children is not None and not (isinstance(children, list)
                                     and all(isinstance(c, str) for c in children)):
        return None
    view = jobstates.public_view(record)
    if not all(isinstance(view[name], str) for name in ("id", "kind", "state")):
        return None
    if not all(view[name] is None or isinstance(view[name], str)
               for name in ("host", "target", "created_at", "started_at", "finished_at",
                            "requested_by", "parent")):
        return None
    return DumpedJob(view)


def job_answer(call: Call, record: dict[str, Any],
               wait: float | None = None) -> tuple[dict, int, dict]:
    """A job as the answer to an operation: 202 + Location, or 200 once finished in ``wait``.

    A job still as it was written is answered as a ``DumpedJob`` (no schema pass).
    """
    wait = parse_wait(call.wait) if wait is None else wait
    if wait > 0 and record["state"] not in jobstates.FINAL_STATES:
        record = runtime().jobs.wait_final(record["id"], wait)
    view = dumped_job(record) or jobstates.public_view(record)
    status = 200 if record["state"] in jobstates.FINAL_STATES and wait > 0 else 202
    return view, status, {"Location": view["links"]["self"]}


def start_job(call: Call, kind: str, *, host_record: dict[str, Any] | None, target: str | None,
              args: list[Any], body: Any = None,
              precheck: Callable[[], None] | None = None,
              spool: Path | None = None,
              submit: Callable[[tuple[str, str] | None], tuple[dict[str, Any], bool]] | None = None
              ) -> tuple[dict, int, dict]:
    """Record and enqueue a job for ``call``, honouring its Idempotency-Key.

    ``submit`` replaces the one-host submission (placement and fan-out pass their own); it
    gets the Idempotency-Key claim and answers (record, created).

    ``spool`` is an upload already on disk that the job consumes: it is deleted when the job
    is refused (any error here), when a replay answers with an earlier job, and, as the job
    record names it, when the job is cancelled while queued.

    A repeated request answers with the original job before ``precheck`` runs, since the
    state it checks (a free container name, say) is what the first request changed.
    A callback URL gets the job's outcome posted there (signed), and is refused with 422
    before anything is recorded if its host is not allowed.
    """
    try:
        record, created = _record_job(call, kind, host_record, target, args, body, precheck,
                                      spool, submit)
    except BaseException:
        if spool is not None:
            spool.unlink(missing_ok=True)
        raise
    if spool is not None and not created:
        spool.unlink(missing_ok=True)  # a replay: the earlier job had its own upload
    return job_answer(call, record)


def replayed(call: Call, body: Any) -> bool:
    """True when the call's Idempotency-Key replays an earlier job with this ``body``."""
    if call.idempotency_key is None:
        return False
    rt = runtime()
    fingerprint = rt.idempotency.fingerprint(call.method, call.path, body)
    return rt.idempotency.lookup(call.principal.token_id, call.idempotency_key,
                                 fingerprint) is not None


def _record_job(call: Call, kind: str, host_record: dict[str, Any] | None, target: str | None,
                args: list[Any], body: Any, precheck: Callable[[], None] | None,
                spool: Path | None, submit: Callable | None) -> tuple[dict[str, Any], bool]:
    """The job this call made now (True), or the one an Idempotency-Key replays (False)."""
    folding = call.folding
    # Only a plain submission leaves its charge (and audit entry) to the job script: before
    # anything else that a request over its limit must not do (a precheck query, an upload,
    # a callback, fan-out, an idempotent replay's lookup) the charge is made on its own,
    # and the cached host records used are confirmed (the script checks only the job's).
    folds = folding is not None and submit is None and precheck is None and spool is None \
        and call.callback_url is None and call.idempotency_key is None \
        and set(folding.hosts) <= ({host_record["name"]} if host_record else set())
    if folding is not None and not folds:
        folding.confirm_hosts()
        folding.charge_now()
        folding.audit = None  # the after-request hook writes it (the answer may differ)
    if call.callback_url is not None:
        check_callback_url(call.callback_url)
    idempotency = None
    if call.idempotency_key is not None:
        body = body if body is not None else call.body
        rt = runtime()
        fingerprint = rt.idempotency.fingerprint(call.method, call.path, body)
        earlier = rt.idempotency.lookup(call.principal.token_id, call.idempotency_key,
                                        fingerprint)
        if earlier is not None:
            return rt.jobs.get(earlier), False
        idempotency = (call.idempotency_key, fingerprint)
    if precheck is not None:
        precheck()
    if submit is not None:
        record, created = submit(idempotency)
    else:
        record, created = submit_job(kind, call.principal, host_record=host_record,
                                     target=target, args=args, idempotency=idempotency,
                                     spool=str(spool) if spool is not None else None,
                                     folding=folding)
    if call.callback_url is not None and created:
        watch_job(record["id"], {"format": "dockyard", "url": call.callback_url})
    return record, created
