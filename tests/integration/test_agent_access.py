"""Least-privilege agents: each agent's own Redis login reaches only its own host.

Real Redis ACLs and a real `dockyard-agent` that holds only what the API handed out
(its login, its key and the public verify key; no DOCKYARD_SECRET_KEY, no data password).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
from cryptography.fernet import InvalidToken

from app.core.config import Settings
from app.jobs.celery import make_celery
from app.jobs.records import HOST_INDEX, JobStore, job_key
from app.security.agent_access import unseal_as_agent
from tests.integration.conftest import SECRET_KEY, STACK_REDIS_URL, TEST_REDIS_URL, Api
from tests.integration.helpers import BUSYBOX, containers_of_job, eventually
from tests.integration.test_signed_tasks import CAPTURE, OPERATOR, captured, provision_spec
from tests.integration.test_webhooks import Receiver
from tests.support.agent import AgentProcess

MARK = "dyt-agent-access"


def register(admin: Api, name: str) -> dict[str, Any]:
    response = admin.post("/hosts", json={"name": name, "url": "unix:///var/run/docker.sock",
                                          "route": "agent"})
    assert response.status_code == 201, response.text
    return response.json()


def login(credentials: dict[str, str]) -> redis.Redis:
    return redis.Redis.from_url(credentials["redis_url"], decode_responses=True,
                                socket_timeout=5)


def user_of(host: str) -> str:
    return f"dockyard-agent-{host}@{urlsplit(STACK_REDIS_URL).path.strip('/') or 0}"


def open_connections(test_redis: redis.Redis, user: str) -> int:
    return sum(1 for client in test_redis.client_list() if client.get("user") == user)


def refused(call) -> bool:
    try:
        call()
    except redis.exceptions.NoPermissionError:
        return True
    except redis.exceptions.ResponseError as exc:
        # A script touching a key the user may not reach fails with its own wording.
        return "can't access" in str(exc) or "NOPERM" in str(exc)
    return False


@pytest.fixture(scope="module")
def jobs(stack) -> JobStore:
    return JobStore(redis.Redis.from_url(TEST_REDIS_URL, decode_responses=True), 3600)


@pytest.fixture(scope="module")
def hosts(admin: Api, stack) -> Iterator[dict[str, dict[str, Any]]]:
    """Two agent hosts and the credentials each was given."""
    suffix = uuid.uuid4().hex[:6]
    made = {role: register(admin, f"acl-{role}-{suffix}") for role in ("mine", "other")}
    yield made
    for view in made.values():
        admin.delete(f"/hosts/{view['name']}")


def queued_job(jobs: JobStore, host: str, kind: str = "containers.provision") -> dict[str, Any]:
    record = jobs.new_record(kind, host, None, MARK, "dyt-token", f"host.{host}.ops")
    pipe = jobs.redis.pipeline(transaction=False)
    jobs.add_to_pipeline(pipe, record)
    pipe.execute()
    return jobs.get(record["id"])


def test_credentials_are_shown_once_and_only_their_hash_is_kept(admin, hosts, test_redis):
    mine = hosts["mine"]
    credentials = mine["agent_credentials"]
    assert set(credentials) == {"redis_url", "agent_key", "task_verify_key", "user"}
    password = urlsplit(credentials["redis_url"]).password
    stored = test_redis.hget("dy:hosts", mine["name"])
    assert password not in stored and credentials["agent_key"] not in stored
    assert json.loads(stored)["agent"].keys() == {"password_sha256", "key_salt"}
    for view in (admin.get(f"/hosts/{mine['name']}").json(), *admin.get("/hosts").json()):
        assert "agent_credentials" not in view and "agent" not in view
    assert login(credentials).ping()


def test_an_agent_login_reaches_nothing_of_another_host_nor_shared_state(
        hosts, jobs, test_redis, admin):
    mine, other = hosts["mine"]["name"], hosts["other"]["name"]
    agent = login(hosts["mine"]["agent_credentials"])
    other_job = queued_job(jobs, other)
    other_key = job_key(other_job["id"], other)
    test_redis.rpush(f"host.{other}.ops", "a waiting message")
    test_redis.xadd(f"dy:h:{other}:outbox", {"kind": "job-end", "data": "{}"})
    admin.post("/tokens", json={"name": f"t-{uuid.uuid4().hex[:6]}", "role": "viewer"})

    def snapshot() -> dict[str, Any]:
        return {"queue": test_redis.lrange(f"host.{other}.ops", 0, -1),
                "job": test_redis.hgetall(other_key),
                "record": test_redis.get(f"dy:h:{other}:host"),
                "outbox": test_redis.xlen(f"dy:h:{other}:outbox"),
                "inventory": test_redis.hgetall("dy:hosts"),
                "tokens": test_redis.hlen("dy:tokens:by-id"),
                "job_index": test_redis.hlen(HOST_INDEX)}

    before = snapshot()
    attempts = {
        "another host's queue (read)": lambda: agent.lrange(f"host.{other}.ops", 0, -1),
        "another host's queue (take)": lambda: agent.brpop([f"host.{other}.ops"], timeout=1),
        "another host's queue (push)": lambda: agent.lpush(f"host.{other}.ops", MARK),
        "another host's job (read)": lambda: agent.hgetall(other_key),
        "another host's job (write)": lambda: agent.hset(other_key, "state", "succeeded"),
        "another host's record": lambda: agent.get(f"dy:h:{other}:host"),
        "another host's outbox": lambda: agent.xadd(f"dy:h:{other}:outbox", {"kind": MARK}),
        "another host's lane": lambda: agent.zadd(f"dy:lane:host.{other}.ops", {MARK: 1}),
        "tokens": lambda: agent.hgetall("dy:tokens:by-id"),
        "tokens by hash": lambda: agent.hgetall("dy:tokens:by-hash"),
        "inventory": lambda: agent.hgetall("dy:hosts"),
        "registries": lambda: agent.hgetall("dy:registries"),
        "job index": lambda: agent.zrange("dy:jobs", 0, -1),
        "job host index": lambda: agent.hget(HOST_INDEX, other_job["id"]),
        "central queue": lambda: agent.lpush("engine.ops", MARK),
        "central read queue": lambda: agent.llen("engine.query"),
        "events stream": lambda: agent.xadd("dy:events", {"marker": MARK}),
        "audit stream": lambda: agent.xrange("dy:audit", count=1),
        "rename into another host": lambda: agent.rename(f"dy:h:{mine}:x", f"dy:h:{other}:x"),
        "Lua on a foreign key": lambda: agent.eval("return redis.call('HGETALL', KEYS[1])", 1,
                                                   "dy:hosts"),
        "Lua on an undeclared key": lambda: agent.eval(
            "return redis.call('HGETALL', 'dy:tokens:by-id')", 0),
        "SCAN": lambda: agent.scan(0),
        "KEYS": lambda: agent.keys("*"),
        "RANDOMKEY": lambda: agent.randomkey(),
        "PUBLISH": lambda: agent.publish("celeryev", MARK),
        "CONFIG": lambda: agent.config_get("*"),
        "ACL": lambda: agent.acl_list(),
        "FLUSHDB": lambda: agent.flushdb(),
        "CLIENT LIST": lambda: agent.client_list(),
        "FUNCTION": lambda: agent.function_list(),
    }
    agent.set(f"dy:h:{mine}:x", "1")  # so RENAME fails for want of permission, not of a key
    reached = [name for name, call in attempts.items() if not refused(call)]
    assert reached == []
    assert before == snapshot()
    assert not any(MARK in json.dumps(fields) for _, fields in
                   test_redis.xrevrange("dy:events", count=200))
    assert MARK not in test_redis.lrange("engine.ops", 0, -1)
    # What it may do: its own queues, lanes and keys.
    agent.rpush(f"host.{mine}.ops", MARK)
    assert agent.lpop(f"host.{mine}.ops") == MARK
    assert agent.zadd(f"dy:lane:host.{mine}.ops", {MARK: 0}) == 1
    agent.zrem(f"dy:lane:host.{mine}.ops", MARK)
    assert agent.delete(f"dy:h:{mine}:x") == 1


def test_an_operator_cannot_rekey_and_changes_nothing(make_token, hosts, test_redis):
    name = hosts["mine"]["name"]
    before = test_redis.hget("dy:hosts", name)
    response = make_token("operator").post(f"/hosts/{name}/agent-credentials")
    assert response.status_code == 403
    assert test_redis.hget("dy:hosts", name) == before
    assert login(hosts["mine"]["agent_credentials"]).ping()


def test_rekey_kills_open_connections_and_refuses_the_old_password_delete_the_new(
        admin, test_redis):
    name = f"acl-rekey-{uuid.uuid4().hex[:6]}"
    old = register(admin, name)["agent_credentials"]
    held = login(old)
    assert held.ping()
    assert open_connections(test_redis, user_of(name)) == 1
    response = admin.post(f"/hosts/{name}/agent-credentials")
    assert response.status_code == 201, response.text
    new = response.json()
    assert new["redis_url"] != old["redis_url"] and new["agent_key"] != old["agent_key"]
    eventually(lambda: open_connections(test_redis, user_of(name)) == 0)
    with pytest.raises(redis.exceptions.ConnectionError):  # killed, then AUTH refused
        held.ping()
    with pytest.raises(redis.exceptions.AuthenticationError):
        login(old).ping()
    fresh = login(new)
    assert fresh.ping()
    assert admin.delete(f"/hosts/{name}").status_code == 204
    eventually(lambda: open_connections(test_redis, user_of(name)) == 0)
    with pytest.raises(redis.exceptions.AuthenticationError):
        login(new).ping()


def test_moving_a_host_to_central_deletes_its_user(admin, test_redis):
    name = f"acl-move-{uuid.uuid4().hex[:6]}"
    credentials = register(admin, name)["agent_credentials"]
    assert login(credentials).ping()
    response = admin.patch(f"/hosts/{name}", json={"route": "central"})
    assert response.status_code == 200 and "agent_credentials" not in response.json()
    assert user_of(name) not in test_redis.acl_users()
    with pytest.raises(redis.exceptions.AuthenticationError):
        login(credentials).ping()
    admin.delete(f"/hosts/{name}")


def test_sync_rebuilds_a_lost_user_and_removes_a_stray_one(hosts, test_redis):
    name = hosts["mine"]["name"]
    stray = user_of(f"stray-{uuid.uuid4().hex[:6]}")
    test_redis.execute_command("ACL", "SETUSER", stray, "on", ">stray-password", "~*", "+get")
    test_redis.execute_command("ACL", "DELUSER", user_of(name))  # as after a Redis restart
    with pytest.raises(redis.exceptions.AuthenticationError):
        login(hosts["mine"]["agent_credentials"]).ping()
    api = make_celery(Settings(redis_url=STACK_REDIS_URL, secret_key=SECRET_KEY))
    try:
        api.send_task("hosts.sync_agent_access", queue="engine.query")
    finally:
        api.close()
    eventually(lambda: user_of(name) in test_redis.acl_users()
               and stray not in test_redis.acl_users(), timeout=30)
    assert login(hosts["mine"]["agent_credentials"]).ping()


def test_registry_passwords_reach_an_agent_sealed_with_its_own_key(admin, hosts, test_redis):
    mine, other = hosts["mine"], hosts["other"]
    name, password = f"r-{uuid.uuid4().hex[:8]}", "registry-" + uuid.uuid4().hex
    created = admin.post("/registries", json={"name": name, "url": "http://127.0.0.1:1",
                                              "username": "u", "password": password})
    assert created.status_code == 201, created.text
    try:
        agent = login(mine["agent_credentials"])
        copy = agent.hget(f"dy:h:{mine['name']}:registries", name)
        assert copy is not None and password not in copy
        sealed = json.loads(copy)["password"]
        assert unseal_as_agent(mine["agent_credentials"]["agent_key"], sealed) == {
            "password": password}
        with pytest.raises(InvalidToken):
            unseal_as_agent(other["agent_credentials"]["agent_key"], sealed)
        with pytest.raises(InvalidToken):  # nor the central copy (sealed with the fleet key)
            unseal_as_agent(other["agent_credentials"]["agent_key"],
                            json.loads(test_redis.hget("dy:registries", name))["password"])
        assert refused(lambda: agent.hget(f"dy:h:{other['name']}:registries", name))
    finally:
        admin.delete(f"/registries/{name}")
    assert test_redis.hget(f"dy:h:{mine['name']}:registries", name) is None


@pytest.fixture(scope="module")
def agent(hosts, stack_env, state_dir, viewer, test_redis) -> Iterator[AgentProcess]:
    name = hosts["mine"]["name"]
    running = AgentProcess(stack_env, name, hosts["mine"]["agent_credentials"], state_dir / "log",
                           engine=stack_env["DOCKYARD_LOCAL_ENGINE"])
    running.start()
    try:
        eventually(lambda: viewer.get(f"/hosts/{name}").json().get("lanes_alive")
                   == {"ops": True, "query": True}, timeout=60, interval=0.5)
        # Its events watcher holds the host's lock: every engine event from now is read.
        eventually(lambda: test_redis.exists(f"dy:h:{name}:watch:lock"), timeout=30)
        yield running
    finally:
        running.stop()


def test_the_agent_serves_its_host_with_only_its_login(agent, hosts, operator, viewer,
                                                       test_redis, unique, cleanup):
    name = hosts["mine"]["name"]
    assert viewer.get(f"/hosts/{name}/info").status_code == 200
    receiver = Receiver()
    try:
        cleanup.append(unique)
        response = operator.post(f"/hosts/{name}/containers", json={
            "image": BUSYBOX, "name": unique, "command": ["sleep", "60"],
            "callback_url": receiver.url + "/done"})
        assert response.status_code == 202, response.text
        job = operator.wait_job(response.json()["id"])
        assert job["state"] == "succeeded", job
        assert viewer.get(f"/jobs?host={name}").json()["items"][0]["id"] == job["id"]
        assert all(item["host"] == name for item in viewer.get(f"/jobs?host={name}").json()["items"])
        # Both reach shared state through the outbox relay.
        delivered = eventually(lambda: receiver.to("/done"), timeout=30)
        assert json.loads(delivered[0]["body"])["data"]["id"] == job["id"]

        def started_event() -> bool:
            return any(fields.get("host") == name and fields.get("event") ==
                       "engine.container.start" and unique in fields.get("data", "")
                       for _, fields in test_redis.xrevrange("dy:events", count=500))
        eventually(started_event, timeout=30)
    finally:
        receiver.close()
    assert "DOCKYARD_SECRET_KEY" not in agent.env and test_redis.xlen(
        f"dy:h:{name}:outbox") == 0


def test_the_agent_refuses_a_signed_message_for_another_hosts_job(agent, hosts, jobs, engine,
                                                                  test_redis, unique):
    mine, other = hosts["mine"]["name"], hosts["other"]["name"]
    record = queued_job(jobs, other)
    app = make_celery(Settings(redis_url=STACK_REDIS_URL, secret_key=SECRET_KEY))
    app.conf.broker_transport_options = {**app.conf.broker_transport_options,
                                         "global_keyprefix": CAPTURE}
    try:
        raw = captured(app, test_redis, "containers.provision",
                       [record["id"], other, provision_spec(unique), OPERATOR], record["id"],
                       queue=f"host.{mine}.ops")
    finally:
        app.close()
    test_redis.lpush(f"host.{mine}.ops", raw)
    found = eventually(lambda: agent.refusal(record["id"]), timeout=30)
    assert "not for this agent's host" in found
    assert jobs.get(record["id"]) == record
    assert containers_of_job(engine, record["id"]) == []
    assert test_redis.llen(f"host.{mine}.ops") == 0
    eventually(lambda: not any(record["id"] in v for v in
                               test_redis.hvals(f"dy:h:{mine}:unacked")))
