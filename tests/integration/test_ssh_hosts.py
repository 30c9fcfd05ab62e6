"""ssh:// hosts: a real sshd and dockerd in their own network namespace, reached by the workers."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import pytest
import redis
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from tests.integration.conftest import BUSYBOX, Api
from tests.support.ssh_engine import SSHEngine, new_user_key, openssh_public_key

pytestmark = pytest.mark.remote

PROBLEM_JSON = "application/problem+json"
HTTPD_PORT = 18080


def assert_problem(response: requests.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].split(";")[0] == PROBLEM_JSON
    body = response.json()
    assert body["status"] == status
    return body


def key_body(private_key: str) -> str:
    """A recognisable piece of a key that must never show up outside the sealed record."""
    return "".join(private_key.splitlines()[1:-1])[20:60]


@pytest.fixture(scope="module")
def ssh_engine(state_dir: Path, engine: docker.DockerClient) -> Iterator[SSHEngine]:
    remote = SSHEngine("ssh20", state_dir, subnet_index=20)
    try:
        remote.start()
        remote.load_image_from(engine, BUSYBOX)
        yield remote
    finally:
        remote.stop()


@pytest.fixture
def hosts(admin: Api) -> Iterator[Callable[..., requests.Response]]:
    """Register hosts through the API; every host registered is deleted afterwards."""
    made: list[str] = []

    def register(name: str, url: str, **fields: object) -> requests.Response:
        response = admin.post("/hosts", json={"name": name, "url": url, **fields})
        if response.status_code == 201:
            made.append(name)
        return response

    yield register
    for name in made:
        admin.delete(f"/hosts/{name}")


@pytest.fixture(scope="module")
def ssh_host(ssh_engine: SSHEngine, admin: Api) -> Iterator[str]:
    name = f"ssh-{ssh_engine.name}"
    response = admin.post("/hosts", json={
        "name": name, "url": ssh_engine.ssh_url, "labels": {"kind": "ssh"},
        "ssh": {"private_key": ssh_engine.user_key, "known_hosts": ssh_engine.known_hosts}})
    assert response.status_code == 201, response.text
    yield name
    admin.delete(f"/hosts/{name}")


def wait_until_ok(admin: Api, path: str, timeout: float = 20) -> requests.Response:
    deadline = time.monotonic() + timeout
    while (answer := admin.get(path)).status_code != 200:
        assert time.monotonic() < deadline, answer.text
        time.sleep(0.2)
    return answer


def docker_cli(ssh_engine: SSHEngine, *args: str) -> str:
    """Run the docker CLI straight against the namespace's engine, not through Dockyard."""
    return subprocess.run(["docker", *args], env=ssh_engine.cli_env(), capture_output=True,
                          text=True, check=True, timeout=60).stdout


# --------------------------------------------------------------------------- the happy path


def test_ssh_host_registers_live_and_hides_its_key(admin: Api, viewer: Api, ssh_engine: SSHEngine,
                                                  ssh_host: str, test_redis: redis.Redis) -> None:
    response = admin.get(f"/hosts/{ssh_host}")
    assert response.status_code == 200, response.text
    body = response.json()
    client = ssh_engine.client()
    try:
        version = client.version()
    finally:
        client.close()
    assert body["url"] == ssh_engine.ssh_url
    assert body["ssh"] is True and body["tls"] is False
    assert body["live"]["reachable"] is True, body["live"]
    assert body["live"]["engine_version"] == version["Version"]
    assert body["live"]["api_version"] == version["ApiVersion"]
    listed = viewer.get("/hosts")
    for answer in (response, listed):
        assert "PRIVATE KEY" not in answer.text
        assert key_body(ssh_engine.user_key) not in answer.text
    assert {h["name"]: h["ssh"] for h in listed.json()}[ssh_host] is True
    stored = test_redis.hget("dy:hosts", ssh_host)
    assert stored is not None and ssh_host in stored
    assert "PRIVATE KEY" not in stored and key_body(ssh_engine.user_key) not in stored


def test_provision_over_ssh_runs_on_that_engine_with_its_port_reachable(
        operator: Api, ssh_engine: SSHEngine, ssh_host: str, engine: docker.DockerClient,
        unique: str) -> None:
    page = f"hello over ssh from {unique}"
    spec = {"image": BUSYBOX, "name": unique, "ports": [f"{HTTPD_PORT}:8080"],
            "command": ["sh", "-c", f"mkdir -p /www && echo '{page}' > /www/index.html && "
                                    "exec httpd -f -p 8080 -h /www"]}
    response = operator.post(f"/hosts/{ssh_host}/containers", params={"wait": 60}, json=spec)
    assert response.status_code == 200, response.text
    job = response.json()
    try:
        assert job["state"] == "succeeded", job
        assert job["host"] == ssh_host
        assert "PRIVATE KEY" not in response.text
        inspected = json.loads(docker_cli(ssh_engine, "inspect", unique))[0]
        assert inspected["State"]["Running"] is True
        assert inspected["Config"]["Labels"]["dockyard.job"] == job["id"]
        assert inspected["Config"]["Labels"]["dockyard.managed"] == "true"
        assert inspected["HostConfig"]["PortBindings"]["8080/tcp"][0]["HostPort"] == str(HTTPD_PORT)
        assert not engine.containers.list(all=True, filters={"name": f"^/{unique}$"})
        url = f"http://{ssh_engine.address}:{HTTPD_PORT}/index.html"
        deadline = time.monotonic() + 10
        while True:
            try:
                answer = requests.get(url, timeout=2)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        assert answer.text == page + "\n"
    finally:
        subprocess.run(["docker", "rm", "-f", unique], env=ssh_engine.cli_env(),
                       capture_output=True, check=False, timeout=60)


def test_repeated_calls_reuse_one_ssh_connection_per_worker_process(
        admin: Api, ssh_engine: SSHEngine, ssh_host: str) -> None:
    for path in ("version", "info", "df"):
        assert admin.get(f"/hosts/{ssh_host}/{path}").status_code == 200
    connections = ssh_engine.ssh_connections()
    logins = ssh_engine.accepted_logins()
    channels = ssh_engine.dial_stdio_processes()
    for _ in range(10):
        for path in ("version", "info", "df"):
            response = admin.get(f"/hosts/{ssh_host}/{path}")
            assert response.status_code == 200, response.text
    # 30 more calls: no new SSH login, the same TCP connections, and no ssh client processes.
    assert ssh_engine.accepted_logins() == logins
    assert ssh_engine.ssh_connections() == connections
    # Channels (each runs one `docker system dial-stdio`) are pooled: every one open before
    # still is (none closed and dialled again). The host's events watcher shares the query
    # worker's pool, so a call may open another while the watcher's window holds one, but
    # never more than the pools hold (8 in the query worker, 4 per ops child).
    after = ssh_engine.dial_stdio_processes()
    assert set(channels) <= set(after), (channels, after)
    assert len(after) <= 8 + 4 * (len(connections) - 1), after
    # One query worker process and two ops worker children at most.
    assert 1 <= len(connections) <= 3, connections
    ssh_clients = subprocess.run(["pgrep", "-f", f"ssh .*{ssh_engine.address}"],
                                 capture_output=True, text=True, check=False).stdout.split()
    assert ssh_clients == []


def test_the_key_is_never_logged_or_audited(ssh_engine: SSHEngine, ssh_host: str,
                                            state_dir: Path, admin: Api) -> None:
    assert admin.get(f"/hosts/{ssh_host}/version").status_code == 200
    logs = [path for path in (state_dir / "log").rglob("*") if path.is_file()]
    assert logs
    for path in logs:
        text = path.read_text(errors="replace")
        assert key_body(ssh_engine.user_key) not in text, path
        assert "OPENSSH PRIVATE KEY" not in text, path
    audit = admin.get("/audit", params={"limit": 200})
    assert audit.status_code == 200, audit.text
    assert ssh_host in audit.text  # the registration was audited ...
    assert key_body(ssh_engine.user_key) not in audit.text  # ... without its key
    assert "PRIVATE KEY" not in audit.text


# --------------------------------------------------------------------------- bad input


def test_ssh_key_that_does_not_parse_is_422_on_the_field(admin: Api, hosts, ssh_engine: SSHEngine,
                                                         unique: str) -> None:
    body = assert_problem(hosts(unique, ssh_engine.ssh_url, ssh={
        "private_key": "-----BEGIN OPENSSH PRIVATE KEY-----\nnope\n-----END OPENSSH PRIVATE KEY-----",
        "known_hosts": ssh_engine.known_hosts}), 422)
    assert body["errors"]["ssh"] == {"private_key": ["not a private key in OpenSSH or PEM format"]}
    assert_problem(admin.get(f"/hosts/{unique}"), 404)


def test_ssh_url_without_a_key_is_422(admin: Api, hosts, ssh_engine: SSHEngine,
                                      unique: str) -> None:
    body = assert_problem(hosts(unique, ssh_engine.ssh_url), 422)
    assert "ssh" in body["errors"]
    assert_problem(admin.get(f"/hosts/{unique}"), 404)


def test_wrong_key_is_502_ssh_authentication_failed_naming_the_host(
        admin: Api, hosts, ssh_engine: SSHEngine, unique: str) -> None:
    created = hosts(unique, ssh_engine.ssh_url, ssh={"private_key": new_user_key(),
                                                     "known_hosts": ssh_engine.known_hosts})
    assert created.status_code == 201, created.text
    body = assert_problem(admin.get(f"/hosts/{unique}/info"), 502)
    assert "ssh authentication failed" in body["detail"]
    assert f"'{unique}'" in body["detail"] and body["host"] == unique


def test_wrong_key_in_pem_format_fails_a_provision_with_502(
        operator: Api, hosts, ssh_engine: SSHEngine, unique: str) -> None:
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()).decode()
    assert hosts(unique, ssh_engine.ssh_url, ssh={"private_key": pem,
                                                  "known_hosts": ssh_engine.known_hosts}
                 ).status_code == 201
    response = operator.post(f"/hosts/{unique}/containers", params={"wait": 60},
                             json={"image": BUSYBOX, "name": unique, "command": ["true"]})
    if response.status_code == 200:
        job = response.json()
        assert job["state"] == "failed", job
        error = job["error"]
    else:  # the API's pre-flight read of the host already failed
        error = assert_problem(response, 502)
    assert error["status"] == 502 and "ssh authentication failed" in error["detail"]
    assert f"'{unique}'" in error["detail"]
    assert "PRIVATE KEY" not in response.text


def test_host_without_known_hosts_is_refused_502_host_key_not_trusted(
        admin: Api, hosts, ssh_engine: SSHEngine, unique: str) -> None:
    created = hosts(unique, ssh_engine.ssh_url, ssh={"private_key": ssh_engine.user_key})
    assert created.status_code == 201, created.text
    logins = ssh_engine.accepted_logins()
    body = assert_problem(admin.get(f"/hosts/{unique}/version"), 502)
    assert "host key not trusted" in body["detail"] and f"'{unique}'" in body["detail"]
    # The server's fingerprint is named so an admin can check it out of band.
    assert "SHA256:" in body["detail"]
    # The key was never offered to an unverified server.
    assert ssh_engine.accepted_logins() == logins


def test_changed_host_key_is_502_mismatch(admin: Api, hosts, ssh_engine: SSHEngine,
                                          unique: str) -> None:
    # The server's key is Ed25519: another Ed25519 key for its name is a changed key.
    impostor = openssh_public_key(ed25519.Ed25519PrivateKey.generate())
    assert ssh_engine.known_hosts.split()[1] == impostor.split()[0]
    created = hosts(unique, ssh_engine.ssh_url, ssh={
        "private_key": ssh_engine.user_key, "known_hosts": f"{ssh_engine.address} {impostor}\n"})
    assert created.status_code == 201, created.text
    logins = ssh_engine.accepted_logins()
    body = assert_problem(admin.get(f"/hosts/{unique}/version"), 502)
    assert "host key mismatch" in body["detail"] and f"'{unique}'" in body["detail"]
    assert ssh_engine.accepted_logins() == logins


def test_patch_with_a_bad_key_is_422_and_keeps_the_host_working(
        admin: Api, hosts, ssh_engine: SSHEngine, unique: str) -> None:
    material = {"private_key": ssh_engine.user_key, "known_hosts": ssh_engine.known_hosts}
    assert hosts(unique, ssh_engine.ssh_url, ssh=material).status_code == 201
    body = assert_problem(admin.patch(f"/hosts/{unique}", json={"ssh": {"private_key": "x"}}), 422)
    assert set(body["errors"]["ssh"]) == {"private_key"}
    assert_problem(admin.patch(f"/hosts/{unique}", json={"url": "tcp://10.0.0.5:2376"}), 422)
    assert admin.get(f"/hosts/{unique}/version").status_code == 200
    rotated = admin.patch(f"/hosts/{unique}", json={"ssh": material, "labels": {"r": "2"}})
    assert rotated.status_code == 200 and rotated.json()["ssh"] is True
    assert "PRIVATE KEY" not in rotated.text
    assert admin.get(f"/hosts/{unique}/version").status_code == 200


def test_sshd_down_answers_503_naming_the_host_and_recovers(admin: Api, ssh_engine: SSHEngine,
                                                            ssh_host: str) -> None:
    assert admin.get(f"/hosts/{ssh_host}/version").status_code == 200
    ssh_engine.stop_sshd()
    try:
        started = time.monotonic()
        response = admin.get(f"/hosts/{ssh_host}/version")
        elapsed = time.monotonic() - started
        if response.status_code != 503:
            # The worker's connection may die between two requests; the next one reconnects.
            response = admin.get(f"/hosts/{ssh_host}/version")
        body = assert_problem(response, 503)
        assert elapsed < 15
        assert f"'{ssh_host}'" in body["detail"] and body["host"] == ssh_host
    finally:
        ssh_engine.start_sshd()
    # The cached client reconnects once sshd is back.
    assert wait_until_ok(admin, f"/hosts/{ssh_host}/version").json()["Version"]
