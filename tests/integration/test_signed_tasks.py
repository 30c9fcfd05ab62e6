"""Workers run only task messages the API signed: forged, altered, misrouted ones are refused."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from typing import Any

import docker
import pytest
import redis
from celery import Celery

from app.core.config import Settings
from app.jobs.celery import make_celery
from app.jobs.records import JobStore
from app.security import signing
from tests.integration.conftest import SECRET_KEY, STACK_REDIS_URL, TEST_REDIS_URL
from tests.integration.helpers import BUSYBOX, containers_of_job, eventually
from tests.support.stack import Stack

CAPTURE = "dyt-capture:"
# The caller a job's message carries (role and host scope, as the API sends it).
OPERATOR = {"id": "t-operator", "name": "test-operator", "role": "operator", "hosts": None}
ADMIN = {"id": "t-admin", "name": "test-admin", "role": "admin", "hosts": None}


@pytest.fixture(scope="module")
def jobs(stack: Stack) -> JobStore:
    return JobStore(redis.Redis.from_url(TEST_REDIS_URL, decode_responses=True), 3600)


@pytest.fixture(scope="module")
def capturing_api(stack: Stack) -> Iterator[Celery]:
    """The API's own Celery app and key, publishing under a key prefix no worker reads.

    The messages it sends are byte for byte what the API sends (their routing key is the
    real queue's); the test takes them from ``dyt-capture:<queue>`` and pushes them by hand.
    """
    app = make_celery(Settings(redis_url=STACK_REDIS_URL, secret_key=SECRET_KEY))
    app.conf.broker_transport_options = {**app.conf.broker_transport_options,
                                         "global_keyprefix": CAPTURE}
    yield app
    app.close()


@pytest.fixture
def broker(test_redis: redis.Redis) -> redis.Redis:
    return test_redis


def queued_job(jobs: JobStore, kind: str = "containers.provision",
               host: str = "local") -> dict[str, Any]:
    """A job record exactly as submit_job writes it before it enqueues the task."""
    record = jobs.new_record(kind, host, None, "dyt-signing", "dyt-token", "engine.ops")
    pipe = jobs.redis.pipeline(transaction=False)
    jobs.add_to_pipeline(pipe, record)
    pipe.execute()
    return jobs.get(record["id"])


def provision_spec(name: str) -> dict[str, Any]:
    return {"image": BUSYBOX, "name": name, "command": ["sleep", "300"],
            "labels": {"dyt.signing": name}}


def captured(app: Celery, broker: redis.Redis, task: str, args: list[Any], task_id: str,
             queue: str = "engine.ops") -> str:
    """Send like submit_job does and return the raw message the broker stored."""
    app.send_task(task, args=args, queue=queue, task_id=task_id, argsrepr="", kwargsrepr="")
    raw = broker.rpop(CAPTURE + queue)
    assert raw is not None
    return raw


def forged(task: str, task_id: str, args: list[Any], **headers: Any) -> str:
    """A hand-made kombu message, laid out as the Redis transport stores one."""
    body = json.dumps([args, {}, {"callbacks": None, "errbacks": None, "chain": None,
                                  "chord": None}]).encode()
    return json.dumps({
        "body": base64.b64encode(body).decode(), "content-encoding": "utf-8",
        "content-type": signing.CONTENT_TYPE,
        "headers": {"lang": "py", "task": task, "id": task_id, "shadow": None, "eta": None,
                    "expires": None, "group": None, "group_index": None, "retries": 0,
                    "timelimit": [None, None], "root_id": task_id, "parent_id": None,
                    "argsrepr": "", "kwargsrepr": "", "origin": "gen1@attacker",
                    "ignore_result": True, **headers},
        "properties": {"correlation_id": task_id, "reply_to": "", "delivery_mode": 2,
                       "delivery_info": {"exchange": "", "routing_key": "engine.ops"},
                       "priority": 0, "body_encoding": "base64",
                       "delivery_tag": str(uuid.uuid4())},
    })


def with_body(raw: str, change) -> str:
    message = json.loads(raw)
    body = json.loads(base64.b64decode(message["body"]))
    change(body)
    message["body"] = base64.b64encode(json.dumps(body).encode()).decode()
    return json.dumps(message)


def refusal_logged(stack: Stack, task_id: str, reason: str) -> str:
    """Wait for the ops worker's refusal line for ``task_id``; the message is handled then."""
    def line() -> str | None:
        text = (stack.log_dir / "worker-ops.log").read_text(errors="replace")
        return next((row for row in text.splitlines()
                     if "refused task message" in row and f"id={task_id}" in row), None)

    found = eventually(line, timeout=30)
    assert reason in found, found
    return found


def assert_untouched(engine: docker.DockerClient, jobs: JobStore, broker: redis.Redis,
                     record: dict[str, Any] | None, task_id: str, name: str) -> None:
    assert containers_of_job(engine, task_id) == []
    assert engine.containers.list(all=True, filters={"label": f"dyt.signing={name}"}) == []
    if record is not None:
        assert jobs.get(task_id) == record
    # Acknowledged: neither waiting in the queue nor parked for redelivery.
    assert eventually(lambda: not any(task_id in v for v in broker.hvals("unacked")))
    assert not any(task_id in m for m in broker.lrange("engine.ops", 0, -1))


def test_a_message_pushed_into_the_queue_by_hand_with_a_made_up_spec_is_refused(
        stack, engine, jobs, broker, unique):
    record = queued_job(jobs)
    spec = {**provision_spec(unique), "env": {"MADE_UP": "yes"}}
    broker.lpush("engine.ops", forged("containers.provision", record["id"],
                                      [record["id"], "local", spec, ADMIN]))
    refusal_logged(stack, record["id"], "unsigned")
    assert_untouched(engine, jobs, broker, record, record["id"], unique)


def test_a_message_with_a_made_up_signature_is_refused(stack, engine, jobs, broker, unique):
    record = queued_job(jobs)
    fake = base64.b64encode(b"\x00" * 64).decode()
    broker.lpush("engine.ops", forged(
        "containers.provision", record["id"], [record["id"], "local", provision_spec(unique), ADMIN],
        dockyard_signature=fake, dockyard_signed_at=2_000_000_000))
    refusal_logged(stack, record["id"], "bad signature")
    assert_untouched(engine, jobs, broker, record, record["id"], unique)


def test_a_signed_message_whose_body_was_altered_is_refused(
        stack, engine, jobs, broker, capturing_api, unique):
    record = queued_job(jobs)
    raw = captured(capturing_api, broker, "containers.provision",
                   [record["id"], "local", provision_spec(unique), OPERATOR], record["id"])

    def escalate(body: list) -> None:
        body[0][3] = ADMIN  # the caller's role
        body[0][2]["command"] = ["sh", "-c", "echo altered; sleep 300"]

    broker.lpush("engine.ops", with_body(raw, escalate))
    refusal_logged(stack, record["id"], "bad signature")
    assert_untouched(engine, jobs, broker, record, record["id"], unique)


def test_a_signed_message_for_a_task_id_without_a_job_record_is_refused(
        stack, engine, jobs, broker, capturing_api, unique):
    task_id = "01" + uuid.uuid4().hex[:24].upper()
    raw = captured(capturing_api, broker, "containers.provision",
                   [task_id, "local", provision_spec(unique), OPERATOR], task_id)
    broker.lpush("engine.ops", raw)
    refusal_logged(stack, task_id, f"no job record '{task_id}'")
    assert_untouched(engine, jobs, broker, None, task_id, unique)


def test_a_signed_message_of_another_kind_than_its_job_record_is_refused(
        stack, engine, jobs, broker, capturing_api, unique):
    record = queued_job(jobs, kind="containers.stop")
    raw = captured(capturing_api, broker, "containers.provision",
                   [record["id"], "local", provision_spec(unique), OPERATOR], record["id"])
    broker.lpush("engine.ops", raw)
    refusal_logged(stack, record["id"], "is a containers.stop job")
    assert_untouched(engine, jobs, broker, record, record["id"], unique)


def test_a_message_signed_for_another_queue_is_refused_on_this_one(
        stack, engine, jobs, broker, capturing_api, unique):
    record = queued_job(jobs, host="elsewhere")
    raw = captured(capturing_api, broker, "containers.provision",
                   [record["id"], "elsewhere", provision_spec(unique), OPERATOR], record["id"],
                   queue="host.elsewhere.ops")
    broker.lpush("engine.ops", raw)
    refusal_logged(stack, record["id"], "signed for queue 'host.elsewhere.ops'")
    assert_untouched(engine, jobs, broker, record, record["id"], unique)


def test_a_replayed_message_of_a_finished_job_does_not_run_again(
        stack, engine, jobs, broker, capturing_api, unique, cleanup):
    record = queued_job(jobs)
    raw = captured(capturing_api, broker, "containers.provision",
                   [record["id"], "local", provision_spec(unique), OPERATOR], record["id"])
    cleanup.append(unique)
    broker.lpush("engine.ops", raw)  # the genuine message runs
    done = eventually(lambda: (job := jobs.get(record["id"]))["state"] == "succeeded" and job,
                      timeout=60)
    first = containers_of_job(engine, record["id"])
    assert len(first) == 1

    broker.lpush("engine.ops", raw)  # the same bytes again
    eventually(lambda: f"job {record['id']} skipped: it is succeeded" in
               (stack.log_dir / "worker-ops.log").read_text(errors="replace"))
    assert [c.id for c in containers_of_job(engine, record["id"])] == [first[0].id]
    assert jobs.get(record["id"]) == done


@pytest.fixture(scope="module")
def verify_only_worker(stack: Stack) -> Iterator[str]:
    """An agent-like worker that holds the public key and no secret key; its queue's name."""
    queue = "host.dyt-verify-only.ops"
    public = signing.encode_verify_key(signing.signing_key(SECRET_KEY).public_key())
    stack.start_worker("worker-verify-only", queue, "solo", 1,
                       extra_env={"DOCKYARD_SECRET_KEY": "", "DOCKYARD_TASK_VERIFY_KEY": public})
    eventually(lambda: "ready." in (stack.log_dir / "worker-verify-only.log").read_text(
        errors="replace"), timeout=60)
    yield queue
    stack.stop_process("worker-verify-only")


def test_a_worker_with_only_the_public_key_runs_signed_jobs_and_refuses_others(
        stack, jobs, broker, capturing_api, verify_only_worker):
    host = "dyt-verify-only"
    genuine = queued_job(jobs, kind="containers.action", host=host)
    capturing_api.send_task("containers.action", args=[genuine["id"], host, "gone", "stop", {}, OPERATOR],
                            queue=verify_only_worker, task_id=genuine["id"])
    broker.lpush(verify_only_worker, broker.rpop(CAPTURE + verify_only_worker))
    # It ran: the job left 'queued' (it fails, as no such host is registered).
    assert eventually(lambda: jobs.get(genuine["id"])["state"] == "failed")

    other_key = make_celery(Settings(redis_url=STACK_REDIS_URL, secret_key="not-the-secret"))
    other_key.conf.broker_transport_options = {"global_keyprefix": CAPTURE}
    forged_job = queued_job(jobs, kind="containers.action", host=host)
    other_key.send_task("containers.action", args=[forged_job["id"], host, "gone", "stop", {},
                                                   OPERATOR],
                        queue=verify_only_worker, task_id=forged_job["id"])
    broker.lpush(verify_only_worker, broker.rpop(CAPTURE + verify_only_worker))
    line = eventually(lambda: next((row for row in (stack.log_dir / "worker-verify-only.log")
                                    .read_text(errors="replace").splitlines()
                                    if f"id={forged_job['id']}" in row), None))
    assert "refused task message" in line and "bad signature" in line
    assert jobs.get(forged_job["id"]) == forged_job
    other_key.close()
