"""Base tasks owning the job lifecycle, query replies and engine clients per host.

Kept whole: the three task bases (job, query, stream) share the engine clients and the
mapping of errors to problems, and a job's lifecycle (claim, lease, run through a failover,
end, announce) reads best as one piece next to them.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import docker
import redis
import requests
from celery import Task, shared_task
from celery.exceptions import SoftTimeLimitExceeded

from app.core import logs
from app.core.errors import DockyardError, JobCancelledError, NotFoundError, QueryTimeoutError
from app.core.store import get_redis, utcnow
from app.engine.client import EngineClients
from app.engine.errors import translate_engine_error
from app.engine.images import ProgressFn
from app.integrations.webhooks import notify_watchers
from app.jobs import handoff, outbox
from app.jobs import records as jobstates
from app.jobs.dispatch import REPLY_TTL_SECONDS, reply_key
from app.jobs.pipes import PipeClosedError, PipeWriter
from app.ops import metrics
from app.runtime import runtime
from tasks.failover import TRANSIENT_REDIS_ERRORS, through_failover

logger = logging.getLogger(__name__)

# docker-py's base URL for a unix-socket engine (its requests go through the socket adapter).
UNIX_BASE_URL = "http+docker://localhost"
_clients: EngineClients | None = None
# How long a delivery of a job another live runner holds waits for it before giving up
# (acknowledged; should that runner die later, the sweeper sends the kept copy again).
DUPLICATE_WAIT_SECONDS = 60.0


def engine_clients() -> EngineClients:
    """This process's engine clients (one per host)."""
    global _clients
    if _clients is None:
        settings = runtime().settings
        _clients = EngineClients(settings.run_dir / "tls", settings.engine_timeout_seconds,
                                 pool_size=settings.engine_pool_size)
    return _clients


def client_for(host: str, revision: int | None = None,
               record: dict[str, Any] | None = None) -> docker.DockerClient:
    """The cached client for ``host``, read from the inventory only on a miss (or from
    ``record``, its record as just read)."""
    clients = engine_clients()
    if revision is not None:
        hit = clients.cached(host, int(revision))
        if hit is not None:
            return hit
    record = record or runtime().hosts.get(host)
    settings = runtime().settings
    if settings.agent_host == host:
        # An agent reaches its own engine by the local socket, whatever the record says.
        record = {**record, "url": settings.agent_engine_url, "tls": None}
    client = clients.get(record, runtime().hosts.tls_material(record))
    metrics.watch_engine_client(client, host)  # once per client: times its engine calls
    return client


def fresh_client(host: str, record: dict[str, Any] | None = None) -> docker.DockerClient:
    """The host's client, checked with a ping; rebuilt once if its pooled connections died.

    After an engine restart every pooled connection is dead: the first call on one fails
    although the engine is back, so a job starts with a ping on a possibly new client.
    Not on a unix socket: a restarted engine's end of it is closed by the kernel, and
    urllib3 drops a closed pooled connection before reusing it
    (tests/unit/test_engine_pool.py), so the first real call gets a new one; an engine that
    is down fails that call with what the ping would have failed with.
    """
    client = client_for(host, record=record)
    if client.api.base_url == UNIX_BASE_URL:
        return client
    try:
        client.ping()
    except requests.exceptions.ConnectionError:
        engine_clients().forget(host)
        client = client_for(host, record=record)
    return client


def internal_problem() -> dict[str, Any]:
    return DockyardError("the worker failed unexpectedly; see the worker log for this job"
                         ).to_problem()


def to_problem(exc: BaseException, host: str | None) -> dict[str, Any]:
    """Any exception as a problem object; unknown ones carry no internals."""
    if isinstance(exc, DockyardError):
        return exc.to_problem()
    if isinstance(exc, SoftTimeLimitExceeded):
        return QueryTimeoutError("the job exceeded its time limit").to_problem()
    if host is not None and isinstance(exc, docker.errors.DockerException | OSError):
        return translate_engine_error(exc, host).to_problem()
    if host is not None and type(exc).__module__.startswith(("requests", "urllib3")):
        return translate_engine_error(exc, host).to_problem()
    return internal_problem()


class JobContext:
    """What an operation sees of its job: its host's client, progress, events, cancellation."""

    def __init__(self, job_id: str, host: str | None) -> None:
        self.job_id = job_id
        self.host = host
        # True when this delivery found the job already running: an earlier delivery's
        # worker was lost mid-run (see JobTask._run_job).
        self.redelivered = False
        self._last_progress = 0.0
        self._pending: list[dict[str, Any]] = []
        self._client: docker.DockerClient | None = None
        self._host_record: dict[str, Any] | None = None

    @property
    def client(self) -> docker.DockerClient:
        assert self.host is not None
        if self._client is None:
            self._client = fresh_client(self.host, self.host_record)
        return self._client

    @property
    def host_record(self) -> dict[str, Any]:
        """The job's host record, read once per delivery (client and policy share it)."""
        assert self.host is not None
        if self._host_record is None:
            self._host_record = runtime().hosts.get(self.host)
        return self._host_record

    def progress(self, done: int | None, total: int | None, unit: str, message: str,
                 force: bool = False, defer: bool = False) -> None:
        """Record progress; rate-limited so a chatty stream does not flood Redis.

        ``defer`` (a step that the next checkpoint follows soon) keeps it for the job's next
        Redis write: the cancel check, the next progress, or the end of the job, whichever
        comes first; the order of events is kept.
        """
        now = time.monotonic()
        if not force and now - self._last_progress < 0.25:
            return
        self._last_progress = now
        self._pending.append({"done": done, "total": total, "unit": unit, "message": message})
        if not defer:
            self.flush_progress()

    def flush_progress(self) -> None:
        """Write the progress kept by ``progress(defer=True)``, if any."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        try:
            runtime().jobs.write_progress(self.job_id, pending)
        except redis.RedisError as exc:  # a failover: progress is news, not state; go on
            logger.warning("job %s: progress not recorded (%s)", self.job_id,
                           type(exc).__name__)

    def log(self, message: str, **data: Any) -> None:
        try:
            runtime().jobs.add_event(self.job_id, "log", {"message": message, **data})
        except redis.RedisError as exc:
            logger.warning("job %s: log event not recorded (%s): %s", self.job_id,
                           type(exc).__name__, message)

    def check_cancelled(self) -> None:
        """Raise JobCancelledError if a client asked to cancel this job.

        Progress kept for later is written in the same round trip.
        """
        pending, self._pending = self._pending, []
        if through_failover(lambda: runtime().jobs.write_progress(self.job_id, pending,
                                                                  check_cancel=True),
                            f"job {self.job_id} cancel check"):
            raise JobCancelledError(f"job '{self.job_id}' was cancelled")


class JobTask(Task):
    """Base for operations: moves the job record through its states around the work."""

    abstract = True
    acks_late = True
    reject_on_worker_lost = True

    def check_task_message(self, task_id: str, args: list[Any]) -> str | None:
        """Why a signed message may not run this job (None: it may); called before it runs.

        A job's message carries its job id first and, for a host's job, the host second;
        they must be those of the job record the API wrote for this task id and kind.
        """
        if not args or args[0] != task_id:
            return "the job id argument is not the task id"
        try:
            record = runtime().jobs.get(task_id)
        except NotFoundError:
            return f"no job record '{task_id}'"
        if record["kind"] != self.name:
            return f"job '{task_id}' is a {record['kind']} job, not {self.name}"
        if record["host"] and (len(args) < 2 or args[1] != record["host"]):
            return f"job '{task_id}' runs on host '{record['host']}', not the one in the message"
        return None

    def run_job(self, job_id: str, host: str | None,
                operation: Callable[[JobContext], dict[str, Any] | None]) -> None:
        with logs.job_context(job_id=job_id, host=host):
            self._run_job(job_id, host, operation)

    def _run_job(self, job_id: str, host: str | None,
                 operation: Callable[[JobContext], dict[str, Any] | None]) -> None:
        store = runtime().jobs
        runner = f"{self.request.hostname or 'worker'}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        started = self._claim(store, job_id, runner)
        if started is None:
            _job_ended(job_id, host, parent=False)  # cancelled while queued: announce it now
            return
        if started.code == 2:
            logger.warning("job %s: its earlier runner died; resuming", job_id)
        lease = _LeaseKeeper(store, job_id, runner)
        lease.start()
        try:
            # Anything but a fresh start (2: taken over from a dead runner, 3: this runner's
            # already) may find what an earlier run made: the operation looks for it.
            self._run_claimed(store, job_id, host, operation, redelivered=started.code != 1)
        finally:
            lease.stop()

    def _claim(self, store: Any, job_id: str, runner: str) -> Any:
        """Take the job for ``runner``, or None when this delivery must not run it.

        Only a queued job, or a running one whose runner stopped renewing its lease (its
        worker died), is taken, atomically: a re-sent or redelivered message of a job
        another worker runs waits for that runner (up to DUPLICATE_WAIT_SECONDS), and one
        of a job that ended changes nothing. Either way the message is acknowledged.
        """
        deadline = time.monotonic() + DUPLICATE_WAIT_SECONDS
        while True:
            started = through_failover(
                lambda: store.start(job_id, runner, handoff.RUNNER_LEASE_SECONDS),
                f"job {job_id} start")
            if started.code:
                return started
            if started.previous != jobstates.RUNNING or time.monotonic() >= deadline:
                logger.info("job %s skipped: it is %s", job_id,
                            started.previous)
                return None
            # Another runner holds it: a duplicate, or a runner that just died (its lease
            # lapses within RUNNER_LEASE_SECONDS); look again when the lease would end.
            time.sleep(min(max(started.lease_left, 0.2), 2.0))

    def _run_claimed(self, store: Any, job_id: str, host: str | None,
                     operation: Callable[[JobContext], dict[str, Any] | None],
                     redelivered: bool = True) -> None:
        context = JobContext(job_id, host)
        context.redelivered = redelivered
        began = time.monotonic()
        try:
            context.check_cancelled()
            result = _through_failover(operation, context)
        except JobCancelledError:
            context.flush_progress()
            through_failover(lambda: store.transition(
                job_id, (jobstates.RUNNING,), jobstates.CANCELLED, finished_at=utcnow()),
                f"job {job_id} end")
            metrics.record_job(self.name, jobstates.CANCELLED, time.monotonic() - began)
            _job_ended(job_id, host)
            logger.info("job %s cancelled host=%s", job_id, host)
            return
        except BaseException as exc:
            context.flush_progress()
            problem = to_problem(exc, host)
            if problem["status"] == 500:
                logger.exception("job %s failed unexpectedly host=%s", job_id, host)
            else:
                logger.info("job %s failed host=%s: %s", job_id, host, problem["detail"])
            through_failover(lambda: store.transition(
                job_id, (jobstates.RUNNING,), jobstates.FAILED,
                event={"state": jobstates.FAILED, "error": problem}, error=problem,
                finished_at=utcnow()), f"job {job_id} end")
            if problem["status"] == 403:
                _audit_denial(job_id, self.name, host, problem)
            metrics.record_job(self.name, jobstates.FAILED, time.monotonic() - began)
            _job_ended(job_id, host)
            if host is not None and isinstance(exc, docker.errors.DockerException | OSError):
                engine_clients().forget(host)  # a stale pool after an engine restart
            if not isinstance(exc, Exception):
                raise
            return
        context.flush_progress()
        through_failover(lambda: store.transition(
            job_id, (jobstates.RUNNING,), jobstates.SUCCEEDED,
            event={"state": jobstates.SUCCEEDED}, result=result, finished_at=utcnow()),
            f"job {job_id} end")
        metrics.record_job(self.name, jobstates.SUCCEEDED, time.monotonic() - began)
        _job_ended(job_id, host)
        logger.info("job %s succeeded host=%s", job_id, host)


def _job_ended(job_id: str, host: str | None, parent: bool = True) -> None:
    """A job's end reaches its fan-out parent and its watchers (webhooks, chat).

    An agent reaches neither: it posts the end to its outbox and the relay does both.
    """
    agent = runtime().settings.agent_host
    if agent:
        try:
            outbox.post(agent, outbox.JOB_END, job=job_id, parent=parent)
        except Exception:
            logger.exception("job %s: could not post its end to the outbox", job_id)
        return
    if parent:
        runtime().jobs.notify_parent(job_id)
    notify_watchers(job_id)


def _through_failover(operation: Callable[[JobContext], dict[str, Any] | None],
                      context: JobContext) -> dict[str, Any] | None:
    """Run the operation; if Redis went away under it (a failover), run it again once Redis
    is back. Operations are idempotent (a redelivered job runs them again anyway)."""
    for attempt in range(3):
        try:
            return operation(context)
        except TRANSIENT_REDIS_ERRORS as exc:
            if attempt == 2:
                raise
            logger.warning("job %s: Redis went away during the job (%s); running it again "
                           "once Redis is back", context.job_id, type(exc).__name__)
            through_failover(lambda: get_redis().ping(), f"job {context.job_id} wait")
            context.redelivered = True  # the first attempt may have made something to adopt
    raise AssertionError("unreachable")


class _LeaseKeeper:
    """Renews a runner's lease on its job every few seconds while the job runs."""

    def __init__(self, store: Any, job_id: str, runner: str) -> None:
        self.store, self.job_id, self.runner = store, job_id, runner
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, daemon=True,
                                        name=f"dockyard-lease-{job_id}")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _renew(self) -> None:
        while not self._stop.wait(handoff.RUNNER_LEASE_SECONDS / 3):
            try:
                if not self.store.renew(self.job_id, self.runner, handoff.RUNNER_LEASE_SECONDS):
                    return
            except Exception:  # Redis briefly away: the next renewal retries
                logger.warning("job %s: lease renewal failed", self.job_id, exc_info=True)


def _audit_denial(job_id: str, kind: str, host: str | None, problem: dict[str, Any]) -> None:
    """A refusal found on the worker (what a request refers to on the engine) is audited
    like a refusal at the API, under the job's requester."""
    try:
        if runtime().settings.agent_host:
            outbox.post(runtime().settings.agent_host, outbox.AUDIT, job=job_id, kind=kind,
                        problem=problem)
            return
        record = runtime().jobs.get(job_id)
        runtime().audit.record({
            "ts": utcnow(), "request_id": None, "actor": record.get("requested_by"),
            "token_id": record.get("token_id"), "method": "JOB", "route": kind,
            "path": f"/api/v1/jobs/{job_id}", "host": host, "target": record.get("target"),
            "request": {}, "decision": "denied", "rule": problem.get("rule"),
            "outcome": "denied", "status": 403, "job_id": job_id})
    except Exception:  # the audit store being down must not hide the job's outcome
        logger.warning("audit record of denied job %s failed", job_id, exc_info=True)


def _unreachable_or(exc: Exception, host: str) -> Exception:
    """After a read timeout, tell a dead host (503) from a slow engine (504) on a fresh connection.

    A pooled keep-alive connection to a host whose link went down only times out; a new
    connection fails at once with the real reason.
    """
    try:
        client_for(host).ping()
    except Exception as fresh:
        engine_clients().forget(host)
        return fresh
    return exc


class QueryTask(Task):
    """Base for reads: runs against the host's engine and pushes the answer to the caller."""

    abstract = True
    acks_late = False

    def reply_plain(self, reply_id: str, read: Callable[[], Any]) -> None:
        """Answer a host-less query (see ``run_central_query``)."""
        try:
            payload = {"ok": read()}
        except Exception as exc:
            problem = to_problem(exc, None)
            if problem["status"] == 500:
                logger.exception("query %s failed unexpectedly", self.name)
            payload = {"error": problem}
        _push_reply(reply_id, payload)
        metrics.flush_engine_calls()

    def reply(self, reply_id: str, host: str, revision: int,
              read: Callable[[docker.DockerClient], Any]) -> None:
        try:
            try:
                payload = {"ok": read(client_for(host, revision))}
            except requests.exceptions.ConnectionError:
                # A stale pool (the engine restarted): once more on new connections.
                engine_clients().forget(host)
                payload = {"ok": read(client_for(host, revision))}
        except Exception as exc:
            if isinstance(exc, docker.errors.DockerException | OSError):
                engine_clients().forget(host)
            if isinstance(exc, requests.exceptions.ReadTimeout):
                exc = _unreachable_or(exc, host)
            problem = to_problem(exc, host)
            if problem["status"] == 500:
                logger.exception("query %s failed unexpectedly host=%s", self.name, host)
            payload = {"error": problem}
        _push_reply(reply_id, payload)
        metrics.flush_engine_calls()  # after the reply, so the caller never waits for it


def engine_read(name: str, read: Callable[..., Any]) -> Task:
    """Register a read on a host's query lane: ``read(client, *args)`` answers the caller.

    The task keeps its explicit name; the API sends ``(reply_id, host, revision, *args)``.
    """
    def run(self: QueryTask, reply_id: str, host: str, revision: int, *args: Any) -> None:
        self.reply(reply_id, host, revision, lambda client: read(client, *args))

    run.__name__ = run.__qualname__ = name.replace(".", "_")
    return shared_task(bind=True, base=QueryTask, name=name)(run)


def _push_reply(reply_id: str, payload: dict[str, Any]) -> None:
    pipe = get_redis().pipeline(transaction=False)
    pipe.rpush(reply_key(reply_id), json.dumps(payload, default=str))
    pipe.expire(reply_key(reply_id), REPLY_TTL_SECONDS)
    pipe.execute()


class StreamTask(Task):
    """Base for downloads: produces bytes from the engine into a pipe the API relays."""

    abstract = True
    acks_late = False

    def stream(self, pipe_id: str, host: str, revision: int,
               produce: Callable[[docker.DockerClient], tuple[dict[str, Any], Iterator[bytes],
                                                              Callable[[], None]]]) -> None:
        """Run ``produce`` (metadata, chunks, closer) and copy its chunks into the pipe.

        A follow stream (logs -f, events) blocks in the engine between chunks, so a watcher
        closes it as soon as the reader leaves instead of at the next chunk.
        """
        writer = PipeWriter(pipe_id)
        try:
            meta, chunks, closer = produce(client_for(host, revision))
        except Exception as exc:
            if isinstance(exc, docker.errors.DockerException | OSError):
                engine_clients().forget(host)
            writer.fail(to_problem(exc, host))
            return
        stop = threading.Event()
        watcher = threading.Thread(target=_close_when_reader_leaves,
                                   args=(writer, closer, stop), daemon=True)
        watcher.start()
        try:
            writer.header(meta)
            for chunk in chunks:
                if chunk:
                    writer.write(chunk)
            writer.end()
        except PipeClosedError:
            logger.info("stream %s: reader left after %s bytes host=%s", self.name,
                        writer.bytes_sent, host)
        except Exception as exc:
            if not writer.reader_gone():
                writer.fail(to_problem(exc, host))
        finally:
            stop.set()
            closer()


def _close_when_reader_leaves(writer: PipeWriter, closer: Callable[[], None],
                              stop: threading.Event) -> None:
    while not stop.wait(1.0):
        if writer.reader_gone():
            closer()
            return


def layer_progress(job: JobContext) -> ProgressFn:
    """Progress for a layer stream: every finished layer is an event, the chatter between
    is rate-limited."""
    last_done: list[int | None] = [None]

    def report(done: int | None, total: int | None, unit: str, message: str) -> None:
        force = done != last_done[0] or done == total
        last_done[0] = done
        job.progress(done, total, unit, message, force=force)

    return report
