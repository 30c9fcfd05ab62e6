"""Many hosts: an agent on its own host, placement, fan-out, and a link lost mid-job.

Real separate hosts on this machine: dockerd in network namespaces. One is reached by
the central workers over mutual TLS, one by an agent worker started inside its namespace
that reaches Redis over the veth link.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import docker
import pytest
import requests

from tests.integration.conftest import STACK_REDIS_URL, Api
from tests.integration.helpers import BUSYBOX, eventually
from tests.integration.test_webhooks import Receiver
from tests.support.agent import AgentProcess
from tests.support.forward import Forwarder
from tests.support.remote_engine import RemoteEngine

pytestmark = pytest.mark.remote

REDIS_RELAY_PORT = 16379
# Each agent host's credentials, as POST /hosts handed them out (shown once).
CREDENTIALS: dict[str, dict[str, str]] = {}


@pytest.fixture(scope="module")
def tls_engine(state_dir) -> Iterator[RemoteEngine]:
    engine = RemoteEngine("fleet", state_dir, subnet_index=5)
    try:
        engine.start()
        yield engine
    finally:
        engine.stop()


@pytest.fixture(scope="module")
def tls_host(tls_engine: RemoteEngine, admin: Api, engine: docker.DockerClient) -> Iterator[str]:
    tls_engine.load_image_from(engine, BUSYBOX)
    name = "fleet-tls"
    response = admin.post("/hosts", json={
        "name": name, "url": tls_engine.url, "labels": {"pool": "fleet-test", "kind": "netns"},
        "tls": {"ca_cert": tls_engine.ca_pem, "client_cert": tls_engine.client_cert_pem,
                "client_key": tls_engine.client_key_pem}})
    assert response.status_code == 201, response.text
    yield name
    admin.delete(f"/hosts/{name}")


@pytest.fixture(scope="module")
def agent_engine(state_dir, engine: docker.DockerClient) -> Iterator[RemoteEngine]:
    remote = RemoteEngine("agt", state_dir, subnet_index=4)
    try:
        remote.start()
        remote.load_image_from(engine, BUSYBOX)
        yield remote
    finally:
        remote.stop()


@pytest.fixture(scope="module")
def agent_host(agent_engine: RemoteEngine, admin: Api) -> Iterator[str]:
    name = "fleet-agent"
    # The record names the engine as the agent sees it; only the agent ever uses it.
    response = admin.post("/hosts", json={"name": name, "url": "unix:///var/run/docker.sock",
                                          "route": "agent", "labels": {"kind": "agent"}})
    assert response.status_code == 201, response.text
    CREDENTIALS[name] = response.json()["agent_credentials"]
    yield name
    admin.delete(f"/hosts/{name}")


def agent_in_namespace(remote: RemoteEngine, host: str, stack_env: dict[str, str], log_dir,
                       credentials: dict[str, str]) -> AgentProcess:
    """`dockyard-agent` running inside the host's namespace, reaching Redis over the veth
    with its own login (see tests/support/agent.py for what it holds)."""
    login = urlsplit(credentials["redis_url"])
    url = login._replace(netloc=f"{login.netloc.rpartition('@')[0]}@{remote.host_ip}:"
                                f"{REDIS_RELAY_PORT}").geturl()
    return AgentProcess(stack_env, host, credentials, log_dir,
                        engine=f"unix://{remote.docker_sock}", redis_url=url,
                        prefix=("nsenter", f"--net={remote.netns_path}"))


@pytest.fixture(scope="module")
def relay(agent_engine: RemoteEngine) -> Iterator[None]:
    with Forwarder((agent_engine.host_ip, REDIS_RELAY_PORT),
                   ("127.0.0.1", urlsplit(STACK_REDIS_URL).port or 6379)):
        yield


def test_agent_host_without_an_agent_answers_503_within_2s(viewer: Api, operator: Api,
                                                          agent_host: str) -> None:
    started = time.monotonic()
    response = viewer.get(f"/hosts/{agent_host}/info")
    assert response.status_code == 503
    assert time.monotonic() - started < 2
    assert agent_host in response.json()["detail"]
    provision = operator.post(f"/hosts/{agent_host}/containers", json={"image": BUSYBOX})
    assert provision.status_code == 503
    listed = {h["name"]: h for h in viewer.get("/hosts").json()}
    assert listed[agent_host]["route"] == "agent"
    assert listed[agent_host]["lanes_alive"] == {"ops": False, "query": False}


def test_agent_serves_its_host_from_inside_the_namespace(admin: Api, operator: Api, viewer: Api,
                                                        agent_engine: RemoteEngine,
                                                        agent_host: str, relay: None,
                                                        stack_env, state_dir, test_redis) -> None:
    agent = agent_in_namespace(agent_engine, agent_host, stack_env, state_dir / "log",
                               CREDENTIALS[agent_host])
    agent.start()
    receiver = Receiver()
    try:
        # The agent's two lanes come up one after the other: a provision sent while only the
        # query lane beats is refused with 503 (no live worker for the ops lane).
        eventually(lambda: viewer.get(f"/hosts/{agent_host}").json().get("lanes_alive")
                   == {"ops": True, "query": True}, timeout=60, interval=0.5)
        # Its events watcher holds the host's lock: every engine event from now is read.
        eventually(lambda: test_redis.exists(f"dy:h:{agent_host}:watch:lock"), timeout=30)
        info = viewer.get(f"/hosts/{agent_host}/info").json()
        assert info["ID"] == agent_engine.client().info()["ID"]
        name = f"agt-{uuid.uuid4().hex[:6]}"
        job = operator.post(f"/hosts/{agent_host}/containers", params={"wait": 60}, json={
            "image": BUSYBOX, "name": name, "ports": ["18081:8080"],
            "command": ["httpd", "-f", "-p", "8080", "-h", "/etc"],
            "callback_url": receiver.url + "/agent-done"}).json()
        assert job.get("state") == "succeeded", job
        # The job's end and the engine's start event reach shared state via the outbox relay.
        delivered = eventually(lambda: receiver.to("/agent-done"), timeout=30)
        assert json.loads(delivered[0]["body"])["data"]["id"] == job["id"]
        eventually(lambda: any(
            fields.get("host") == agent_host and fields.get("event") == "engine.container.start"
            and name in fields.get("data", "")
            for _, fields in test_redis.xrevrange("dy:events", count=500)), timeout=30)
        ps = subprocess.run(["docker", "ps", "--filter", f"name=^/{name}$", "--format",
                             "{{.Names}} {{.Ports}}"], env=agent_engine.cli_env(),
                            capture_output=True, text=True, check=True).stdout
        assert name in ps and "18081->8080" in ps
        page = requests.get(f"http://{agent_engine.address}:18081/hostname", timeout=5)
        assert page.status_code == 200
        detail = viewer.get(f"/hosts/{agent_host}").json()
        assert detail["lanes_alive"] == {"ops": True, "query": True}
        assert detail["live"]["reachable"] is True and detail["last_seen"]
        ready = requests.get(viewer.base.removesuffix("/api/v1") + "/readyz", timeout=5).json()
        assert ready["checks"]["lanes"][f"host.{agent_host}.query"] is True
    finally:
        receiver.close()
        agent.stop()
    started = time.monotonic()
    assert viewer.get(f"/hosts/{agent_host}/info").status_code == 503
    assert time.monotonic() - started < 2


def test_auto_places_on_the_least_loaded_matching_host(admin: Api, operator: Api,
                                                       engine: docker.DockerClient,
                                                       tls_engine: RemoteEngine,
                                                       tls_host: str) -> None:
    local_labels = admin.get("/hosts/local").json()["labels"]
    admin.patch("/hosts/local", json={"labels": {**local_labels, "pool": "fleet-test"}})
    busy = engine.containers.run(BUSYBOX, ["sleep", "120"], detach=True,
                                 labels={"dyt.case": "fleet"})
    name = f"auto-{uuid.uuid4().hex[:6]}"
    try:
        job = operator.post("/hosts/auto/containers", params={"wait": 60}, json={
            "image": BUSYBOX, "name": name, "command": ["sleep", "120"],
            "placement": {"labels": {"pool": "fleet-test"}}}).json()
        assert job["state"] == "succeeded", job
        assert job["host"] == tls_host  # the remote runs nothing, local runs `busy`
        assert tls_engine.client().containers.get(name).status == "running"
        nowhere = operator.post("/hosts/auto/containers", json={
            "image": BUSYBOX, "placement": {"labels": {"pool": "no-such-pool"}}})
        assert nowhere.status_code == 422
    finally:
        busy.remove(force=True)
        admin.patch("/hosts/local", json={"labels": local_labels})
        tls_engine.client().containers.get(name).remove(force=True)


def test_fan_out_runs_one_child_per_host_and_aggregates(admin: Api, operator: Api,
                                                       engine: docker.DockerClient,
                                                       tls_engine: RemoteEngine,
                                                       tls_host: str) -> None:
    local_labels = admin.get("/hosts/local").json()["labels"]
    admin.patch("/hosts/local", json={"labels": {**local_labels, "pool": "fleet-test"}})
    name = f"fan-{uuid.uuid4().hex[:6]}"
    try:
        response = operator.post("/hosts/auto/containers", params={"wait": 60}, json={
            "image": BUSYBOX, "name": name, "command": ["sleep", "120"],
            "placement": {"labels": {"pool": "fleet-test"}, "mode": "all"}})
        parent = response.json()
        assert response.status_code == 200 and parent["state"] == "succeeded", parent
        assert parent["kind"] == "containers.provision.fanout" and len(parent["children"]) == 2
        assert parent["progress"]["done"] == 2 and parent["progress"]["total"] == 2
        hosts = {c["host"]: c for c in parent["result"]["children"]}
        assert set(hosts) == {"local", tls_host}
        assert all(c["state"] == "succeeded" for c in hosts.values())
        for child in parent["children"]:
            assert operator.get(f"/jobs/{child}").json()["parent"] == parent["id"]
        assert engine.containers.get(name).status == "running"
        assert tls_engine.client().containers.get(name).status == "running"
        again = operator.post("/hosts/auto/containers", json={
            "image": BUSYBOX, "name": name,
            "placement": {"labels": {"pool": "fleet-test"}, "mode": "all"}})
        assert again.status_code == 409
    finally:
        admin.patch("/hosts/local", json={"labels": local_labels})
        for client in (engine, tls_engine.client()):
            with contextlib.suppress(docker.errors.NotFound):
                client.containers.get(name).remove(force=True)


def test_link_lost_mid_job_fails_naming_the_host_then_recovers(operator: Api,
                                                               tls_engine: RemoteEngine,
                                                               tls_host: str) -> None:
    name = f"cut-{uuid.uuid4().hex[:6]}"
    response = operator.post(f"/hosts/{tls_host}/containers", json={
        "image": BUSYBOX, "name": name, "command": ["sleep", "300"],
        "healthcheck": {"test": ["false"], "interval": "30s", "retries": 3},
        "wait_for": "healthy", "wait_timeout": 120})
    assert response.status_code == 202
    job_id = response.json()["id"]
    eventually(lambda: operator.get(f"/jobs/{job_id}").json()["state"] == "running", timeout=30)
    time.sleep(1)
    tls_engine.link_down()
    try:
        started = time.monotonic()
        job = operator.wait_job(job_id, timeout=60)
        elapsed = time.monotonic() - started
    finally:
        tls_engine.link_up()
    assert job["state"] == "failed", job
    assert tls_host in job["error"]["detail"]
    assert elapsed < 40
    retry = operator.post(f"/hosts/{tls_host}/containers", params={"wait": 60}, json={
        "image": BUSYBOX, "name": name, "command": ["sleep", "300"], "replace": True}).json()
    assert retry["state"] == "succeeded", retry
    tls_engine.client().containers.get(name).remove(force=True)


def test_a_retried_placement_answers_its_original_job_and_posts_its_callback(
        operator: Api, unique: str, cleanup) -> None:
    """Placement goes through the one submission path: the Idempotency-Key is looked up
    before the name check, and callback_url is honoured."""
    from tests.integration.test_webhooks import Receiver, signed_payload

    cleanup.append(unique)
    receiver = Receiver()
    placed_on = "local"
    try:
        body = {"image": BUSYBOX, "name": unique, "command": ["sleep", "60"],
                "placement": {"labels": {}, "mode": "least-loaded"},
                "callback_url": receiver.url + "/placed"}
        headers = {"Idempotency-Key": f"place-{unique}"}
        first = operator.post("/hosts/auto/containers", params={"wait": 60}, json=body,
                              headers=headers)
        assert first.status_code == 200 and first.json()["state"] == "succeeded", first.text
        again = operator.post("/hosts/auto/containers", params={"wait": 60}, json=body,
                              headers=headers)
        assert again.status_code == 200, again.text  # not a 409 for the name it took itself
        assert again.json()["id"] == first.json()["id"]
        placed_on = first.json()["host"]
        listed = operator.get(f"/hosts/{placed_on}/containers", params={"name": unique, "all": True})
        assert [c["name"] for c in listed.json()] == [unique], listed.text
        eventually(lambda: receiver.to("/placed"))
        payload = signed_payload(receiver.to("/placed")[0])
        assert payload["type"] == "job.succeeded" and payload["data"]["id"] == first.json()["id"]
        assert len(receiver.to("/placed")) == 1  # the replay posts nothing more
    finally:
        receiver.close()
        if placed_on != "local":  # cleanup removes it from the local engine only
            operator.delete(f"/hosts/{placed_on}/containers/{unique}",
                            params={"force": True, "wait": 30})
