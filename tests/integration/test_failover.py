"""No accepted job lost or run twice: the sweeper's rescues, and a real-process failover.

The sweeper tests drive ``handoff.sweep`` with an explicit clock against the suite's
Redis and a queue no worker consumes, so every step is decided, not raced.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import pytest
import redis
from celery import Celery

from app import handoff
from app.celery import make_celery
from app.config import Settings
from app.dispatch import lane_key
from app.jobs import Claim, JobStore, events_key
from tests.integration.conftest import SECRET_KEY, STACK_REDIS_URL, TEST_REDIS_URL

CALLER = {"id": "t-operator", "name": "test-operator", "role": "operator", "hosts": None}


@pytest.fixture(scope="module")
def store() -> JobStore:
    return JobStore(redis.Redis.from_url(TEST_REDIS_URL, decode_responses=True), 3600)


@pytest.fixture(scope="module")
def api_celery() -> Iterator[Celery]:
    app = make_celery(Settings(redis_url=STACK_REDIS_URL, secret_key=SECRET_KEY))
    yield app
    app.close()


@pytest.fixture
def lone_queue(store: JobStore) -> Iterator[str]:
    """A queue with a live lane and no consumer: messages wait there until a test pops them."""
    queue = f"host.dyt-{uuid.uuid4().hex[:8]}.ops"
    store.redis.zadd(lane_key(queue), {"dyt-fake-worker": time.time() + 3600})
    yield queue
    store.redis.delete(lane_key(queue), queue)


def _queue_job(store: JobStore, celery: Celery, queue: str) -> tuple[dict, str]:
    host = queue.split(".")[1]
    record = store.new_record("containers.action", host, "x", "dyt", "dyt-token", queue)
    message = handoff.broker_message(celery, "containers.action",
                                     [record["id"], host, "x", "stop", {}, CALLER], queue,
                                     record["id"])
    assert store.create(record, lane_key(queue), None, message) == ("created", None)
    return record, message[2]


def _final_events(store: JobStore, job_id: str) -> list[str]:
    states = [json.loads(fields["data"])["state"] for _, fields in
              store.redis.xrange(events_key(job_id)) if fields["type"] == "state"]
    return [s for s in states if s in ("succeeded", "failed", "cancelled")]


def test_the_job_script_writes_record_message_and_copy_together(store, api_celery, lone_queue):
    record, tag = _queue_job(store, api_celery, lone_queue)
    queued = store.redis.lrange(lone_queue, 0, -1)
    assert [json.loads(m)["properties"]["delivery_tag"] for m in queued] == [tag]
    kept = json.loads(store.redis.hget(handoff.MESSAGES, record["id"]))
    assert kept == {"queue": lone_queue, "tag": tag, "message": queued[0], "sent": 1}
    assert store.redis.zscore(handoff.INFLIGHT, record["id"]) is not None
    # A claimed Idempotency-Key writes nothing, pushes nothing.
    claim = Claim(f"dy:idem:dyt:{uuid.uuid4().hex}", json.dumps({"job": record["id"]}), 60)
    store.redis.set(claim.key, claim.value)
    other = store.new_record("containers.action", "h", "x", "dyt", "dyt-token", lone_queue)
    message = handoff.broker_message(api_celery, "containers.action", [other["id"]],
                                     lone_queue, other["id"])
    assert store.create(other, lane_key(lone_queue), claim, message)[0] == "claimed"
    assert store.redis.llen(lone_queue) == 1
    assert not store.redis.exists(f"dy:job:{other['id']}")
    assert store.redis.hget(handoff.MESSAGES, other["id"]) is None
    # Ending the job drops the copy.
    store.transition(record["id"], ("queued",), "cancelled")
    assert store.redis.hget(handoff.MESSAGES, record["id"]) is None
    assert store.redis.zscore(handoff.INFLIGHT, record["id"]) is None


def test_a_message_lost_on_its_way_to_a_worker_is_sent_again_once_then_the_job_fails(
        store, api_celery, lone_queue):
    record, tag = _queue_job(store, api_celery, lone_queue)
    job_id = record["id"]
    t0 = store.redis.zscore(handoff.INFLIGHT, job_id)
    # A worker pops it and dies before kombu records the delivery: the message is gone.
    assert store.redis.rpop(lone_queue) is not None

    def sweep_at(offset: float) -> dict[str, int]:
        return handoff.sweep(store.redis, store, now=t0 + offset)

    assert sweep_at(5)["resent"] == 0  # younger than the grace period: left alone
    assert sweep_at(handoff.LOST_GRACE_SECONDS + 1)["resent"] == 0  # first sighting
    assert sweep_at(handoff.LOST_GRACE_SECONDS + 11)["resent"] == 1  # seen twice: sent again
    again = store.redis.lrange(lone_queue, 0, -1)
    assert [json.loads(m)["properties"]["delivery_tag"] for m in again] == [tag]
    assert store.get(job_id)["state"] == "queued"
    # Waiting on the queue is not lost: sweeps leave it be.
    resent_at = store.redis.zscore(handoff.INFLIGHT, job_id)
    assert handoff.sweep(store.redis, store, now=resent_at + 100) == {
        "forgotten": 0, "resent": 0, "restored": 0, "failed": 0}
    # Lost a second time: the job fails, once.
    assert store.redis.rpop(lone_queue) is not None
    assert handoff.sweep(store.redis, store, now=resent_at + 101)["failed"] == 0
    assert handoff.sweep(store.redis, store, now=resent_at + 111)["failed"] == 1
    job = store.get(job_id)
    assert job["state"] == "failed"
    assert job["error"]["type"].endswith("/lost-before-run")
    assert handoff.sweep(store.redis, store, now=resent_at + 200)["failed"] == 0
    assert _final_events(store, job_id) == ["failed"]
    assert store.redis.llen(lone_queue) == 0
    assert store.redis.hget(handoff.MESSAGES, job_id) is None


def test_a_message_taken_by_a_worker_that_died_before_starting_goes_back(
        store, api_celery, lone_queue):
    record, tag = _queue_job(store, api_celery, lone_queue)
    t0 = store.redis.zscore(handoff.INFLIGHT, record["id"])
    raw = store.redis.rpop(lone_queue)
    # What kombu records when a worker takes a message (then the worker is SIGKILLed).
    message = json.loads(raw)
    store.redis.hset(handoff.UNACKED, tag, json.dumps([message, "", lone_queue]))
    store.redis.zadd(handoff.UNACKED_INDEX, {tag: t0 + 1})
    try:
        assert handoff.sweep(store.redis, store, now=t0 + 20)["restored"] == 0
        assert handoff.sweep(store.redis, store, now=t0 + 40)["restored"] == 1
        back = [json.loads(m) for m in store.redis.lrange(lone_queue, 0, -1)]
        assert [m["properties"]["delivery_tag"] for m in back] == [tag]
        assert back[0]["headers"]["redelivered"] is True
        assert back[0]["body"] == message["body"]
        assert not store.redis.hexists(handoff.UNACKED, tag)
        assert store.get(record["id"])["state"] == "queued"
    finally:
        store.redis.hdel(handoff.UNACKED, tag)
        store.redis.zrem(handoff.UNACKED_INDEX, tag)
        store.transition(record["id"], ("queued",), "cancelled")


def test_a_running_job_whose_runner_stopped_renewing_is_sent_again_and_taken_over(
        store, api_celery, lone_queue):
    record, tag = _queue_job(store, api_celery, lone_queue)
    job_id = record["id"]
    store.redis.rpop(lone_queue)  # taken, and acknowledged by nobody: kombu lost track
    first = store.start(job_id, "dyt-runner-a", 15)
    assert (first.code, first.previous) == (1, "queued")
    # Another delivery while runner a holds a live lease: not run.
    second = store.start(job_id, "dyt-runner-b", 15)
    assert second.code == 0 and second.previous == "running" and second.lease_left > 0
    lease_until = float(store.redis.hget(f"dy:job:{job_id}", "lease_until"))
    dead = lease_until + handoff.RUNNER_DEAD_SECONDS - handoff.RUNNER_LEASE_SECONDS
    assert handoff.sweep(store.redis, store, now=dead - 1)["restored"] == 0  # lease recent
    assert handoff.sweep(store.redis, store, now=dead + 1)["restored"] == 0  # first sighting
    # Renewed in between (a runner that was cut off from Redis for a while): not dead.
    store.redis.hset(f"dy:job:{job_id}", "lease_until", str(dead + 2))
    assert handoff.sweep(store.redis, store, now=dead + 1 + handoff.RUNNER_LEASE_SECONDS
                         )["restored"] == 0
    assert store.redis.llen(lone_queue) == 0
    # Lapsed on two sweeps a lease apart: sent again.
    later = dead + 2 + handoff.RUNNER_DEAD_SECONDS
    assert handoff.sweep(store.redis, store, now=later)["restored"] == 0
    assert handoff.sweep(store.redis, store, now=later + handoff.RUNNER_LEASE_SECONDS
                         )["restored"] == 1
    assert [json.loads(m)["properties"]["delivery_tag"]
            for m in store.redis.lrange(lone_queue, 0, -1)] == [tag]
    # The lease lapsed: the next delivery takes over; a delivery after it ends does nothing.
    store.redis.hset(f"dy:job:{job_id}", "lease_until", str(time.time() - 1))
    taken = store.start(job_id, "dyt-runner-b", 15)
    assert (taken.code, taken.previous) == (2, "running")
    assert store.renew(job_id, "dyt-runner-b", 15)
    assert not store.renew(job_id, "dyt-runner-a", 15)
    store.transition(job_id, ("running",), "succeeded")
    late = store.start(job_id, "dyt-runner-c", 15)
    assert (late.code, late.previous) == (0, "succeeded")
    assert _final_events(store, job_id) == ["succeeded"]
    assert store.get(job_id)["runner"] == "dyt-runner-b"
