"""Job records, their state machine and their event streams, kept in Redis.

Kept whole: the job store's Lua transitions, its event streams and the idempotency keys that
point at its records are read and changed together. IdempotencyStore is the next cut
(app/jobs/idempotency.py) once the branches now changing this module have landed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from app.core.errors import ConflictError, InvalidInputError, NotFoundError
from app.core.ids import new_id
from app.core.store import PREFIX, utcnow
from app.fleet.hosts import HOSTS_KEY as HOSTS
from app.jobs.handoff import INFLIGHT, MESSAGES, NotReplicatedError, Replication, execute_replicated
from app.security.audit import MAXLEN as AUDIT_MAXLEN
from app.security.audit import STREAM as AUDIT_STREAM
from app.security.auth import Principal
from app.security.ratelimit import WINDOW_TTL as RATE_WINDOW_TTL

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = (
    "queued", "running", "succeeded", "failed", "cancelled")
FINAL_STATES = frozenset({SUCCEEDED, FAILED, CANCELLED})

logger = logging.getLogger(__name__)

_INDEX = PREFIX + "jobs"
# job id -> its host ("" for a host-less job): where the job's keys live (see job_key).
HOST_INDEX = PREFIX + "jobs:host"
_JSON_FIELDS = ("progress", "result", "error", "children")
_EVENTS_MAXLEN = 10000

# Moves a job between states atomically and records the change in its event stream,
# so a reader of the stream never sees a state the record does not have. A job that
# ends drops its kept broker message (KEYS: record, events, INFLIGHT, MESSAGES; ARGV:
# allowed, new state, event, events maxlen, job id, fields...; see app/jobs/handoff.py).
_TRANSITION = """
local cur = redis.call('HGET', KEYS[1], 'state')
if not cur then return {-1, ''} end
local allowed = false
for s in string.gmatch(ARGV[1], '[^,]+') do
  if s == cur then allowed = true end
end
if not allowed then return {0, cur} end
redis.call('HSET', KEYS[1], 'state', ARGV[2], unpack(ARGV, 6))
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'type', 'state', 'data', ARGV[3])
if KEYS[3] and (ARGV[2] == 'succeeded' or ARGV[2] == 'failed' or ARGV[2] == 'cancelled') then
  redis.call('ZREM', KEYS[3], ARGV[5])
  redis.call('HDEL', KEYS[4], ARGV[5])
end
return {1, cur}
"""

# A worker's claim on a job it received (KEYS: record, events; ARGV: runner, lease
# seconds, event JSON, events maxlen, started_at). Queued -> running, or a running job
# whose runner's lease lapsed (its worker died) taken over; anything else is not run:
# {1, 'queued'} started, {2, 'running'} taken over, {3, 'running'} already this runner's
# (a retry whose first answer was lost), {0, state, seconds the lease has left}.
_START = """
local cur = redis.call('HGET', KEYS[1], 'state')
if not cur then return {-1, ''} end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local code = 0
if cur == 'queued' then
  code = 1
elseif cur == 'running' then
  if redis.call('HGET', KEYS[1], 'runner') == ARGV[1] then return {3, cur, '0'} end
  local lease = tonumber(redis.call('HGET', KEYS[1], 'lease_until') or '0') or 0
  if lease >= now then return {0, cur, tostring(lease - now)} end
  code = 2
else
  return {0, cur, '0'}
end
local fields = {'state', 'running', 'runner', ARGV[1],
                'lease_until', tostring(now + tonumber(ARGV[2]))}
if code == 1 then
  table.insert(fields, 'started_at')
  table.insert(fields, ARGV[5])
end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'type', 'state', 'data', ARGV[3])
return {code, cur, '0'}
"""

# The runner renews its lease while the job runs; only the runner that holds it.
_RENEW = """
if redis.call('HGET', KEYS[1], 'runner') ~= ARGV[1] then return 0 end
if redis.call('HGET', KEYS[1], 'state') ~= 'running' then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('HSET', KEYS[1], 'lease_until', tostring(now + tonumber(ARGV[2])))
return 1
"""

# Creates a job in one round trip: the host record's digest (the API's cached copy is still
# the stored one), the rate-limit charge, the lane's liveness (a worker's heartbeat score is
# the time it is good until), the Idempotency-Key claim, the record, the index, the first
# event, the job's broker message (LPUSHed as kombu's Redis transport would, a copy kept
# until the job ends; see app/jobs/handoff.py) and the request's audit entry. Nothing but
# the charge is written when the lane is dead, the key was already claimed or the limit is
# passed; nothing at all when the host record changed (the caller re-reads it and retries).
# KEYS: 1 lane, 2 record, 3 index, 4 events, 5 queue list, 6 MESSAGES, 7 INFLIGHT,
#       8 HOST_INDEX, 9 rate-limit counter, 10 audit stream, 11 hosts hash,
#       12 Idempotency-Key (optional)
# ARGV: 1 now, 2 retention, 3 job id, 4 first event, 5 events maxlen, 6 claim value,
#       7 claim ttl, 8 message ('' to push none), 9 kept copy ('' to keep none: an agent's
#       job, which the sweeper cannot see), 10 host, 11 rate limit (0: no charge here),
#       12 counter ttl, 13 audit entry ('' for none), 14 audit maxlen, 15 host whose record
#       is checked ('' for none), 16 its record's SHA-1, 17... record fields
_CREATE = """
if ARGV[15] ~= '' then
  local raw = redis.call('HGET', KEYS[11], ARGV[15])
  if (not raw) or redis.sha1hex(raw) ~= ARGV[16] then return {'stale-host'} end
end
local limit = tonumber(ARGV[11])
if limit > 0 then
  local count = redis.call('INCR', KEYS[9])
  redis.call('EXPIRE', KEYS[9], ARGV[12])
  if count > limit then return {'limited'} end
end
if redis.call('ZCOUNT', KEYS[1], ARGV[1], '+inf') == 0 then return {'no-lane'} end
if KEYS[12] then
  if not redis.call('SET', KEYS[12], ARGV[6], 'NX', 'EX', ARGV[7]) then
    return {'claimed', redis.call('GET', KEYS[12])}
  end
end
redis.call('HSET', KEYS[2], unpack(ARGV, 17))
redis.call('EXPIRE', KEYS[2], ARGV[2])
redis.call('ZADD', KEYS[3], 0, ARGV[3])
redis.call('HSET', KEYS[8], ARGV[3], ARGV[10])
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[5], '*', 'type', 'state', 'data', ARGV[4])
redis.call('EXPIRE', KEYS[4], ARGV[2])
if ARGV[9] ~= '' then
  redis.call('HSET', KEYS[6], ARGV[3], ARGV[9])
  redis.call('ZADD', KEYS[7], ARGV[1], ARGV[3])
end
if ARGV[8] ~= '' then
  redis.call('LPUSH', KEYS[5], ARGV[8])
end
if ARGV[13] ~= '' then
  redis.call('XADD', KEYS[10], 'MAXLEN', '~', ARGV[14], '*', 'entry', ARGV[13])
end
return {'created'}
"""


@dataclass
class CreateExtras:
    """What a submission folds into its job script besides the job.

    ``host_check``: (host name, SHA-1 of its stored record) the caller used, or None;
    ``rate_key``/``rate_limit``: the limiter's counter to charge and its limit (0: none);
    ``audit_entry``: the JSON audit entry of the 202 answer ('' for none). ``audited`` is
    set by ``JobStore.create``: whether the entry was written.
    """

    host_check: tuple[str, str] | None = None
    rate_key: str = ""
    rate_limit: int = 0
    audit_entry: str = ""
    audited: bool = False


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


@dataclass(frozen=True)
class Start:
    """What ``JobStore.start`` did: 1 started, 2 took over from a dead runner, 3 it was this
    runner's already, 0 none of these (not to be run)."""

    code: int
    previous: str | None
    lease_left: float


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
        self._start = client.register_script(_START)
        self._renew = client.register_script(_RENEW)
        # Set by the runtime: the WAIT every job write that must survive a failover makes.
        self.replication: Replication | None = None

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

    def create(self, record: dict[str, Any], lane: str, claim: Claim | None,
               message: tuple[str, str, str] | None = None,
               keep: bool = True, extras: CreateExtras | None = None) -> tuple[str, str | None]:
        """Write ``record`` if the lane (a heartbeat key) is live and ``claim`` is free.

        ``message`` (queue list, kombu JSON, delivery tag; see ``handoff.broker_message``)
        is pushed in the same script, so a record never exists without its message. With
        replication settings, the script is followed by a WAIT on the same connection.
        ``keep`` keeps a copy for the sweeper; an agent's job keeps none (its worker's
        Redis user cannot drop it, nor can the sweeper see the agent's deliveries).
        ``extras`` folds the request's host check, rate-limit charge and audit entry into
        the same round trip (see ``CreateExtras``); its ``audited`` says whether the entry
        was written (never when a WAIT follows: a 503 may still be answered).

        Returns:
            ("created", None); ("no-lane", None) and nothing written; ("claimed", the
            value the key already holds) and nothing written; with ``extras``,
            ("stale-host", None) and nothing written, or ("limited", None) and only the
            charge written.

        Raises:
            NotReplicatedError: created, but too few replicas confirmed it in time.
        """
        host = record.get("host") or ""
        queue_list, payload, tag = message or ("", "", "")
        replication = self.replication if message else None
        wanted = replication.wanted() if replication is not None else 0
        extras = extras or CreateExtras()
        audit_entry = extras.audit_entry if not wanted else ""
        keys = [lane, job_key(record["id"], host), _INDEX, events_key(record["id"], host),
                queue_list or lane, MESSAGES, INFLIGHT, HOST_INDEX,
                extras.rate_key or lane, AUDIT_STREAM, HOSTS]
        fields = [item for pair in _encode(record).items() for item in pair]
        kept = json.dumps({"queue": queue_list, "tag": tag, "message": payload, "sent": 1}
                          ) if message and keep else ""
        args = [time.time(), self.retention, record["id"], json.dumps({"state": QUEUED}),
                _EVENTS_MAXLEN, claim.value if claim else "", claim.ttl if claim else 0,
                payload, kept, host, extras.rate_limit, RATE_WINDOW_TTL, audit_entry,
                AUDIT_MAXLEN, extras.host_check[0] if extras.host_check else "",
                extras.host_check[1] if extras.host_check else "", *fields]
        if claim is not None:
            keys.append(claim.key)
        outcome = self._run_create(keys, args, replication, wanted)
        extras.audited = bool(audit_entry) and outcome[0] == "created"
        return outcome[0], (outcome[1] if len(outcome) > 1 else None)

    def _run_create(self, keys: list[Any], args: list[Any], replication: Replication | None,
                    wanted: int) -> list[Any]:
        # EVALSHA straight away: a pipeline running a registered script asks SCRIPT EXISTS
        # first, a round trip of its own. NOSCRIPT (a restarted or failed-over Redis) ran
        # nothing, so the script is loaded and the same call made once more.
        for attempt in (1, 2):
            pipe = self.redis.pipeline(transaction=False)
            pipe.evalsha(self._create.sha, len(keys), *keys, *args)
            try:
                return execute_replicated(pipe, replication, self.redis, wanted)[0]
            except redis.exceptions.NoScriptError:
                if attempt == 2:
                    raise
                self._create.sha = self.redis.script_load(self._create.script)
        raise AssertionError("unreachable")

    def forget_message(self, job_id: str) -> None:
        """Drop a job's kept message (it ended, or its record expired)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrem(INFLIGHT, job_id)
        pipe.hdel(MESSAGES, job_id)
        pipe.execute()

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
                           json.dumps(event or {"state": new_state}), _EVENTS_MAXLEN, job_id]
        for name, value in _encode(fields).items():
            argv.extend((name, value))
        keys = list(self.keys(job_id))
        if not self.agent_host:  # an agent's jobs keep no message (see create)
            keys += [INFLIGHT, MESSAGES]
        if new_state in FINAL_STATES and self.replication is not None:
            # A worker WAITs for a job's final state to reach a replica before it acks the
            # message: a failover must not forget an ending the broker already forgot.
            pipe = self.redis.pipeline(transaction=False)
            self._transition(keys=keys, args=argv, client=pipe)
            try:
                code, previous = execute_replicated(pipe, self.replication, self.redis)[0]
            except NotReplicatedError as exc:
                logger.warning("job %s %s, not confirmed by a replica: %s", job_id,
                               new_state, exc)
                code, previous = 1, None
        else:
            code, previous = self._transition(keys=keys, args=argv)
        if code == -1:
            raise NotFoundError(f"no job '{job_id}'")
        return Transition(bool(code), previous or None)

    def start(self, job_id: str, runner: str, lease_seconds: float) -> Start:
        """Claim a received job for ``runner``: see ``_START``.

        With replication settings the claim is WAITed for like the job's creation, so the
        job is 'running' on a replica before the operation touches anything: a failover
        then cannot hand the job to a second worker as if it had never started.
        """
        keys = list(self.keys(job_id))
        args = [runner, lease_seconds, json.dumps({"state": RUNNING}), _EVENTS_MAXLEN,
                utcnow()]
        if self.replication is not None:
            pipe = self.redis.pipeline(transaction=False)
            self._start(keys=keys, args=args, client=pipe)
            try:
                code, previous, left = execute_replicated(pipe, self.replication,
                                                          self.redis)[0]
            except NotReplicatedError as exc:
                # Written on the primary, but no replica confirmed in time: carry on (the
                # window docs/reliability.md leaves open); the record says running.
                logger.warning("job %s start not confirmed by a replica: %s", job_id, exc)
                code, previous, left = self._start(keys=keys, args=args)
        else:
            code, previous, left = self._start(keys=keys, args=args)
        if code == -1:
            raise NotFoundError(f"no job '{job_id}'")
        return Start(int(code), previous or None, float(left or 0))

    def renew(self, job_id: str, runner: str, lease_seconds: float) -> bool:
        """Extend ``runner``'s lease on a running job; False once it is not the runner."""
        return bool(self._renew(keys=[self.keys(job_id)[0]], args=[runner, lease_seconds]))

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
        self.write_progress(job_id, [progress])

    def write_progress(self, job_id: str, progresses: list[dict[str, Any]],
                       check_cancel: bool = False) -> bool:
        """Record ``progresses`` in order (the last one stays on the record), in one round
        trip with the cancel check when ``check_cancel``; answers whether a cancel was asked."""
        key, events = self.keys(job_id)
        pipe = self.redis.pipeline(transaction=False)
        for progress in progresses:
            data = json.dumps(progress)
            pipe.hset(key, "progress", data)
            pipe.xadd(events, {"type": "progress", "data": data},
                      maxlen=_EVENTS_MAXLEN, approximate=True)
        if check_cancel:
            pipe.hget(key, "cancel_requested")
        answers = pipe.execute()
        return check_cancel and answers[-1] == "1"

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
