"""The job script publishes its own message; a message delivered twice runs once.

``broker_message`` must be what ``send_task`` publishes (else workers would refuse or
misread it), and a re-sent or redelivered message of a job that has ended must change
nothing: no container removed, no state rewritten.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery

from app.core.config import Settings
from app.jobs.celery import make_celery
from app.jobs.handoff import broker_message, queue_key
from app.jobs.records import JobStore
from tests.integration.conftest import SECRET_KEY, STACK_REDIS_URL, TEST_REDIS_URL
from tests.integration.helpers import BUSYBOX, containers_of_job, eventually, job_keys

CAPTURE = "dyt-handoff:"
CALLER = {"id": "t-operator", "name": "test-operator", "role": "operator", "hosts": None}


@pytest.fixture(scope="module")
def api_celery() -> Iterator[Celery]:
    """The API's Celery app and key, publishing under a prefix no worker reads."""
    app = make_celery(Settings(redis_url=STACK_REDIS_URL, secret_key=SECRET_KEY))
    app.conf.broker_transport_options = {**app.conf.broker_transport_options,
                                         "global_keyprefix": CAPTURE}
    yield app
    app.close()


def _published(app: Celery, client: redis.Redis, name: str, args: list[Any], queue: str,
               task_id: str) -> dict[str, Any]:
    app.send_task(name, args=args, queue=queue, task_id=task_id, argsrepr="", kwargsrepr="")
    raw = client.rpop(CAPTURE + queue)
    assert raw is not None
    return json.loads(raw)


def test_broker_message_is_what_send_task_publishes(api_celery: Celery,
                                                    test_redis: redis.Redis) -> None:
    args = ["01JOBID", "local", {"image": BUSYBOX, "name": "x", "env": {"A": "1"}}, CALLER]
    for queue in ("engine.ops", "host.dyt-remote.ops"):
        sent = _published(api_celery, test_redis, "containers.provision", args, queue,
                          "01JOBID")
        key, raw, tag = broker_message(api_celery, "containers.provision", args, queue,
                                       "01JOBID")
        built = json.loads(raw)
        assert key == queue_key(queue) == queue
        assert tag == built["properties"]["delivery_tag"] != sent["properties"]["delivery_tag"]
        assert set(built) == set(sent)
        assert set(built["headers"]) == set(sent["headers"])
        assert set(built["properties"]) == set(sent["properties"])
        for field in ("body", "content-encoding", "content-type"):
            assert built[field] == sent[field], field
        stamp = {"dockyard_signature", "dockyard_signed_at"}
        for name, value in sent["headers"].items():
            if name not in stamp:
                assert built["headers"][name] == value, name
        for name, value in sent["properties"].items():
            if name != "delivery_tag":
                assert built["properties"][name] == value, name


def test_a_resent_provision_message_of_a_finished_job_changes_nothing(
        stack, admin, engine, unique, cleanup, api_celery, test_redis) -> None:
    jobs = JobStore(redis.Redis.from_url(TEST_REDIS_URL, decode_responses=True), 3600)
    spec = {"image": BUSYBOX, "name": unique, "command": ["sleep", "300"]}
    cleanup.append(unique)
    response = admin.post("/hosts/local/containers", json=spec, params={"wait": 60})
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["state"] == "succeeded", job
    before = containers_of_job(engine, job["id"])
    assert len(before) == 1
    started_at = before[0].attrs["State"]["StartedAt"]
    record = jobs.get(job["id"])
    events = jobs.redis.xrange(job_keys(jobs.redis, job["id"])[1])
    # The same job's message again, signed with the API's key, twice: once as a re-send
    # from a kept copy would be, once marked redelivered as kombu restores it. Its spec
    # asks for a replacement, which would remove the container if the job ran again.
    again = {**spec, "replace": True}
    for redelivered in (False, True):
        key, raw, tag = broker_message(api_celery, "containers.provision",
                                       [job["id"], "local", again, CALLER], "engine.ops",
                                       job["id"])
        if redelivered:
            message = json.loads(raw)
            message["headers"]["redelivered"] = True
            raw = json.dumps(message)
        test_redis.lpush(key, raw)
        # Handled: the worker logged the skip (before it acks), then acknowledged it.
        eventually(lambda n=2 if redelivered else 1: _skips(stack, job["id"]) == n,
                   timeout=60)
        eventually(lambda tag=tag, key=key: not test_redis.hexists("unacked", tag)
                   and not any(tag in m for m in test_redis.lrange(key, 0, -1)), timeout=60)
    after = containers_of_job(engine, job["id"])
    assert [c.id for c in after] == [before[0].id]
    after[0].reload()
    assert after[0].status == "running"
    assert after[0].attrs["State"]["StartedAt"] == started_at
    assert jobs.get(job["id"]) == record
    assert jobs.redis.xrange(job_keys(jobs.redis, job["id"])[1]) == events
    assert _skips(stack, job["id"]) == 2


def _skips(stack, job_id: str) -> int:
    log = (stack.log_dir / "worker-ops.log").read_text(errors="replace")
    return log.count(f"job {job_id} skipped: it is succeeded")
