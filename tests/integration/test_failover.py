"""No accepted job lost or run twice: the sweeper's rescues, and a real-process failover.

The sweeper tests drive ``handoff.sweep`` with an explicit clock against the suite's
Redis and a queue no worker consumes, so every step is decided, not raced.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import pytest
import redis
import requests
from celery import Celery

from app.core.config import Settings
from app.core.store import redis_client
from app.jobs import handoff
from app.jobs.celery import make_celery
from app.jobs.dispatch import lane_key
from app.jobs.records import FINAL_STATES, HOST_INDEX, Claim, JobStore, job_key
from tests.integration.conftest import ADMIN_TOKEN, SECRET_KEY, STACK_REDIS_URL, TEST_REDIS_URL, Api
from tests.integration.helpers import BUSYBOX, eventually, job_keys
from tests.integration.test_faults import PrivateRedis, private_stack_env
from tests.integration.test_sentinel import MASTER, SentinelSet, _answers
from tests.support.stack import ROOT, VENV_BIN, Stack

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
              store.redis.xrange(job_keys(store.redis, job_id)[1]) if fields["type"] == "state"]
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
    assert not store.redis.hexists(HOST_INDEX, other["id"])
    assert not store.redis.exists(job_key(other["id"], "h"))
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
    # The same runner again (its first answer lost to a failover): still its job.
    assert store.start(job_id, "dyt-runner-a", 15).code == 3
    # Another delivery while runner a holds a live lease: not run.
    second = store.start(job_id, "dyt-runner-b", 15)
    assert second.code == 0 and second.previous == "running" and second.lease_left > 0
    lease_until = float(store.redis.hget(job_keys(store.redis, job_id)[0], "lease_until"))
    dead = lease_until + handoff.RUNNER_DEAD_SECONDS - handoff.RUNNER_LEASE_SECONDS
    assert handoff.sweep(store.redis, store, now=dead - 1)["restored"] == 0  # lease recent
    assert handoff.sweep(store.redis, store, now=dead + 1)["restored"] == 0  # first sighting
    # Renewed in between (a runner that was cut off from Redis for a while): not dead.
    store.redis.hset(job_keys(store.redis, job_id)[0], "lease_until", str(dead + 2))
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
    store.redis.hset(job_keys(store.redis, job_id)[0], "lease_until", str(time.time() - 1))
    taken = store.start(job_id, "dyt-runner-b", 15)
    assert (taken.code, taken.previous) == (2, "running")
    assert store.renew(job_id, "dyt-runner-b", 15)
    assert not store.renew(job_id, "dyt-runner-a", 15)
    store.transition(job_id, ("running",), "succeeded")
    late = store.start(job_id, "dyt-runner-c", 15)
    assert (late.code, late.previous) == (0, "succeeded")
    assert _final_events(store, job_id) == ["succeeded"]
    assert store.get(job_id)["runner"] == "dyt-runner-b"


def test_a_job_no_replica_confirmed_in_time_is_refused_yet_kept_and_its_key_names_it(
        sentinels: SentinelSet, api_celery) -> None:
    """WAIT: a replica that does not answer (SIGSTOPped) makes creation raise (the API's
    503 + Retry-After); the job stays queued with its message; the same key gets it back.
    A primary with no replica connected at all does not block."""
    primary, replica = sentinels.data_ports
    client = redis.Redis(port=primary, password=sentinels.password, decode_responses=True)
    store = JobStore(client, 3600)
    store.replication = handoff.Replication(1, 300)
    queue = "host.dyt-wait.ops"
    client.zadd(lane_key(queue), {"dyt-fake-worker": time.time() + 3600})

    def create(key: str) -> tuple[dict, tuple[str, str | None]]:
        record = store.new_record("containers.action", "dyt-wait", "x", "dyt", "dyt-t", queue)
        message = handoff.broker_message(api_celery, "containers.action",
                                         [record["id"], "dyt-wait", "x", "stop", {}, CALLER],
                                         queue, record["id"])
        claim = Claim(key, json.dumps({"job": record["id"], "fp": "f"}), 600)
        return record, store.create(record, lane_key(queue), claim, message)

    _, outcome = create("dy:idem:dyt:a")
    assert outcome == ("created", None)  # the replica confirmed
    stopped = sentinels.procs[replica]
    stopped.send_signal(signal.SIGSTOP)
    try:
        with pytest.raises(handoff.NotReplicatedError):
            create("dy:idem:dyt:b")
        held = json.loads(client.get("dy:idem:dyt:b"))
        assert store.get(held["job"])["state"] == "queued"
        assert client.hget(handoff.MESSAGES, held["job"]) is not None
        assert client.llen(queue) == 2
        # The retry: same key, the original job; nothing new written or pushed.
        with pytest.raises(handoff.NotReplicatedError):
            create("dy:idem:dyt:b")
    finally:
        stopped.send_signal(signal.SIGCONT)
    store.replication = handoff.Replication(1, 10000)  # the replica catches up: plenty of time
    again, outcome = create("dy:idem:dyt:b")
    assert outcome[0] == "claimed" and json.loads(outcome[1])["job"] == held["job"]
    assert not client.hexists(HOST_INDEX, again["id"])
    assert not client.exists(job_keys(client, again["id"])[0])
    assert client.llen(queue) == 2
    # No replica connected: WAIT is capped by what is connected, so creation goes on.
    stopped.kill()
    stopped.wait(10)
    eventually(lambda: client.info("replication")["connected_slaves"] == 0, timeout=30)
    store.replication = handoff.Replication(1, 300)
    began = time.monotonic()
    assert create("dy:idem:dyt:c")[1] == ("created", None)
    assert create("dy:idem:dyt:d")[1] == ("created", None)
    assert time.monotonic() - began < 2


# -- the drill: real processes, real sentinels, real provisions --------------------------------

DRILL_JOBS = int(os.environ.get("DOCKYARD_HA_DRILL_JOBS", "60"))
# Sweeper timings short enough for a test; the production margins are documented.
DRILL_TIMINGS = {"DOCKYARD_JOB_LEASE_SECONDS": "5", "DOCKYARD_JOB_LOST_GRACE_SECONDS": "10",
                 "DOCKYARD_JOB_SWEEP_SECONDS": "2"}


@pytest.fixture
def sentinels(state_dir: Path) -> Iterator[SentinelSet]:
    servers = SentinelSet(state_dir / f"ha-{uuid.uuid4().hex[:6]}")
    try:
        servers.start()
        yield servers
    finally:
        servers.stop()


def _start_second_instance(other: Stack) -> None:
    """Another API (own port), ops and query worker on the same Redis."""
    other.log_dir.mkdir(parents=True, exist_ok=True)
    other.start_worker("worker-ops-b", "engine.ops", "prefork", 2)
    other.start_worker("worker-query-b", "engine.query", "threads", 8)
    other._spawn("api", [str(VENV_BIN / "gunicorn"), "-c", str(ROOT / "gunicorn.conf.py"),
                         "--bind", f"127.0.0.1:{other.port}", "--workers", "2", "wsgi:app"])
    other.wait_ready()


def _beat(stack: Stack, folder: Path) -> None:
    stack._spawn("beat", [str(VENV_BIN / "celery"), "-A", "app.celery_app:celery", "beat",
                          "-s", str(folder / "beat-schedule"), "-l", "INFO"])


def test_a_burst_survives_killing_the_primary_an_ops_worker_and_an_api(
        sentinels: SentinelSet, stack_env: dict[str, str], state_dir: Path, engine,
        unique) -> None:
    ha = sentinels
    folder = state_dir / f"drill-{unique}"
    store = PrivateRedis(folder / "unused")  # only for the environment's shape
    env = private_stack_env(stack_env, store, folder / "a", stack_env["DOCKER_HOST"])
    env.update({"DOCKYARD_REDIS_URL": "redis://127.0.0.1/0",
                "DOCKYARD_REDIS_PASSWORD_FILE": str(ha.password_file),
                "DOCKYARD_REDIS_SENTINELS": ha.sentinels, "DOCKYARD_REDIS_MASTER": MASTER,
                **DRILL_TIMINGS})
    env_b = {**env, "DOCKYARD_STATE_DIR": str(folder / "b")}
    settings = Settings(redis_url="redis://127.0.0.1/0", redis_password=ha.password,
                        redis_sentinels=tuple(ha.sentinels.split(",")), redis_master=MASTER)
    a = Stack(env, folder / "a" / "log")
    b = Stack(env_b, folder / "b" / "log")
    try:
        # Both instances come up side by side (a registers the engine as host 'local').
        starting = ThreadPoolExecutor(1).submit(a.start, ops_concurrency=2)
        try:
            _start_second_instance(b)
        finally:
            starting.result()
        _beat(a, folder / "a")
        _beat(b, folder / "b")
        apis = [Api(a.url, ADMIN_TOKEN), Api(b.url, ADMIN_TOKEN)]
        client = redis_client(settings, socket_timeout=5)
        outcome = _burst(apis, unique, ha, a, b, client)
        facts = outcome["facts"]
        accepted = {key: ids[0] for key, ids in outcome["answers"].items() if ids}
        # Every Idempotency-Key names one job, whichever API and attempt answered.
        for key, ids in outcome["answers"].items():
            assert len(set(ids)) <= 1, (key, ids)
        assert len(accepted) + len(outcome["refused"]) == DRILL_JOBS, outcome["refused"]

        def all_final() -> bool:
            pipe = client.pipeline(transaction=False)
            for job_id in accepted.values():
                pipe.hget(job_keys(client, job_id)[0], "state")
            return all(state in FINAL_STATES for state in pipe.execute())

        eventually(lambda: _answers(all_final), timeout=240, interval=1)
        made: dict[str, int] = {}
        for container in engine.containers.list(all=True,
                                                filters={"label": f"dyt.drill={unique}"}):
            job = container.labels.get("dockyard.job", "")
            made[job] = made.get(job, 0) + 1
        states: dict[str, int] = {}
        for key, job_id in accepted.items():
            state = client.hget(job_keys(client, job_id)[0], "state")
            states[state] = states.get(state, 0) + 1
            finals = [json.loads(f["data"])["state"] for _, f in client.xrange(job_keys(client, job_id)[1])
                      if f["type"] == "state"
                      and json.loads(f["data"])["state"] in FINAL_STATES]
            assert finals == [state], (key, job_id, finals)
            assert made.get(job_id, 0) <= 1, (key, job_id, made.get(job_id))
            if state == "succeeded":
                assert made.get(job_id, 0) == 1, (key, job_id)
        cut = facts.get("worker_jobs_cut", [])
        summary = {
            "jobs": DRILL_JOBS, "accepted": len(accepted), "refused": len(outcome["refused"]),
            "states": states, "answers_503": facts["answers_503"],
            "cut_answers": facts["cut_answers"],
            "writes_back_after_primary_kill_s": round(
                facts["first_write_after_kill"] - facts["primary_killed_at"], 1)
            if "first_write_after_kill" in facts else None,
            "jobs_running_on_killed_worker": len(cut),
            "those_final_after_worker_kill_s": round(max(
                _epoch(client.hget(job_keys(client, j)[0], "finished_at")) for j in cut)
                - facts["worker_killed_at"], 1) if cut else None,
            "containers_of_unaccepted_jobs": sum(
                n for job, n in made.items() if job not in set(accepted.values()))}
        (state_dir / "log").mkdir(parents=True, exist_ok=True)
        with (state_dir / "log" / "failover-drill.jsonl").open("a") as log:
            log.write(json.dumps(summary) + "\n")
        print("failover drill:", summary)
    finally:
        a.stop()
        b.stop()
        for container in engine.containers.list(all=True,
                                                filters={"label": f"dyt.drill={unique}"}):
            container.remove(force=True)


def _burst(apis: list[Api], unique: str, ha: SentinelSet, a: Stack, b: Stack,
           client: redis.Redis) -> dict:
    """DRILL_JOBS provisions from 8 threads. The primary dies at a quarter of the accepted
    jobs, b's API at half; a's whole ops worker once it runs jobs after the failover."""
    answers: dict[str, list[str]] = {f"{unique}-{i}": [] for i in range(DRILL_JOBS)}
    refused: dict[str, str] = {}
    lock = threading.Lock()
    accepted = threading.Semaphore(0)
    facts: dict = {"cut_answers": 0, "answers_503": 0}
    primary_killed = threading.Event()

    def controller() -> None:
        for _ in range(DRILL_JOBS // 4):
            accepted.acquire()
        killed = time.time()
        ha.kill_primary()
        facts["primary_killed_at"] = killed
        primary_killed.set()
        for _ in range(DRILL_JOBS // 4):
            accepted.acquire()
        b.stop_process("api", sig=signal.SIGKILL)
        facts["api_killed"] = True
        # a's ops worker dies while it runs jobs (once the new primary serves).
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                running = _running_under(client, "worker-ops.")
            except redis.RedisError:
                running = []
            if running:
                a.stop_process("worker-ops", sig=signal.SIGKILL)
                facts["worker_killed_at"] = time.time()
                facts["worker_jobs_cut"] = running
                return
            time.sleep(0.2)

    def submit(i: int) -> None:
        key = f"{unique}-{i}"
        spec = {"image": BUSYBOX, "name": key, "command": ["sleep", "300"],
                "labels": {"dyt.drill": unique}}
        deadline = time.monotonic() + 240
        attempt = i % 2
        while time.monotonic() < deadline:
            api = apis[attempt % 2]
            attempt += 1
            sent_after_kill = primary_killed.is_set()
            try:
                response = api.post("/hosts/local/containers", json=spec, timeout=30,
                                    headers={"Idempotency-Key": key})
            except requests.RequestException:
                with lock:
                    facts["cut_answers"] += 1
                time.sleep(0.2)  # a cut answer: the other API, same key
                continue
            assert response.status_code != 500, response.text
            if response.status_code in (200, 202):
                with lock:
                    answers[key].append(response.json()["id"])
                    if sent_after_kill and "first_write_after_kill" not in facts:
                        facts["first_write_after_kill"] = time.time()
                accepted.release()
                return
            if response.status_code == 409:
                refused[key] = response.text
                return
            assert response.status_code == 503, response.text
            with lock:
                facts["answers_503"] += 1
            time.sleep(0.3)
        raise AssertionError(f"{key}: no answer in time")

    killer = threading.Thread(target=controller, daemon=True)
    killer.start()
    with ThreadPoolExecutor(8) as pool:
        for future in [pool.submit(submit, i) for i in range(DRILL_JOBS)]:
            future.result()
    killer.join(120)
    return {"answers": answers, "refused": refused, "facts": facts}


def _running_under(client: redis.Redis, prefix: str) -> list[str]:
    """Jobs (of this drill's store) running with a runner whose name starts with ``prefix``."""
    found = []
    for job_id in client.zrange(handoff.INFLIGHT, 0, -1):
        state, runner = client.hmget(job_keys(client, job_id)[0], "state", "runner")
        if state == "running" and (runner or "").startswith(prefix):
            found.append(job_id)
    return found


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
