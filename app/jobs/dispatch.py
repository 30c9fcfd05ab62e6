"""Enqueueing jobs and queries on a host's lanes, and liveness of those lanes."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from app.core.errors import NoWorkerError, QueryTimeoutError, UnavailableError, error_from_problem
from app.core.store import PREFIX, get_redis, utcnow
from app.fleet.hosts import queues_for
from app.jobs.handoff import NotReplicatedError, broker_message
from app.jobs.pipes import PipeReader, new_pipe_id
from app.jobs.records import QUEUED, RUNNING, CreateExtras, job_key
from app.runtime import runtime
from app.security.auth import Principal
from app.security.ratelimit import RateLimiter

logger = logging.getLogger(__name__)

LANE_TTL_SECONDS = 15
REPLY_TTL_SECONDS = 60
REPLICATION_RETRY_AFTER_SECONDS = 1


def lane_key(queue: str) -> str:
    return f"{PREFIX}lane:{queue}"


def reply_key(reply_id: str) -> str:
    """A reply's list; a reply id that names a host (``host/hex``) lives under its prefix."""
    host, scoped, rest = reply_id.rpartition("/")
    return f"{PREFIX}h:{host}:reply:{rest}" if scoped else f"{PREFIX}reply:{reply_id}"


def new_reply_id(host: str | None) -> str:
    return f"{host}/{uuid.uuid4().hex}" if host else uuid.uuid4().hex


def lane_alive(queue: str) -> bool:
    """True if some worker refreshed its heartbeat for ``queue`` within the TTL."""
    return get_redis().zcount(lane_key(queue), time.time(), "+inf") > 0


def beat_lanes(queues: list[str], worker: str) -> None:
    """Record that ``worker`` consumes ``queues`` for the next LANE_TTL_SECONDS."""
    pipe = get_redis().pipeline(transaction=False)
    until = time.time() + LANE_TTL_SECONDS
    for queue in queues:
        pipe.zadd(lane_key(queue), {worker: until})
        pipe.zremrangebyscore(lane_key(queue), "-inf", time.time())
    pipe.execute()


def leave_lanes(queues: list[str], worker: str) -> None:
    pipe = get_redis().pipeline(transaction=False)
    for queue in queues:
        pipe.zrem(lane_key(queue), worker)
    pipe.execute()


def require_lane(queue: str, host: str | None) -> None:
    """Fail fast when no worker consumes ``queue`` (workers refresh a key every few seconds).

    Raises:
        NoWorkerError: the lane has no live consumer.
    """
    if not lane_alive(queue):
        raise _no_worker(queue, host)


def _no_worker(queue: str, host: str | None) -> NoWorkerError:
    where = f" for host '{host}'" if host else ""
    return NoWorkerError(f"no live worker consumes queue '{queue}'{where}", queue=queue, host=host)


class StaleHostError(UnavailableError):
    """The host record a submission used changed before its job script ran (nothing was
    written); the view is run again with the record re-read (``api.common.charged_by_job``)."""

    def __init__(self, host: str) -> None:
        super().__init__(f"host '{host}' changed while the job was submitted; retry",
                         retry_after=1)


@dataclass
class Folding:
    """What an HTTP job submission leaves to its job script (``JobStore.create``).

    ``rate``: (token id, route class, limit) of a rate-limit charge still owed (the
    before-request hook deferred it; see ``app/request_accounting.py``), None once made;
    ``audit``: builds the JSON audit entry of the 202 answer for a job id (None when the
    answer may be something else, e.g. with ``?wait``); ``audited``: the script wrote it;
    ``hosts``: host name -> digest of the cached record the request used (``host_record``),
    checked by the script (a mismatch raises ``StaleHostError``: the view runs again).
    """

    rate: tuple[str, str, int] | None = None
    audit: Callable[[str], str] | None = None
    audited: bool = False
    hosts: dict[str, str] = field(default_factory=dict)

    def host_record(self, name: str) -> dict[str, Any]:
        """The host's record from the process cache, its digest kept for the job script."""
        record, self.hosts[name] = runtime().hosts.get_checked(name)
        return record

    def confirm_hosts(self) -> None:
        """Check the cached host records used so far are still the stored ones, before
        they are used for anything the job script does not check (a precheck query)."""
        hosts = runtime().hosts
        for name, digest in self.hosts.items():
            if not hosts.is_current(name, digest):
                hosts.forget_checked(name)
                raise StaleHostError(name)

    def charge_now(self) -> None:
        """Make the owed charge on its own (before anything but a read is done)."""
        if self.rate is not None:
            token_id, kind, limit = self.rate
            self.rate = None
            runtime().rate_limiter.hit(token_id, kind, limit)


# The Folding of the HTTP submission being served (None for anything else), set by the
# before-request hook (app/request_accounting.py) so ``api.services.host_record`` finds it.
current_folding: ContextVar[Folding | None] = ContextVar("current_folding", default=None)


def submit_job(kind: str, principal: Principal, *, host_record: dict[str, Any] | None,
               target: str | None, args: list[Any], idempotency: tuple[str, str] | None,
               queue: str | None = None, parent: str | None = None,
               spool: str | None = None,
               folding: Folding | None = None) -> tuple[dict[str, Any], bool]:
    """Record a job and enqueue its task.

    Args:
        kind: the task name, e.g. ``containers.provision``.
        host_record: the host the job runs on (its route picks the queue), or None.
        args: JSON-ready task arguments after the job id.
        idempotency: (key, request fingerprint) from an ``Idempotency-Key`` header.
        queue: explicit queue for host-less jobs.
        spool: the uploaded file the job consumes (deleted if it is cancelled while queued).
        folding: an HTTP request's ``Folding``: its owed rate-limit charge and
            its 202's audit entry go into the job script (see ``JobStore.create``).

    Returns:
        The job record and whether it was created now (False: an idempotent replay).
    """
    rt = runtime()
    host = host_record["name"] if host_record else None
    queue = queue or (queues_for(host_record)[0] if host_record else "engine.ops")
    record = rt.jobs.new_record(kind, host, target, principal.name, principal.token_id, queue,
                                parent=parent, spool=spool)
    claim = (rt.idempotency.claim_for(principal.token_id, idempotency[0], idempotency[1],
                                      record["id"]) if idempotency is not None else None)
    task_args = [record["id"], host, *args] if host_record else [record["id"], *args]
    # The signed message send_task would publish, pushed by the job script itself (see
    # app/jobs/handoff.py): a record never exists without its message, nor a message without
    # its record, and one round trip does both.
    message = broker_message(rt.celery, kind, task_args, queue, record["id"])
    extras, charged = _extras(folding, record["id"], host)
    outcome = None
    try:
        outcome, held = rt.jobs.create(
            record, lane_key(queue), claim, message,
            keep=not (host_record and host_record.get("route") == "agent"), extras=extras)
    except NotReplicatedError as exc:
        # The job is queued and will run; but a failover now could forget it, so the
        # client is told to retry (with its Idempotency-Key it gets this same job).
        logger.warning("job %s queued but not replicated: %s", record["id"], exc)
        raise UnavailableError("the job store could not confirm the job on a replica in "
                               "time; retry with the same Idempotency-Key",
                               retry_after=REPLICATION_RETRY_AFTER_SECONDS) from exc
    finally:
        if folding is not None:
            folding.audited = extras.audited
            if charged is not None and outcome != "stale-host":
                folding.rate = None  # the script charged it (whatever else it answered)
    if outcome == "stale-host":
        rt.hosts.forget_checked(host)
        raise StaleHostError(host)
    if outcome == "limited":
        raise RateLimiter.refusal(charged[0], charged[1], charged[2])
    if outcome == "no-lane":
        raise _no_worker(queue, host)
    if outcome == "claimed":
        return rt.jobs.get(rt.idempotency.earlier_job(held, idempotency[1])), False
    # DEBUG: at hundreds of submissions a second this line was a tenth of the API's CPU.
    logger.debug("job %s queued kind=%s host=%s", record["id"], kind, host)
    return record, True


def _extras(folding: Folding | None, job_id: str, host: str | None
            ) -> tuple[CreateExtras | None, tuple[str, int, float] | None]:
    """The job script's extras for ``folding``, and (class, limit, time) of its charge."""
    if folding is None:
        return None, None
    extras = CreateExtras(audit_entry=folding.audit(job_id) if folding.audit else "")
    if host and host in folding.hosts:
        extras.host_check = (host, folding.hosts[host])
    charged = None
    if folding.rate is not None:
        token_id, kind, limit = folding.rate
        if limit > 0:
            extras.rate_key, now = RateLimiter.window(token_id, kind)
            extras.rate_limit = limit
            charged = (kind, limit, now)
        else:
            folding.rate = None
    return extras, charged


def submit_fanout(kind: str, principal: Principal, *, host_records: list[dict[str, Any]],
                  target: str | None, args: list[Any],
                  idempotency: tuple[str, str] | None) -> tuple[dict[str, Any], bool]:
    """A parent job with one child job per host; the children fold into the parent as they end.

    Every host's lane is checked before anything is recorded, so a fan-out is either
    queued everywhere or refused.
    """
    rt = runtime()
    for record in host_records:
        require_lane(queues_for(record)[0], record["name"])
    parent = rt.jobs.new_record(kind + ".fanout", None, target, principal.name,
                                principal.token_id, "")
    if idempotency is not None:
        earlier = rt.idempotency.claim(principal.token_id, idempotency[0], idempotency[1],
                                       parent["id"])
        if earlier is not None:
            return rt.jobs.get(earlier), False
    parent["children"] = []
    pipe = get_redis().pipeline(transaction=False)
    rt.jobs.add_to_pipeline(pipe, parent)
    pipe.execute()
    rt.jobs.transition(parent["id"], (QUEUED,), RUNNING, started_at=utcnow())
    children = []
    for record in host_records:
        child, _ = submit_job(kind, principal, host_record=record, target=target, args=args,
                              idempotency=None, parent=parent["id"])
        children.append(child["id"])
    get_redis().hset(job_key(parent["id"]), "children", json.dumps(children))
    rt.jobs.aggregate_parent(parent["id"])
    return rt.jobs.get(parent["id"]), True


def open_stream(name: str, host_record: dict[str, Any], args: list[Any],
                timeout: float | None = None) -> tuple[dict[str, Any], PipeReader]:
    """Start a download produced by a worker on the host's query lane.

    Returns:
        The producer's metadata and the reader whose ``chunks()`` yield the bytes.

    Raises:
        NoWorkerError, QueryTimeoutError, or the error the worker reported before any byte.
    """
    timeout = timeout or runtime().settings.query_timeout_seconds
    queue = queues_for(host_record)[1]
    require_lane(queue, host_record["name"])
    pipe_id = new_pipe_id(host_record["name"])
    runtime().celery.send_task(name, args=[pipe_id, host_record["name"],
                                           host_record.get("revision", 1), *args],
                               queue=queue, expires=timeout)
    reader = PipeReader(pipe_id)
    return reader.open(timeout), reader


def run_query(name: str, host_record: dict[str, Any], args: list[Any],
              timeout: float | None = None) -> Any:
    """Run a read on the host's query lane and wait for its answer.

    The worker pushes the answer onto a one-off Redis list and the caller blocks on it,
    so a read costs a few milliseconds rather than a result-backend polling interval.

    Raises:
        NoWorkerError: no worker consumes the host's query lane.
        QueryTimeoutError: no answer in time.
        DockyardError: whatever the worker reported.
    """
    queue = queues_for(host_record)[1]
    require_lane(queue, host_record["name"])
    return _ask(name, queue, [host_record["name"], host_record.get("revision", 1), *args],
                timeout, f"host '{host_record['name']}'", reply_host=host_record["name"],
                host=host_record["name"])


def run_queries(calls: list[tuple[str, dict[str, Any], list[Any]]],
                timeout: float | None = None) -> list[Any]:
    """Several reads on several hosts at once; each answer is a result or the error raised.

    All tasks are sent first, then the replies are collected, so N hosts cost about one
    round trip, not N.
    """
    timeout = timeout or runtime().settings.query_timeout_seconds
    pending: list[tuple[str | None, Exception | None]] = []
    for name, host_record, args in calls:
        queue = queues_for(host_record)[1]
        try:
            require_lane(queue, host_record["name"])
        except NoWorkerError as exc:
            pending.append((None, exc))
            continue
        reply_id = new_reply_id(host_record["name"])
        runtime().celery.send_task(name, args=[reply_id, host_record["name"],
                                               host_record.get("revision", 1), *args],
                                   queue=queue, expires=timeout)
        pending.append((reply_id, None))
    deadline = time.monotonic() + timeout
    answers: list[Any] = []
    for (reply_id, error), (_name, host_record, _args) in zip(pending, calls, strict=True):
        if error is not None:
            answers.append(error)
            continue
        remaining = max(0.01, deadline - time.monotonic())
        answer = get_redis().blpop([reply_key(reply_id)], timeout=remaining)
        if answer is None:
            answers.append(QueryTimeoutError(f"host '{host_record['name']}' did not answer",
                                             host=host_record["name"]))
            continue
        payload = json.loads(answer[1])
        answers.append(error_from_problem(payload["error"]) if "error" in payload
                       else payload["ok"])
    return answers


def run_central_query(name: str, args: list[Any], timeout: float | None = None) -> Any:
    """A read that needs no engine (a registry's catalog, say) on the central query lane.

    The task receives ``(reply_id, *args)`` and answers with ``QueryTask.reply_plain``.
    """
    require_lane("engine.query", None)
    return _ask(name, "engine.query", args, timeout, "the worker", reply_host=None)


def _ask(name: str, queue: str, args: list[Any], timeout: float | None, who: str,
         reply_host: str | None, **extra: Any) -> Any:
    timeout = timeout or runtime().settings.query_timeout_seconds
    reply_id = new_reply_id(reply_host)
    runtime().celery.send_task(name, args=[reply_id, *args], queue=queue, expires=timeout)
    answer = get_redis().blpop([reply_key(reply_id)], timeout=timeout)
    if answer is None:
        raise QueryTimeoutError(f"{who} did not answer within {timeout:g}s", **extra)
    payload = json.loads(answer[1])
    if "error" in payload:
        raise error_from_problem(payload["error"])
    return payload["ok"]
