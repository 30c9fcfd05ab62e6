"""Handing a job to the broker without losing it, and getting it back when a worker does.

``broker_message`` builds the exact signed kombu message ``send_task`` would publish;
``JobStore.create`` pushes it with the job record in one Lua script (a record never exists
without its message) and keeps a copy (``MESSAGES``) and the job in ``INFLIGHT`` until the
job ends. ``sweep`` (beat, every ``SWEEP_SECONDS``) gives back what a dead worker held and
re-sends, once, a message lost inside kombu's delivery. ``replicate`` is the WAIT after a
write that must survive a failover.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import threading
import time
import uuid
from bisect import bisect
from typing import Any

import redis
from celery import Celery
from kombu import Producer
from kombu.utils import json as kombu_json

from app.core.store import PREFIX

logger = logging.getLogger(__name__)

# Kept copies of in-flight jobs' messages: job id -> JSON {"queue", "tag", "message", "sent"}.
MESSAGES = PREFIX + "jobs:messages"
# Jobs whose message is in flight (not final yet), scored by the time it was (re)sent.
INFLIGHT = PREFIX + "jobs:inflight"
# Queued jobs whose message one sweep found nowhere: job id -> when.
SUSPECTS = PREFIX + "jobs:lost-suspects"
# kombu's Redis transport: what a worker took and has not acknowledged yet.
UNACKED, UNACKED_INDEX = "unacked", "unacked_index"
_PRIORITY_SEP = "\x06\x16"
_PRIORITY_STEPS = [0, 3, 6, 9]


def _seconds(name: str, default: float) -> float:
    return float(os.environ.get(name) or default)


# The sweeper's timings. Environment overrides exist for drills and tests that kill
# processes and should not wait the production margins out.
SWEEP_SECONDS = _seconds("DOCKYARD_JOB_SWEEP_SECONDS", 10.0)
# A message popped by a worker is marked running (or sits in kombu's unacked hash) within
# milliseconds; one missing for this long was lost in delivery. Far above that time, so a
# re-send never races a worker that has the message.
LOST_GRACE_SECONDS = _seconds("DOCKYARD_JOB_LOST_GRACE_SECONDS", 30.0)
# A runner renews its lease on a running job every third of this; a running job whose
# lease lapsed this long ago (twice the lease since its last renewal) lost its worker.
RUNNER_LEASE_SECONDS = _seconds("DOCKYARD_JOB_LEASE_SECONDS", 15.0)
RUNNER_DEAD_SECONDS = 2 * RUNNER_LEASE_SECONDS
# Two sweeps at least this far apart must find a queued job's message nowhere.
SUSPECT_SECONDS = min(5.0, SWEEP_SECONDS / 2)


def queue_key(queue: str, priority: int = 0) -> str:
    """The Redis list kombu's transport keeps ``queue``'s messages of ``priority`` in."""
    step = _PRIORITY_STEPS[bisect(_PRIORITY_STEPS, priority) - 1]
    return f"{queue}{_PRIORITY_SEP}{step}" if step else queue


def queue_keys(queue: str) -> list[str]:
    return [queue_key(queue, step) for step in _PRIORITY_STEPS]


class _Capture(Producer):
    """A producer that publishes nowhere: it keeps the message its channel would get."""

    def __init__(self) -> None:
        super().__init__(None, auto_declare=False)
        self.published: dict[str, Any] | None = None

    def _publish(self, body: Any, priority: Any, content_type: Any, content_encoding: Any,
                 headers: Any, properties: Any, routing_key: Any, mandatory: Any,
                 immediate: Any, exchange: Any, declare: Any, *args: Any, **kwargs: Any) -> None:
        # kombu's virtual channel: prepare_message, then basic_publish's augmentation
        # (the Redis transport's body_encoding is base64).
        properties = dict(properties or {})
        properties.setdefault("delivery_info", {})
        properties.setdefault("priority", priority or 0)
        data = body if isinstance(body, bytes) else str(body).encode()
        properties.update(body_encoding="base64", delivery_tag=str(uuid.uuid4()))
        properties["delivery_info"].update(exchange=exchange, routing_key=routing_key)
        self.published = {"body": base64.b64encode(data).decode(),
                          "content-encoding": content_encoding, "content-type": content_type,
                          "headers": headers or {}, "properties": properties,
                          "_exchange": exchange, "_routing_key": routing_key}

    def revive(self, channel: Any) -> None:  # no channel, ever
        return None

    @property
    def connection(self) -> Any:
        return _NoConnection


class _NoConnection:
    """What ``send_task`` asks of its producer's connection: only its error translation."""

    @staticmethod
    def _reraise_as_library_errors() -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()


def broker_message(celery: Celery, name: str, args: list[Any], queue: str,
                   task_id: str) -> tuple[str, str, str]:
    """The signed message ``celery.send_task(name, args, queue=queue, task_id=task_id)``
    would LPUSH, built without a broker connection.

    Returns:
        (the Redis list it goes on, its JSON as kombu stores it, its delivery tag).
    """
    capture = _Capture()
    celery.send_task(name, args=args, queue=queue, task_id=task_id, argsrepr="",
                     kwargsrepr="", producer=capture, retry=False)
    message = capture.published
    assert message is not None
    exchange, routing_key = message.pop("_exchange"), message.pop("_routing_key")
    if exchange:  # Dockyard routes by queue name: the anonymous exchange
        raise ValueError(f"task {name} routed through exchange '{exchange}'")
    priority = message["properties"].get("priority") or 0
    return (queue_key(routing_key, int(priority)), kombu_json.dumps(message),
            message["properties"]["delivery_tag"])


# -- WAIT --------------------------------------------------------------------------------------


class NotReplicatedError(Exception):
    """Fewer replicas than asked for confirmed a write in time."""

    def __init__(self, acked: int, wanted: int) -> None:
        super().__init__(f"{acked} of {wanted} replicas confirmed the write")
        self.acked = acked
        self.wanted = wanted


class Replication:
    """How many replicas a write must reach: the setting, capped by those connected now.

    The primary's count of connected replicas is read when a WAIT falls short and cached
    for a second, so losing the only replica costs one short WAIT, not one per write.
    """

    def __init__(self, replicas: int, timeout_ms: int) -> None:
        self.replicas = replicas
        self.timeout_ms = timeout_ms
        self._connected: tuple[float, int] | None = None
        self._lock = threading.Lock()

    def wanted(self) -> int:
        if self.replicas <= 0:
            return 0
        with self._lock:
            cached = self._connected
        if cached is not None and time.monotonic() - cached[0] < 1.0:
            return min(self.replicas, cached[1])
        return self.replicas

    def check(self, client: redis.Redis, wanted: int, acked: int) -> None:
        """After a WAIT that got ``acked`` of ``wanted``: raise unless no more are connected."""
        if acked >= wanted:
            return
        info = client.info("replication")
        connected = int(info.get("connected_slaves", 0))
        with self._lock:
            self._connected = (time.monotonic(), connected)
        if acked < min(wanted, connected):
            raise NotReplicatedError(acked, min(wanted, connected))


def execute_replicated(pipe: redis.client.Pipeline, replication: Replication | None,
                       client: redis.Redis, wanted: int | None = None) -> list[Any]:
    """Run ``pipe`` with a WAIT at its end (same connection), checking the answer.

    Returns the pipeline's results without the WAIT's.

    Raises:
        NotReplicatedError: too few replicas confirmed in time.
    """
    if wanted is None:
        wanted = replication.wanted() if replication is not None else 0
    if wanted and replication is not None:
        pipe.execute_command("WAIT", wanted, replication.timeout_ms)
        results = pipe.execute()
        replication.check(client, wanted, int(results[-1]))
        return results[:-1]
    return pipe.execute()


# -- the sweeper --------------------------------------------------------------------------------

# Put a kept message back on its queue (again), once per call; marks the copy as re-sent.
_RESEND = """
local kept = redis.call('HGET', KEYS[1], ARGV[1])
if not kept then return 0 end
local entry = cjson.decode(kept)
entry['sent'] = (entry['sent'] or 1) + 1
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(entry))
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('LPUSH', entry['queue'], entry['message'])
return entry['sent']
"""

# Move a message a worker took (kombu's unacked hash) back onto its queue, as kombu's own
# visibility-timeout restore does, only if the hash still holds what the caller read.
_RESTORE = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('RPUSH', ARGV[3], ARGV[4])
return 1
"""


def restore_taken(client: redis.Redis, tag: str, queue: str) -> bool:
    """Put the message a worker took under delivery ``tag`` back on ``queue``."""
    raw = client.hget(UNACKED, tag)
    if raw is None:
        return False
    message = json.loads(raw)[0]
    message["headers"]["redelivered"] = True  # unsigned, as kombu marks it
    message["properties"]["delivery_info"]["redelivered"] = True
    return bool(client.eval(_RESTORE, 2, UNACKED, UNACKED_INDEX, tag, raw, queue,
                            kombu_json.dumps(message)))


def sweep(client: redis.Redis, jobs: Any, now: float | None = None) -> dict[str, int]:
    """One pass over the in-flight jobs; returns counts of what it did.

    - final job still listed: forgotten.
    - queued job older than LOST_GRACE_SECONDS whose message is neither on its queue nor
      held by a worker: lost inside kombu's delivery; re-sent once from the kept copy, and
      a second loss fails the job (``lost-before-run``).
    - queued job whose message a worker took LOST_GRACE_SECONDS ago without starting it:
      the worker died; the message goes back on the queue.
    - running job whose runner lease lapsed RUNNER_DEAD_SECONDS ago: the message goes back
      (a worker that died mid-job); the next worker adopts what the first made.
    """
    from app.jobs import records as jobstates

    if now is None:  # the server's clock, the one runner leases are written with
        seconds, micros = client.time()
        now = seconds + micros / 1e6
    done = {"forgotten": 0, "resent": 0, "restored": 0, "failed": 0}
    due = client.zrangebyscore(INFLIGHT, "-inf", now - LOST_GRACE_SECONDS, start=0, num=1000)
    if not due:
        return done
    kept = dict(zip(due, client.hmget(MESSAGES, due), strict=True))
    states = {}
    pipe = client.pipeline(transaction=False)
    for job_id in due:
        pipe.hmget(jobs.keys(job_id)[0], "state", "lease_until")
    for job_id, (state, lease_until) in zip(due, pipe.execute(), strict=True):
        states[job_id] = (state, float(lease_until or 0))
    queued_tags: dict[str, set[str]] = {}
    for job_id in due:
        state, lease_until = states[job_id]
        raw = kept.get(job_id)
        if state is None or state in jobstates.FINAL_STATES or raw is None:
            jobs.forget_message(job_id)
            client.hdel(SUSPECTS, job_id)
            done["forgotten"] += 1
            continue
        entry = json.loads(raw)
        tag = entry["tag"]
        if state == jobstates.RUNNING:
            if lease_until and now - lease_until < RUNNER_DEAD_SECONDS - RUNNER_LEASE_SECONDS:
                client.hdel(SUSPECTS, job_id)
                continue
            # Lapsed. A live runner whose renewals failed while Redis was away renews within
            # a third of its lease once Redis is back: only a lease found lapsed again a
            # lease's length later marks a dead runner.
            suspected = client.hget(SUSPECTS, job_id)
            if suspected is None or now - float(suspected) < RUNNER_LEASE_SECONDS:
                if suspected is None:
                    client.hset(SUSPECTS, job_id, now)
                continue
            renewed = float(client.hget(jobs.keys(job_id)[0], "lease_until") or 0)
            if client.hget(jobs.keys(job_id)[0], "state") != jobstates.RUNNING or \
                    now - renewed < RUNNER_DEAD_SECONDS - RUNNER_LEASE_SECONDS:
                client.hdel(SUSPECTS, job_id)
                continue
            client.hdel(SUSPECTS, job_id)
            logger.warning("job %s: its worker stopped renewing it; sending it again", job_id)
            if not restore_taken(client, tag, entry["queue"]):
                if _on_queue(client, entry["queue"], tag, cache=queued_tags):
                    continue
                client.eval(_RESEND, 2, MESSAGES, INFLIGHT, job_id, now)
            else:
                client.zadd(INFLIGHT, {job_id: now})
            done["restored"] += 1
            continue
        # Queued. Look where a message goes in order (queue, then a worker's hands), so
        # one moving between the two is seen in one of them.
        if _on_queue(client, entry["queue"], tag, cache=queued_tags):
            client.hdel(SUSPECTS, job_id)
            continue
        held_since = client.zscore(UNACKED_INDEX, tag)
        if held_since is not None:
            client.hdel(SUSPECTS, job_id)
            if now - float(held_since) >= LOST_GRACE_SECONDS:
                logger.warning("job %s: taken by a worker that never started it; requeued",
                               job_id)
                if restore_taken(client, tag, entry["queue"]):
                    client.zadd(INFLIGHT, {job_id: now})
                    done["restored"] += 1
            continue
        if client.hget(jobs.keys(job_id)[0], "state") != jobstates.QUEUED:
            continue  # a worker started it meanwhile
        # Neither queued nor held: popped and lost before kombu recorded its delivery. A
        # pop is recorded within milliseconds, so only a job seen so on two sweeps (at
        # least SUSPECT_SECONDS apart) is taken for lost.
        suspected = client.hget(SUSPECTS, job_id)
        if suspected is None or now - float(suspected) < SUSPECT_SECONDS:
            if suspected is None:
                client.hset(SUSPECTS, job_id, now)
            continue
        client.hdel(SUSPECTS, job_id)
        if int(entry.get("sent", 1)) >= 2:
            error = {"type": "https://dockyard.dev/problems/lost-before-run",
                     "title": "Lost before it ran", "status": 503,
                     "detail": "the job's message was lost twice on its way to a worker"}
            outcome = jobs.transition(job_id, (jobstates.QUEUED,), jobstates.FAILED,
                                      event={"state": jobstates.FAILED, "error": error},
                                      error=error, finished_at=_utcnow())
            if outcome.applied:
                logger.warning("job %s: message lost twice; failed (lost-before-run)", job_id)
                done["failed"] += 1
                jobs.notify_parent(job_id)
            continue
        logger.warning("job %s: message lost before a worker recorded it; sent again", job_id)
        client.eval(_RESEND, 2, MESSAGES, INFLIGHT, job_id, now)
        done["resent"] += 1
    return done


def _on_queue(client: redis.Redis, queue: str, tag: str, cache: dict[str, set[str]]) -> bool:
    """Whether a message with delivery ``tag`` waits on ``queue`` (any priority list)."""
    if queue not in cache:
        tags: set[str] = set()
        base = queue.split(_PRIORITY_SEP)[0]
        for key in queue_keys(base):
            for raw in client.lrange(key, 0, -1):
                try:
                    tags.add(json.loads(raw)["properties"]["delivery_tag"])
                except (ValueError, KeyError, TypeError):
                    continue
        cache[queue] = tags
    return tag in cache[queue]


def _utcnow() -> str:
    from app.core.store import utcnow
    return utcnow()
