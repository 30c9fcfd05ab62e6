"""A job submission's rate-limit charge and audit entry, made by its job script.

A container view marked ``charged_by_job`` leaves its request's charge and its 202's audit
entry to the job script (one Redis round trip); every other way out of the request is
charged by the hooks instead. Each request must be charged exactly once and audited
exactly once, with the same entry the hook writes.

The limiter's counters (one per token, class and second) are set for the next two minutes
before each request, so what a request is answered tells how often it was charged without
depending on the clock: seeded at limit - 1, a request charged twice would be refused;
seeded at the limit, a request charged at all is refused. The jobs go to an agent-routed
host whose ops lane has a fake heartbeat and no worker: no engine is touched.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from tests.integration.conftest import Api

LIMIT = 5


@pytest.fixture
def sink(admin: Api, test_redis: redis.Redis) -> Iterator[str]:
    name = "fold-" + uuid.uuid4().hex[:8]
    created = admin.post("/hosts", json={"name": name, "url": os.environ["DOCKER_HOST"],
                                         "route": "agent"})
    assert created.status_code == 201, created.text
    test_redis.zadd(f"dy:lane:host.{name}.ops", {"fake-worker": time.time() + 600})
    yield name
    test_redis.delete(f"dy:lane:host.{name}.ops", f"host.{name}.ops")
    for job_id, host in test_redis.hgetall("dy:jobs:host").items():
        if host == name:
            test_redis.delete(f"dy:h:{name}:job:{job_id}", f"dy:h:{name}:job:{job_id}:events")
            test_redis.zrem("dy:jobs", job_id)
            test_redis.hdel("dy:jobs:host", job_id)
    assert admin.delete(f"/hosts/{name}").status_code == 204


@pytest.fixture
def limited(admin: Api) -> tuple[Api, str]:
    created = admin.post("/tokens", json={"name": "fold-" + uuid.uuid4().hex[:6],
                                          "role": "operator", "rate_limit": {"ops": LIMIT}})
    assert created.status_code == 201, created.text
    return Api(admin.base.removesuffix("/api/v1"), created.json()["token"]), created.json()["id"]


def seed(test_redis: redis.Redis, token_id: str, value: int) -> None:
    now = int(time.time())
    with test_redis.pipeline() as pipe:
        for window in range(now - 1, now + 120):
            pipe.set(f"dy:rl:{token_id}:ops:{window}", value, ex=180)
        pipe.execute()


def queued(test_redis: redis.Redis, host: str) -> int:
    return test_redis.llen(f"host.{host}.ops")


def entries_of(admin: Api, token_id: str) -> list[dict]:
    return [e for e in admin.get("/audit", params={"limit": 200}).json()["items"]
            if e["token_id"] == token_id]


# One job route of each kind (method, path under the host, JSON body or None): each is
# answered 202 without touching an engine (the sink host has no worker).
ROUTES = {
    "container start": ("POST", "containers/web/start", None),
    "container commit": ("POST", "containers/web/commit", {"repository": "fold/commit"}),
    "image tag": ("POST", "images/busybox:latest/tag", {"repository": "fold/tagged"}),
    "image pull": ("POST", "images/pull", {"image": "127.0.0.1:5000/fold/pulled:1"}),
    "image prune": ("POST", "images/prune", {}),
    "image rm": ("DELETE", "images/fold/gone:1", None),
    "volume create": ("POST", "volumes", {"labels": {"team": "fold"}}),
    "volume prune": ("POST", "volumes/prune", {}),
    "volume rm": ("DELETE", "volumes/fold-gone", None),
}


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_a_submission_is_charged_once_in_its_job_script(route, limited, sink, test_redis, admin):
    http, token_id = limited
    method, path, body = ROUTES[route]
    seed(test_redis, token_id, LIMIT - 1)
    accepted = http.request(method, f"/hosts/{sink}/{path}", json=body)
    assert accepted.status_code == 202, accepted.text  # charged twice would be the 6th
    assert queued(test_redis, sink) == 1

    seed(test_redis, token_id, LIMIT)
    refused = http.request(method, f"/hosts/{sink}/{path}", json=body)
    assert refused.status_code == 429, refused.text
    assert refused.headers["Retry-After"].isdigit()
    assert refused.json()["status"] == 429
    assert queued(test_redis, sink) == 1  # nothing written: no message, no record
    jobs = [j for j, h in test_redis.hgetall("dy:jobs:host").items() if h == sink]
    assert jobs == [accepted.json()["id"]]

    entries = entries_of(admin, token_id)
    assert sorted(e["status"] for e in entries) == [202, 429]
    assert [e["job_id"] for e in entries if e["status"] == 202] == [accepted.json()["id"]]


@pytest.mark.parametrize("how", ["invalid body", "no lane", "idempotency key", "other scope"])
def test_a_submission_that_leaves_before_or_beside_the_script_is_charged_once(
        how, limited, sink, test_redis, admin, make_token):
    http, token_id = limited
    path, kwargs, status = f"/hosts/{sink}/containers/web/stop", {"json": {"timeout": 1}}, 202
    if how == "invalid body":
        kwargs, status = {"json": {"timeout": "soon"}}, 422
    elif how == "no lane":
        test_redis.delete(f"dy:lane:host.{sink}.ops")
        status = 503
    elif how == "idempotency key":
        kwargs["headers"] = {"Idempotency-Key": uuid.uuid4().hex}
    else:
        path = "/hosts/no-such-host-in-scope/containers/web/stop"
        status = 404
    seed(test_redis, token_id, LIMIT - 1)
    first = http.post(path, **kwargs)
    assert first.status_code == status, first.text  # not refused: charged once, not twice
    seed(test_redis, token_id, LIMIT)
    second = http.post(path, **kwargs)
    assert second.status_code == 429, second.text  # charged: refused as before the view ran
    assert queued(test_redis, sink) == (1 if status == 202 else 0)
    entries = entries_of(admin, token_id)
    assert sorted(e["status"] for e in entries) == sorted([status, 429])


def test_the_scripts_audit_entry_is_the_hooks_entry(operator, sink, admin):
    """A submission the script audits and one the hook audits (an Idempotency-Key keeps
    the script from writing it) give the same entry but for what belongs to one request."""
    path = f"/hosts/{sink}/containers/web/kill"
    body = {"signal": "SIGTERM"}
    folded = operator.post(path, params={"debug": "1"}, json=body)
    hooked = operator.post(path, params={"debug": "1"}, json=body,
                           headers={"Idempotency-Key": uuid.uuid4().hex})
    assert folded.status_code == hooked.status_code == 202
    ids = {folded.json()["id"], hooked.json()["id"]}
    entries = [e for e in admin.get("/audit", params={"limit": 200}).json()["items"]
               if e.get("job_id") in ids]
    assert len(entries) == 2, entries  # one each, never both ways
    by_job = {e["job_id"]: e for e in entries}
    own = ("id", "ts", "request_id", "job_id")
    first, second = ({k: v for k, v in by_job[job].items() if k not in own}
                     for job in (folded.json()["id"], hooked.json()["id"]))
    assert first == second
    assert first["status"] == 202 and first["outcome"] == "ok" and first["target"] == "web"
    assert first["request"] == {"query": {"debug": ["1"]}, "body": body}
    assert json.dumps(sorted(by_job[folded.json()["id"]])) == json.dumps(
        sorted(by_job[hooked.json()["id"]]))


# -- the cached host record, checked by the job script -------------------------------------
# Each API process caches the host records its submissions use; the submissions below first
# fill every process's cache (WARM requests over the pooled connections), then the host is
# changed through the API, and the next submission must see the change.

WARM = 12


def warm(operator: Api, host: str) -> list[str]:
    jobs = []
    for _ in range(WARM):
        answer = operator.post(f"/hosts/{host}/containers/web/start")
        assert answer.status_code == 202, answer.text
        jobs.append(answer.json()["id"])
    return jobs


def test_a_deleted_host_is_404_to_a_submission_after_its_record_was_cached(
        operator, admin, sink, test_redis):
    warm(operator, sink)
    before = queued(test_redis, sink)
    assert admin.delete(f"/hosts/{sink}").status_code == 204
    try:
        for path in ("start", "stop"):
            gone = operator.post(f"/hosts/{sink}/containers/web/{path}")
            assert gone.status_code == 404, gone.text
        # rename's precheck is a query: the cached record is confirmed before it is used
        renamed = operator.post(f"/hosts/{sink}/containers/web/rename", json={"name": "w2"})
        assert renamed.status_code == 404, renamed.text
        assert queued(test_redis, sink) == before
    finally:
        assert admin.post("/hosts", json={"name": sink, "url": os.environ["DOCKER_HOST"],
                                          "route": "agent"}).status_code == 201


def test_a_patched_host_is_used_as_patched_after_its_record_was_cached(
        operator, admin, sink, test_redis):
    warm(operator, sink)
    changed = admin.patch(f"/hosts/{sink}", json={"labels": {"moved": "yes"}})
    assert changed.status_code == 200, changed.text
    again = operator.post(f"/hosts/{sink}/containers/web/start")
    assert again.status_code == 202, again.text  # the script refused the old one: retried
    # A route change moves the host's jobs to the central queue, served by the stack's
    # worker (the container does not exist: the job fails at its first engine call).
    before = queued(test_redis, sink)
    moved = admin.patch(f"/hosts/{sink}", json={"route": "central"})
    assert moved.status_code == 200, moved.text
    missing = "dyt-missing-" + uuid.uuid4().hex[:8]
    central = operator.post(f"/hosts/{sink}/containers/{missing}/start")
    assert central.status_code == 202, central.text
    job_id = central.json()["id"]
    assert test_redis.hget(f"dy:h:{sink}:job:{job_id}", "queue") == "engine.ops"
    assert queued(test_redis, sink) == before
    assert operator.wait_job(job_id)["state"] == "failed"


def test_the_job_script_is_loaded_again_when_redis_lost_it(test_redis):
    """EVALSHA straight away; NOSCRIPT (a restarted Redis) loads it and runs it once more.
    (A script this Redis does not hold is simulated by a store whose digest is unknown, not
    by SCRIPT FLUSH, which would reach every database of the shared server.)"""
    from app.jobs.dispatch import lane_key
    from app.jobs.records import JobStore

    store = JobStore(test_redis, 60)
    real = store._create.sha
    store._create.sha = "0" * 40
    record = store.new_record("containers.action", None, "x", "t", "t", "fold.none")
    assert store.create(record, lane_key("fold.none"), None) == ("no-lane", None)
    assert store._create.sha == real
    assert not test_redis.exists(f"dy:job:{record['id']}")
