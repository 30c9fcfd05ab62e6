"""Job records, their state machine and their event streams, kept in Redis."""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from app.auth import Principal
from app.errors import ConflictError, InvalidInputError, NotFoundError
from app.ids import new_id
from app.store import PREFIX, utcnow

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = (
    "queued", "running", "succeeded", "failed", "cancelled")
FINAL_STATES = frozenset({SUCCEEDED, FAILED, CANCELLED})

_INDEX = PREFIX + "jobs"
# job id -> its host ("" for a host-less job): where the job's keys live (see job_key).
HOST_INDEX = PREFIX + "jobs:host"
_JSON_FIELDS = ("progress", "result", "error", "children")
_EVENTS_MAXLEN = 10000

# Moves a job between states atomically and records the change in its event stream,
# so a reader of the stream never sees a state the record does not have.
_TRANSITION = """
local cur = redis.call('HGET', KEYS[1], 'state')
if not cur then return {-1, ''} end
local allowed = false
for s in string.gmatch(ARGV[1], '[^,]+') do
  if s == cur then allowed = true end
end
if not allowed then return {0, cur} end
redis.call('HSET', KEYS[1], 'state', ARGV[2], unpack(ARGV, 5))
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'type', 'state', 'data', ARGV[3])
return {1, cur}
"""

# Creates a job in one round trip: the lane's liveness (a worker's heartbeat score is the
# time it is good until), the Idempotency-Key claim, the record, the index and the first
# event. Nothing is written when the lane is dead or the key was already claimed.
_CREATE = """
if redis.call('ZCOUNT', KEYS[1], ARGV[1], '+inf') == 0 then return {'no-lane'} end
if KEYS[5] ~= '' then
  if not redis.call('SET', KEYS[5], ARGV[6], 'NX', 'EX', ARGV[7]) then
    return {'claimed', redis.call('GET', KEYS[5])}
  end
end
redis.call('HSET', KEYS[2], unpack(ARGV, 9))
redis.call('EXPIRE', KEYS[2], ARGV[2])
redis.call('ZADD', KEYS[3], 0, ARGV[3])
redis.call('HSET', KEYS[6], ARGV[3], ARGV[8])
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[5], '*', 'type', 'state', 'data', ARGV[4])
redis.call('EXPIRE', KEYS[4], ARGV[2])
return {'created'}
"""


@dataclass(frozen=True)
class Claim:
    """An Idempotency-Key claim to make with a job: the Redis key, what it holds, its TTL."""

    key: str
    value: str
    ttl: int


def job_key(job_id: str, host: str | None = None) -> str:
    """A job's record: under its host's prefix (all an agent may touch), or ``dy:job:``."""
    return f"{PREFIX}h:{host}:job:{job_id}" if host else f"{PREFIX}job:{job_id}"


def events_key(job_id: str, host: str | None = None) -> str:
    return job_key(job_id, host) + ":events"


# A job's record when only its id is known: its host from HOST_INDEX, then the record,
# in one round trip. Returns {host, field, value, ...}.
_GET = """
local host = redis.call('HGET', KEYS[1], ARGV[1])
local key = 'dy:job:' .. ARGV[1]
if host and host ~= '' then key = 'dy:h:' .. host .. ':job:' .. ARGV[1] end
local fields = redis.call('HGETALL', key)
table.insert(fields, 1, host or '')
return fields
"""
_HOST_CACHE_SIZE = 100_000


@dataclass(frozen=True)
class Transition:
    applied: bool
    previous: str | None


class JobStore:
    """Redis-backed job records.

    Each job is a hash ``dy:job:<id>``; ``dy:jobs`` is a lexically ordered index of
    ids (ULIDs sort by time), and ``dy:job:<id>:events`` a stream of its events.
    """

    def __init__(self, client: redis.Redis, retention_seconds: int, agent_host: str = "") -> None:
        self.redis = client
        self.retention = retention_seconds
        # An agent reaches only its own host's jobs, and may not read HOST_INDEX.
        self.agent_host = agent_host
        self._hosts: dict[str, str] = {}
        self._transition = client.register_script(_TRANSITION)
        self._create = client.register_script(_CREATE)
        self._get = client.register_script(_GET)

    # -- where a job's keys live ------------------------------------------------------

    def host_of(self, job_id: str) -> str:
        """The job's host ("" for none); an id's host never changes, so it is cached."""
        host = self._hosts.get(job_id)
        if host is None and self.agent_host:
            return self.agent_host
        if host is None:
            host = self.redis.hget(HOST_INDEX, job_id)
            if host is None:
                return ""  # unknown (or written before HOST_INDEX): the unscoped keys
            self._remember(job_id, host)
        return host

    def _remember(self, job_id: str, host: str) -> None:
        if len(self._hosts) >= _HOST_CACHE_SIZE:
            self._hosts.clear()
        self._hosts[job_id] = host

    def keys(self, job_id: str) -> tuple[str, str]:
        """(record, events) keys of a job."""
        host = self.host_of(job_id)
        return job_key(job_id, host), events_key(job_id, host)

    # -- creation ---------------------------------------------------------------------

    def new_record(self, kind: str, host: str | None, target: str | None,
                   requested_by: str, token_id: str, queue: str,
                   parent: str | None = None, spool: str | None = None) -> dict[str, Any]:
        """A queued job's record; ``spool`` is the upload it consumes, if any."""
        return {
            "id": new_id(), "kind": kind, "state": QUEUED, "host": host or "",
            "target": target or "", "progress": None, "result": None, "error": None,
            "created_at": utcnow(), "started_at": "", "finished_at": "",
            "requested_by": requested_by, "token_id": token_id, "queue": queue,
            "cancel_requested": "0", "parent": parent or "", "spool": spool or "",
        }

    def add_to_pipeline(self, pipe: redis.client.Pipeline, record: dict[str, Any]) -> None:
        """Queue the writes that create ``record`` on a pipeline the caller executes."""
        host = record.get("host") or ""
        key, events = job_key(record["id"], host), events_key(record["id"], host)
        pipe.hset(key, mapping=_encode(record))
        pipe.expire(key, self.retention)
        pipe.zadd(_INDEX, {record["id"]: 0})
        pipe.hset(HOST_INDEX, record["id"], host)
        pipe.xadd(events, {"type": "state", "data": json.dumps({"state": QUEUED})},
                  maxlen=_EVENTS_MAXLEN, approximate=True)
        pipe.expire(events, self.retention)

    def create(self, record: dict[str, Any], lane: str, claim: Claim | None) -> tuple[str, str | None]:
        """Write ``record`` if the lane (a heartbeat key) is live and ``claim`` is free.

        Returns:
            ("created", None); ("no-lane", None) and nothing written; or ("claimed", the
            value the key already holds) and nothing written.
        """
        host = record.get("host") or ""
        keys = [lane, job_key(record["id"], host), _INDEX, events_key(record["id"], host),
                claim.key if claim else "", HOST_INDEX]
        fields = [item for pair in _encode(record).items() for item in pair]
        args = [time.time(), self.retention, record["id"], json.dumps({"state": QUEUED}),
                _EVENTS_MAXLEN, claim.value if claim else "", claim.ttl if claim else 0, host,
                *fields]
        outcome = self._create(keys=keys, args=args)
        return outcome[0], (outcome[1] if len(outcome) > 1 else None)

    # -- reads ------------------------------------------------------------------------

    def get(self, job_id: str) -> dict[str, Any]:
        if job_id in self._hosts or self.agent_host:
            raw = self.redis.hgetall(self.keys(job_id)[0])
        else:
            host, *flat = self._get(keys=[HOST_INDEX], args=[job_id])
            raw = dict(zip(flat[::2], flat[1::2], strict=True))
            if raw:
                self._remember(job_id, host)
        if not raw:
            raise NotFoundError(f"no job '{job_id}'")
        return _decode(raw)

    def list(self, *, state: str | None = None, kind: str | None = None,
             host: str | None = None, visible: Callable[[dict], bool] | None = None,
             limit: int = 50, cursor: str | None = None) -> tuple[list[dict], str | None]:
        """Newest first. Returns the page and the cursor of the next page (or None).

        ``visible`` keeps only the records it is true for (the caller's view, say).
        """
        found: list[dict] = []
        upper = f"({cursor}" if cursor else "+"
        scanned = 0
        while len(found) < limit and scanned < 20000:
            ids = self.redis.zrevrangebylex(_INDEX, upper, "-", start=0, num=200)
            if not ids:
                return found, None
            scanned += len(ids)
            pipe = self.redis.pipeline(transaction=False)
            for job_id, job_host in zip(ids, self.redis.hmget(HOST_INDEX, ids), strict=True):
                pipe.hgetall(job_key(job_id, job_host))
            gone = []
            for job_id, raw in zip(ids, pipe.execute(), strict=True):
                if not raw:
                    gone.append(job_id)
                    continue
                record = _decode(raw)
                if _matches(record, state, kind, host) and (visible is None or visible(record)):
                    found.append(record)
                    if len(found) == limit:
                        return found, job_id
            if gone:
                self.redis.zrem(_INDEX, *gone)
                self.redis.hdel(HOST_INDEX, *gone)
            upper = f"({ids[-1]}"
        return found, (found[-1]["id"] if found else None)

    def prune_index(self, batch: int = 500) -> int:
        """Drop ids of expired job records from the index; returns how many went."""
        removed, lower = 0, "-"
        while True:
            ids = self.redis.zrangebylex(_INDEX, lower, "+", start=0, num=batch)
            if not ids:
                return removed
            pipe = self.redis.pipeline(transaction=False)
            for job_id, job_host in zip(ids, self.redis.hmget(HOST_INDEX, ids), strict=True):
                pipe.exists(job_key(job_id, job_host))
            gone = [j for j, alive in zip(ids, pipe.execute(), strict=True) if not alive]
            if gone:
                removed += self.redis.zrem(_INDEX, *gone)
                self.redis.hdel(HOST_INDEX, *gone)
            lower = f"({ids[-1]}"

    def last_event_id(self, job_id: str) -> str:
        last = self.redis.xrevrange(self.keys(job_id)[1], count=1)
        return last[0][0] if last else "0-0"

    def read_events(self, job_id: str, after: str, block_ms: int | None,
                    count: int = 100) -> list[tuple[str, dict[str, str]]]:
        reply = self.redis.xread({self.keys(job_id)[1]: after}, count=count, block=block_ms)
        return reply[0][1] if reply else []

    def wait_final(self, job_id: str, timeout: float) -> dict[str, Any]:
        """The job, once final or when ``timeout`` seconds have passed."""
        after = self.last_event_id(job_id)
        record = self.get(job_id)
        deadline = time.monotonic() + timeout
        while record["state"] not in FINAL_STATES:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            events = self.read_events(job_id, after, block_ms=max(1, int(remaining * 1000)))
            if not events:
                break
            after = events[-1][0]
            if any(fields.get("type") == "state" for _, fields in events):
                record = self.get(job_id)
        return record

    # -- writes from workers ----------------------------------------------------------

    def transition(self, job_id: str, allowed: tuple[str, ...], new_state: str,
                   event: dict[str, Any] | None = None, **fields: Any) -> Transition:
        """Move a job to ``new_state`` if its current state is one of ``allowed``."""
        argv: list[Any] = [",".join(allowed), new_state,
                           json.dumps(event or {"state": new_state}), _EVENTS_MAXLEN]
        for name, value in _encode(fields).items():
            argv.extend((name, value))
        code, previous = self._transition(keys=list(self.keys(job_id)), args=argv)
        if code == -1:
            raise NotFoundError(f"no job '{job_id}'")
        return Transition(bool(code), previous or None)

    def aggregate_parent(self, parent_id: str) -> None:
        """Fold the children's states into a fan-out parent; finish it when all are final.

        Called by each child as it ends; concurrent calls are safe because the final
        transition applies once.
        """
        self._remember(parent_id, "")  # a fan-out parent has no host
        parent = self.get(parent_id)
        children = parent.get("children") or []
        if children:
            for child_id, child_host in zip(children, self.redis.hmget(HOST_INDEX, children),
                                            strict=True):
                self._remember(child_id, child_host or "")
        pipe = self.redis.pipeline(transaction=False)
        for child_id in children:
            pipe.hmget(self.keys(child_id)[0], "state", "host", "result", "error")
        outcomes = []
        for child_id, (state, host, result, error) in zip(children, pipe.execute(), strict=True):
            outcomes.append({"job": child_id, "host": host, "state": state,
                             "result": json.loads(result) if result else None,
                             "error": json.loads(error) if error else None})
        done = sum(1 for o in outcomes if o["state"] in FINAL_STATES)
        self.set_progress(parent_id, {"done": done, "total": len(children), "unit": "hosts",
                                      "message": f"{done} of {len(children)} hosts finished"})
        if done < len(children):
            return
        failed = [o for o in outcomes if o["state"] != SUCCEEDED]
        result = {"children": outcomes}
        if failed:
            error = {"type": "https://dockyard.dev/problems/fan-out-failed",
                     "title": "Some hosts failed", "status": 502,
                     "detail": f"{len(failed)} of {len(children)} hosts did not succeed: "
                               + ", ".join(f"{o['host']} ({o['state']})" for o in failed)}
            self.transition(parent_id, (RUNNING,), FAILED,
                            event={"state": FAILED, "error": error}, result=result, error=error,
                            finished_at=utcnow())
        else:
            self.transition(parent_id, (RUNNING,), SUCCEEDED, event={"state": SUCCEEDED},
                            result=result, finished_at=utcnow())

    def set_progress(self, job_id: str, progress: dict[str, Any]) -> None:
        key, events = self.keys(job_id)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(key, "progress", json.dumps(progress))
        pipe.xadd(events, {"type": "progress", "data": json.dumps(progress)},
                  maxlen=_EVENTS_MAXLEN, approximate=True)
        pipe.execute()

    def add_event(self, job_id: str, kind: str, data: dict[str, Any]) -> None:
        self.redis.xadd(self.keys(job_id)[1], {"type": kind, "data": json.dumps(data)},
                        maxlen=_EVENTS_MAXLEN, approximate=True)

    def cancel_requested(self, job_id: str) -> bool:
        return self.redis.hget(self.keys(job_id)[0], "cancel_requested") == "1"

    # -- cancel from the API ----------------------------------------------------------

    def notify_parent(self, job_id: str) -> None:
        """If ``job_id`` is a fan-out child, update its parent."""
        parent = self.redis.hget(self.keys(job_id)[0], "parent")
        if parent:
            self.aggregate_parent(parent)

    def request_cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel a queued job now; ask a running one to stop at its next checkpoint.

        Cancelling a fan-out parent cancels each of its children.
        """
        children = self.get(job_id).get("children")
        if children:
            if self.get(job_id)["state"] in FINAL_STATES:
                raise ConflictError(f"job '{job_id}' already {self.get(job_id)['state']}")
            self.redis.hset(self.keys(job_id)[0], "cancel_requested", "1")
            for child in children:
                with contextlib.suppress(ConflictError):  # that child had already finished
                    self.request_cancel(child)
            return self.get(job_id)
        outcome = self.transition(job_id, (QUEUED,), CANCELLED,
                                  event={"state": CANCELLED}, finished_at=utcnow(),
                                  cancel_requested="1")
        if not outcome.applied:
            if outcome.previous in FINAL_STATES:
                raise ConflictError(f"job '{job_id}' already {outcome.previous}")
            self.redis.hset(self.keys(job_id)[0], "cancel_requested", "1")
            self.add_event(job_id, "log", {"message": "cancellation requested"})
        else:
            discard_spool(self.get(job_id))
            self.notify_parent(job_id)
        return self.get(job_id)


class IdempotencyStore:
    """Maps (token, Idempotency-Key) to the job the first request created."""

    def __init__(self, client: redis.Redis, retention_seconds: int) -> None:
        self.redis = client
        self.retention = retention_seconds

    @staticmethod
    def fingerprint(method: str, path: str, body: Any) -> str:
        canonical = json.dumps([method, path, body], sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def _key(self, token_id: str, key: str) -> str:
        if not key or len(key) > 255:
            raise InvalidInputError("Idempotency-Key must be 1-255 characters",
                                    errors={"Idempotency-Key": ["length must be 1-255"]})
        return f"{PREFIX}idem:{token_id}:{hashlib.sha256(key.encode()).hexdigest()}"

    def lookup(self, token_id: str, key: str, fingerprint: str) -> str | None:
        """The job an earlier request with this key created, if any.

        Raises:
            InvalidInputError: the key was used with a different request.
        """
        raw = self.redis.get(self._key(token_id, key))
        if raw is None:
            return None
        return self._check(json.loads(raw), fingerprint)

    @staticmethod
    def _check(earlier: dict[str, str], fingerprint: str) -> str:
        if earlier["fp"] != fingerprint:
            raise InvalidInputError(
                "Idempotency-Key was already used with a different request",
                errors={"Idempotency-Key": ["already used with a different request"]})
        return earlier["job"]

    def claim_for(self, token_id: str, key: str, fingerprint: str, job_id: str) -> Claim:
        """The claim ``JobStore.create`` makes with the job (see ``claim``)."""
        return Claim(self._key(token_id, key), json.dumps({"job": job_id, "fp": fingerprint}),
                     self.retention)

    def earlier_job(self, held: str, fingerprint: str) -> str:
        """The job id a claimed key holds.

        Raises:
            InvalidInputError: the key was used with a different request.
        """
        return self._check(json.loads(held), fingerprint)

    def claim(self, token_id: str, key: str, fingerprint: str, job_id: str) -> str | None:
        """Claim ``key`` for ``job_id``; returns the earlier job id if the key was used.

        Raises:
            InvalidInputError: the key was used with a different request.
        """
        redis_key = self._key(token_id, key)
        value = json.dumps({"job": job_id, "fp": fingerprint})
        if self.redis.set(redis_key, value, nx=True, ex=self.retention):
            return None
        return self._check(json.loads(self.redis.get(redis_key) or value), fingerprint)


def public_view(record: dict[str, Any]) -> dict[str, Any]:
    """The job as the API shows it."""
    job_id = record["id"]
    return {
        "id": job_id, "kind": record["kind"], "state": record["state"],
        "host": record.get("host") or None, "target": record.get("target") or None,
        "progress": record.get("progress"), "result": record.get("result"),
        "error": record.get("error"),
        "created_at": record.get("created_at") or None,
        "started_at": record.get("started_at") or None,
        "finished_at": record.get("finished_at") or None,
        "requested_by": record.get("requested_by") or None,
        "cancel_requested": record.get("cancel_requested") == "1",
        "parent": record.get("parent") or None,
        "children": record.get("children") or None,
        "links": {"self": f"/api/v1/jobs/{job_id}", "events": f"/api/v1/jobs/{job_id}/events"},
    }


def discard_spool(record: dict[str, Any]) -> None:
    """Delete the upload a job was given, once it is sure never to run (cancelled while queued).

    Only a file named like ``spool_upload`` names them, in a ``spool`` folder, is removed.
    """
    spool = record.get("spool")
    if not spool:
        return
    path = Path(spool)
    if path.is_absolute() and path.parent.name == "spool" and path.suffix == ".tar":
        path.unlink(missing_ok=True)


def visible_to(record: dict[str, Any], caller: Principal) -> bool:
    """Whether ``caller`` may see (read, stream, cancel) a job.

    A job on a host is visible to every token that may see that host. A job without one
    (registry work, a fan-out parent, anything with ``host: null``) may concern any host,
    so only unscoped admins and the token that created it see it.
    """
    host = record.get("host")
    if host:
        return caller.may_see_host(host)
    if caller.role == "admin" and caller.hosts is None:
        return True
    return bool(record.get("token_id")) and record.get("token_id") == caller.token_id


def _matches(record: dict, state: str | None, kind: str | None, host: str | None) -> bool:
    if state and record["state"] != state:
        return False
    if kind and record["kind"] != kind:
        return False
    return not (host and record.get("host") != host)


def _encode(fields: dict[str, Any]) -> dict[str, str]:
    out = {}
    for name, value in fields.items():
        if name in _JSON_FIELDS:
            out[name] = json.dumps(value)
        else:
            out[name] = "" if value is None else str(value)
    return out


def _decode(raw: dict[str, str]) -> dict[str, Any]:
    record: dict[str, Any] = dict(raw)
    for name in _JSON_FIELDS:
        if name in record:
            record[name] = json.loads(record[name]) if record[name] else None
    return record
