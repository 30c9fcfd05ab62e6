"""/hosts: the inventory, engine-wide reads against real engines, and remote hosts over mTLS."""

from __future__ import annotations

import json
import math
import os
import re
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import pytest
import redis
import requests

from tests.integration.conftest import BUSYBOX, Api
from tests.support.pki import client_tls
from tests.support.remote_engine import RemoteEngine, wrong_ca_pem

PROBLEM_JSON = "application/problem+json"


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def assert_problem(response: requests.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].split(";")[0] == PROBLEM_JSON
    body = response.json()
    assert {"type", "title", "status", "detail"} <= set(body)
    assert body["status"] == status
    return body


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


def local_url() -> str:
    return os.environ["DOCKER_HOST"]


# --------------------------------------------------------------------------- lifecycle


def test_register_list_get_patch_delete_a_host(admin: Api, hosts, unique: str,
                                               engine: docker.DockerClient) -> None:
    created = hosts(unique, local_url(), labels={"zone": "a"})
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["name"] == unique and body["url"] == local_url()
    assert body["route"] == "central" and body["labels"] == {"zone": "a"} and body["tls"] is False
    assert body["lanes_alive"] == {"ops": True, "query": True}

    listed = {h["name"]: h for h in admin.get("/hosts").json()}
    assert {"local", unique} <= set(listed)
    assert listed[unique]["labels"] == {"zone": "a"}

    detail = admin.get(f"/hosts/{unique}")
    assert detail.status_code == 200, detail.text
    assert detail.json()["live"]["reachable"] is True
    assert detail.json()["live"]["engine_version"] == engine.version()["Version"]

    patched = admin.patch(f"/hosts/{unique}", json={"labels": {"zone": "b", "tier": "db"}})
    assert patched.status_code == 200, patched.text
    assert patched.json()["labels"] == {"zone": "b", "tier": "db"}
    assert patched.json()["updated_at"] >= body["updated_at"]
    assert admin.get(f"/hosts/{unique}").json()["labels"] == {"zone": "b", "tier": "db"}

    deleted = admin.delete(f"/hosts/{unique}")
    assert deleted.status_code == 204
    assert_problem(admin.get(f"/hosts/{unique}"), 404)
    assert unique not in [h["name"] for h in admin.get("/hosts").json()]


def test_patching_the_url_takes_effect_on_the_next_read(admin: Api, hosts, unique: str) -> None:
    assert hosts(unique, local_url()).status_code == 201
    assert admin.get(f"/hosts/{unique}/version").status_code == 200
    port = closed_port()
    patched = admin.patch(f"/hosts/{unique}", json={"url": f"tcp://127.0.0.1:{port}"})
    assert patched.status_code == 200, patched.text
    assert_problem(admin.get(f"/hosts/{unique}/version"), 503)


def test_unsupported_scheme_is_422_and_registers_nothing(admin: Api, hosts, unique: str) -> None:
    body = assert_problem(hosts(unique, "http://127.0.0.1:2375"), 422)
    assert "unsupported scheme" in body["detail"]
    assert list(body["errors"]) == ["url"]
    assert_problem(admin.get(f"/hosts/{unique}"), 404)


def test_ssh_url_without_a_key_is_422_with_an_explanation(admin: Api, hosts, unique: str) -> None:
    # ssh:// hosts themselves are covered in test_ssh_hosts.py.
    body = assert_problem(hosts(unique, "ssh://deploy@10.0.0.5"), 422)
    assert "ssh://" in body["detail"] and "private_key" in body["detail"]
    assert list(body["errors"]) == ["ssh"]
    assert_problem(admin.get(f"/hosts/{unique}"), 404)


def test_plain_tcp_off_loopback_is_422(admin: Api, hosts, unique: str) -> None:
    body = assert_problem(hosts(unique, "tcp://10.0.0.5:2375"), 422)
    assert "mutual TLS" in body["detail"]
    assert_problem(admin.get(f"/hosts/{unique}"), 404)


def test_tls_that_does_not_parse_is_422_keyed_per_field(admin: Api, hosts, unique: str) -> None:
    material = {**client_tls(), "ca_cert": "-----BEGIN CERTIFICATE-----\nnope\n", "client_key": "x"}
    body = assert_problem(hosts(unique, "tcp://10.0.0.5:2376", tls=material), 422)
    assert set(body["errors"]["tls"]) == {"ca_cert", "client_key"}
    assert_problem(admin.get(f"/hosts/{unique}"), 404)


def test_tls_with_a_key_that_does_not_match_is_422(admin: Api, hosts, unique: str) -> None:
    material = {**client_tls("a"), "client_key": client_tls("b")["client_key"]}
    body = assert_problem(hosts(unique, "tcp://10.0.0.5:2376", tls=material), 422)
    assert body["errors"]["tls"] == {"client_key": ["does not match client_cert"]}
    assert_problem(admin.get(f"/hosts/{unique}"), 404)


def test_incomplete_tls_is_422_naming_the_missing_field(admin: Api, hosts, unique: str) -> None:
    material = client_tls()
    del material["client_key"]
    body = assert_problem(hosts(unique, "tcp://10.0.0.5:2376", tls=material), 422)
    assert "client_key" in json.dumps(body["errors"])
    assert_problem(admin.get(f"/hosts/{unique}"), 404)


def test_duplicate_name_is_409_and_keeps_the_first_host(admin: Api, hosts, unique: str) -> None:
    assert hosts(unique, local_url()).status_code == 201
    body = assert_problem(hosts(unique, f"tcp://127.0.0.1:{closed_port()}"), 409)
    assert unique in body["detail"]
    assert admin.get(f"/hosts/{unique}").json()["url"] == local_url()


def test_reserved_name_is_422(hosts) -> None:
    body = assert_problem(hosts("auto", local_url()), 422)
    assert "reserved" in body["detail"]


def test_host_name_with_a_trailing_newline_is_422(hosts, unique: str) -> None:
    assert_problem(hosts(unique + "\n", local_url()), 422)


def test_invalid_patch_is_422_and_changes_nothing(admin: Api, hosts, unique: str) -> None:
    assert hosts(unique, local_url(), labels={"keep": "me"}).status_code == 201
    before = admin.get(f"/hosts/{unique}").json()
    assert_problem(admin.patch(f"/hosts/{unique}", json={"url": "ftp://x"}), 422)
    assert_problem(admin.patch(f"/hosts/{unique}", json={"name": "renamed"}), 422)
    after = admin.get(f"/hosts/{unique}").json()
    assert (after["url"], after["labels"], after["updated_at"]) == \
        (before["url"], before["labels"], before["updated_at"])


def test_removing_tls_from_an_off_loopback_host_is_422(admin: Api, hosts, unique: str) -> None:
    assert hosts(unique, "tcp://10.0.0.5:2376", tls=client_tls()).status_code == 201
    body = assert_problem(admin.patch(f"/hosts/{unique}", json={"tls": None}), 422)
    assert "mutual TLS" in body["detail"]
    assert {h["name"]: h["tls"] for h in admin.get("/hosts").json()}[unique] is True


# --------------------------------------------------------------------------- unreachable / unknown


def test_loopback_host_on_a_closed_port_registers_and_answers_503_quickly(
        admin: Api, hosts, unique: str) -> None:
    created = hosts(unique, f"tcp://127.0.0.1:{closed_port()}")
    assert created.status_code == 201, created.text
    started = time.monotonic()
    body = assert_problem(admin.get(f"/hosts/{unique}/info"), 503)
    assert time.monotonic() - started < 5
    assert f"'{unique}'" in body["detail"]
    assert body["host"] == unique


def test_unreachable_host_detail_reports_not_reachable(admin: Api, hosts, unique: str) -> None:
    assert hosts(unique, f"tcp://127.0.0.1:{closed_port()}").status_code == 201
    response = admin.get(f"/hosts/{unique}")
    assert response.status_code == 200, response.text
    live = response.json()["live"]
    assert live["reachable"] is False
    assert live["error"]["status"] == 503 and unique in live["error"]["detail"]


@pytest.mark.parametrize(("method", "path"), [
    ("GET", ""), ("PATCH", ""), ("DELETE", ""), ("GET", "/info"), ("GET", "/version"),
    ("GET", "/df"),
])
def test_unknown_host_is_404_on_every_route(admin: Api, method: str, path: str) -> None:
    payload = {"labels": {}} if method == "PATCH" else None
    body = assert_problem(admin.request(method, f"/hosts/no-such-host{path}", json=payload), 404)
    assert "no-such-host" in body["detail"]


def test_a_host_registered_again_under_the_same_name_uses_its_new_url(
        admin: Api, hosts, unique: str) -> None:
    assert hosts(unique, local_url()).status_code == 201
    assert admin.get(f"/hosts/{unique}/info").status_code == 200
    assert admin.delete(f"/hosts/{unique}").status_code == 204
    assert hosts(unique, f"tcp://127.0.0.1:{closed_port()}").status_code == 201
    assert_problem(admin.get(f"/hosts/{unique}/info"), 503)


# --------------------------------------------------------------------------- the local engine


def test_local_host_is_live_with_the_engines_version(admin: Api, engine: docker.DockerClient,
                                                     viewer: Api) -> None:
    response = viewer.get("/hosts/local")
    assert response.status_code == 200, response.text
    body = response.json()
    version = engine.version()
    assert body["live"]["reachable"] is True
    assert body["live"]["engine_version"] == version["Version"]
    assert body["live"]["api_version"] == version["ApiVersion"]
    assert body["live"]["architecture"] == engine.info()["Architecture"]
    # The live read also records when the host was last seen.
    assert body["engine_version"] == version["Version"]
    assert body["last_seen"]


def test_local_version_is_the_engines(admin: Api, engine: docker.DockerClient) -> None:
    response = admin.get("/hosts/local/version")
    assert response.status_code == 200, response.text
    expected = engine.version()
    assert {k: response.json()[k] for k in ("Version", "ApiVersion", "GitCommit")} == \
        {k: expected[k] for k in ("Version", "ApiVersion", "GitCommit")}


def test_local_info_is_the_engines(viewer: Api, engine: docker.DockerClient) -> None:
    response = viewer.get("/hosts/local/info")
    assert response.status_code == 200, response.text
    info = engine.info()
    assert response.json()["ID"] == info["ID"]
    assert response.json()["DockerRootDir"] == info["DockerRootDir"]


_DF_TYPES = {"Images": "images", "Containers": "containers", "Local Volumes": "volumes",
             "Build Cache": "build_cache"}
_UNITS = {"B": 1, "kB": 1e3, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12, "PB": 1e15}


def cli_size(text: str) -> tuple[float, float]:
    """A size as `docker system df` prints it ("1.985MB (100%)"): bytes and rounding slack."""
    match = re.fullmatch(r"([0-9.]+(?:e\+?[0-9]+)?)([kKMGTP]?B)", text.split()[0])
    assert match, text
    number, unit = float(match[1]), _UNITS[match[2]]
    # The CLI keeps 4 significant digits (go-units HumanSize).
    slack = 0.5 * 10 ** (math.floor(math.log10(number)) - 3) * unit if number else 0.5
    return number * unit, slack


def cli_df() -> dict[str, dict[str, str]]:
    out = subprocess.run(["docker", "system", "df", "--format", "{{json .}}"],
                         capture_output=True, text=True, check=True, timeout=60,
                         env={**os.environ, "DOCKER_HOST": local_url()}).stdout
    return {_DF_TYPES[row["Type"]]: row for row in map(json.loads, out.splitlines())}


def test_local_df_agrees_with_docker_system_df(admin: Api, engine: docker.DockerClient,
                                              unique: str) -> None:
    # Something of each kind the comparison can count: a volume used by a (created) container.
    volume = engine.volumes.create(unique, labels={"dockyard.test": "df"})
    try:
        container = engine.containers.create(BUSYBOX, name=unique, command=["true"],
                                             volumes={unique: {"bind": "/data", "mode": "rw"}})
        # The engine is shared with other tests: compare only against a CLI view that did not
        # change while the API answered.
        for _ in range(5):
            before = cli_df()
            response = admin.get("/hosts/local/df")
            after = cli_df()
            if before == after:
                break
        assert response.status_code == 200, response.text
        api = response.json()
        assert int(before["volumes"]["TotalCount"]) >= 1
        assert int(before["containers"]["TotalCount"]) >= 1
        for kind in ("images", "containers", "volumes", "build_cache"):
            cli = before[kind]
            assert api[kind]["total"] == int(cli["TotalCount"]), (kind, api[kind], cli)
            assert api[kind]["active"] == int(cli["Active"]), (kind, api[kind], cli)
            for field, column in (("size", "Size"), ("reclaimable", "Reclaimable")):
                expected, slack = cli_size(cli[column])
                assert abs(api[kind][field] - expected) <= slack, (kind, field, api[kind], cli)
        container.remove(force=True)
    finally:
        for leftover in engine.containers.list(all=True, filters={"name": f"^/{unique}$"}):
            leftover.remove(force=True)
        volume.remove(force=True)


# --------------------------------------------------------------------------- secrets


def test_tls_material_is_never_returned(admin: Api, viewer: Api, hosts, unique: str) -> None:
    material = client_tls()
    url = f"tcp://127.0.0.1:{closed_port()}"
    created = hosts(unique, url, tls=material)
    assert created.status_code == 201, created.text
    assert created.json()["tls"] is True
    answers = [
        created,
        admin.get("/hosts"),
        viewer.get("/hosts"),
        admin.get(f"/hosts/{unique}"),
        admin.patch(f"/hosts/{unique}", json={"tls": client_tls("rotated"), "labels": {"r": "2"}}),
    ]
    for response in answers:
        assert response.status_code == 200 or response.status_code == 201, response.text
        assert "BEGIN" not in response.text
        assert "PRIVATE KEY" not in response.text
    assert {h["name"]: h["tls"] for h in admin.get("/hosts").json()}[unique] is True


def test_tls_material_is_encrypted_at_rest(hosts, unique: str, test_redis: redis.Redis) -> None:
    material = client_tls()
    assert hosts(unique, "tcp://10.0.0.5:2376", tls=material).status_code == 201
    stored = test_redis.hget("dy:hosts", unique)
    assert stored is not None and unique in stored
    assert "BEGIN" not in stored
    # Not merely re-encoded: no recognisable piece of the key survives.
    key_body = "".join(material["client_key"].splitlines()[1:-1])
    assert key_body[:40] not in stored


# --------------------------------------------------------------------------- a remote host over mTLS


@pytest.fixture(scope="module")
def remote(state_dir: Path) -> Iterator[RemoteEngine]:
    engine = RemoteEngine("t2", state_dir, subnet_index=3)
    try:
        engine.start()
        yield engine
    finally:
        engine.stop()


def remote_tls(remote: RemoteEngine, **override: str) -> dict[str, str]:
    return {"ca_cert": remote.ca_pem, "client_cert": remote.client_cert_pem,
            "client_key": remote.client_key_pem, **override}


@pytest.fixture(scope="module")
def remote_host(remote: RemoteEngine, admin: Api) -> Iterator[str]:
    name = f"remote-{remote.name}"
    response = admin.post("/hosts", json={"name": name, "url": remote.url,
                                          "tls": remote_tls(remote), "labels": {"kind": "netns"}})
    assert response.status_code == 201, response.text
    yield name
    admin.delete(f"/hosts/{name}")


@pytest.mark.remote
def test_remote_host_info_is_the_remote_engines(admin: Api, remote: RemoteEngine, remote_host: str,
                                                engine: docker.DockerClient) -> None:
    response = admin.get(f"/hosts/{remote_host}/info")
    assert response.status_code == 200, response.text
    client = remote.client()
    try:
        remote_id = client.info()["ID"]
    finally:
        client.close()
    assert response.json()["ID"] == remote_id
    assert remote_id != engine.info()["ID"]


@pytest.mark.remote
def test_remote_host_is_live_and_its_record_hides_the_tls(admin: Api, remote: RemoteEngine,
                                                         remote_host: str) -> None:
    response = admin.get(f"/hosts/{remote_host}")
    assert response.status_code == 200, response.text
    body = response.json()
    client = remote.client()
    try:
        version = client.version()["Version"]
    finally:
        client.close()
    assert body["live"]["reachable"] is True
    assert body["live"]["engine_version"] == version
    assert body["url"] == remote.url and body["tls"] is True
    assert "BEGIN" not in response.text


@pytest.mark.remote
def test_remote_host_with_the_wrong_ca_answers_502_naming_the_host(
        admin: Api, hosts, remote: RemoteEngine, unique: str) -> None:
    created = hosts(unique, remote.url, tls=remote_tls(remote, ca_cert=wrong_ca_pem()))
    assert created.status_code == 201, created.text
    body = assert_problem(admin.get(f"/hosts/{unique}/info"), 502)
    assert f"'{unique}'" in body["detail"]
    assert "TLS" in body["detail"]
    assert "BEGIN" not in json.dumps(body)


def wait_until_ok(admin: Api, path: str, timeout: float = 15) -> requests.Response:
    deadline = time.monotonic() + timeout
    while (answer := admin.get(path)).status_code != 200:
        assert time.monotonic() < deadline, answer.text
        time.sleep(0.2)
    return answer


@pytest.mark.remote
def test_remote_host_cut_off_answers_503_quickly_and_recovers(
        admin: Api, hosts, remote: RemoteEngine, unique: str) -> None:
    assert hosts(unique, remote.url, tls=remote_tls(remote)).status_code == 201
    remote.link_down()
    try:
        started = time.monotonic()
        body = assert_problem(admin.get(f"/hosts/{unique}/version"), 503)
        assert time.monotonic() - started < 5
        assert f"'{unique}'" in body["detail"]
    finally:
        remote.link_up()
    assert wait_until_ok(admin, f"/hosts/{unique}/version").json()["Version"]


@pytest.mark.remote
def test_remote_host_cut_off_after_use_answers_503_quickly(admin: Api, remote: RemoteEngine,
                                                          remote_host: str) -> None:
    assert admin.get(f"/hosts/{remote_host}/version").status_code == 200
    remote.link_down()
    try:
        started = time.monotonic()
        response = admin.get(f"/hosts/{remote_host}/version")
        elapsed = time.monotonic() - started
    finally:
        remote.link_up()
        wait_until_ok(admin, f"/hosts/{remote_host}/version")
    # A pooled connection only notices after the engine timeout (10 s); the worker then
    # checks on a fresh connection, which fails at once, so the answer is 503, not 504.
    assert_problem(response, 503)
    assert elapsed < 15
