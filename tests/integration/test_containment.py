"""Side doors an operator or a viewer might try, on the local engine and on a TLS host.

Each refusal is checked twice: the answer (403 naming the rule) and the engine afterwards
(no container made, no file written on the host, the target untouched).
"""

from __future__ import annotations

import contextlib
import io
import os
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.integration.conftest import Api
from tests.integration.helpers import BUSYBOX, outcome, refused
from tests.support.remote_engine import RemoteEngine, start_on_a_free_subnet

LOCAL = "/hosts/local/containers"
SLEEP = ["sleep", "300"]


def provision(api: Api, spec: dict, base: str = LOCAL):
    return api.post(base, json={"image": BUSYBOX, "command": SLEEP, **spec}, params={"wait": 60})


def no_container(engine: docker.DockerClient, name: str) -> bool:
    return engine.containers.list(all=True, filters={"name": f"^/{name}$"}) == []


def run_unmanaged(engine: docker.DockerClient, cleanup: list[str], name: str, **kwargs):
    """A container made on the engine directly, as another tool or tenant would."""
    cleanup.append(name)
    return engine.containers.run(BUSYBOX, SLEEP, name=name, detach=True, **kwargs)


@pytest.fixture
def volumes(engine: docker.DockerClient) -> Iterator[list[str]]:
    made: list[str] = []
    yield made
    for name in made:
        with contextlib.suppress(docker.errors.NotFound):
            engine.volumes.get(name).remove(force=True)


@pytest.fixture
def outside(state_dir: Path, unique: str) -> Path:
    """A host folder outside the bind roots, holding a file an attacker would want."""
    folder = state_dir / "outside" / unique
    folder.mkdir(parents=True)
    (folder / "shadow").write_text("root:secret\n")
    return folder


# -- network and namespaces ------------------------------------------------------------------


@pytest.mark.parametrize("field, value, rule", [
    ("network", "container:{x}", "no-container-namespace"),
    ("pid_mode", "container:{x}", "no-container-namespace"),
    ("ipc_mode", "container:{x}", "no-container-namespace"),
    ("network", "HOST", "no-host-network"),
    ("network", "{host_id}", "allowed-networks"),
    ("network", "{host_prefix}", "allowed-networks"),
    ("userns_mode", "host", "no-host-userns"),
    ("cgroupns", "host", "no-host-cgroupns"),
])
def test_no_side_door_into_the_hosts_namespaces(operator, engine, unique, cleanup, field, value,
                                                rule):
    x = f"{unique}-hostns"
    run_unmanaged(engine, cleanup, x, network_mode="host", pid_mode="host", ipc_mode="host")
    host_id = engine.networks.get("host").id
    value = value.format(x=x, host_id=host_id, host_prefix=host_id[:12])
    refused(provision(operator, {"name": unique, field: value}), rule)
    assert no_container(engine, unique)


def test_a_listed_network_is_judged_by_what_the_engine_resolves(operator, engine, unique,
                                                                cleanup):
    # Not listed in DOCKYARD_ALLOWED_NETWORKS: refused by name and by id alike.
    network = engine.networks.create(unique, driver="bridge")
    try:
        refused(provision(operator, {"name": unique, "network": unique}), "allowed-networks")
        refused(provision(operator, {"name": unique, "network": network.id}),
                "allowed-networks")
        assert no_container(engine, unique)
    finally:
        network.remove()


# -- volumes_from and named volumes ------------------------------------------------------------


def test_volumes_from_an_unmanaged_container_with_the_host_root_is_refused(
        operator, engine, unique, cleanup):
    lender = f"{unique}-root"
    cleanup.append(lender)
    engine.containers.create(BUSYBOX, SLEEP, name=lender, volumes={"/": {"bind": "/hostroot",
                                                                         "mode": "ro"}})
    refused(provision(operator, {"name": unique, "volumes_from": [lender]}), "volumes-from")
    assert no_container(engine, unique)


def test_forged_managed_labels_do_not_lend_a_host_mount(operator, engine, unique, cleanup):
    lender = f"{unique}-forged"
    cleanup.append(lender)
    engine.containers.create(BUSYBOX, SLEEP, name=lender,
                             labels={"dockyard.managed": "true", "dockyard.scope": "*"},
                             volumes={"/": {"bind": "/hostroot", "mode": "ro"}})
    refused(provision(operator, {"name": unique, "volumes_from": [lender]}), "no-engine-socket")
    assert no_container(engine, unique)


def test_volumes_from_a_managed_container_in_scope_works(operator, engine, unique, cleanup):
    cleanup.extend([f"{unique}-a", f"{unique}-b"])
    lender = provision(operator, {"name": f"{unique}-a", "volumes": ["/data"]})
    assert outcome(lender)[0] == 200, lender.text
    borrower = provision(operator, {"name": f"{unique}-b", "volumes_from": [f"{unique}-a:ro"]})
    assert outcome(borrower)[0] == 200, borrower.text
    mounts = engine.containers.get(f"{unique}-b").attrs["Mounts"]
    assert [m["Destination"] for m in mounts] == ["/data"]


def test_a_named_volume_that_binds_a_host_folder_is_refused(operator, engine, unique, cleanup,
                                                             volumes, outside):
    volumes.append(unique)
    engine.volumes.create(unique, driver="local", driver_opts={
        "type": "none", "o": "bind", "device": str(outside)})
    problem = refused(provision(operator, {"name": unique, "volumes": [f"{unique}:/x"]}),
                      "volume-options")
    assert "o=bind" in problem["detail"]
    assert no_container(engine, unique)


def test_operators_create_only_local_volumes(operator, make_token, engine, unique, volumes):
    response = operator.post("/hosts/local/volumes", json={"name": unique, "driver": "rexray"})
    assert response.status_code == 403 and response.json()["rule"] == "volume-drivers"
    reserved = operator.post("/hosts/local/volumes", json={
        "name": unique, "labels": {"dockyard.system": "true"}})
    assert reserved.status_code == 403 and reserved.json()["rule"] == "reserved-labels"
    with pytest.raises(docker.errors.NotFound):
        engine.volumes.get(unique)
    # A plain local volume is made, labelled with its creator's scope.
    volumes.append(unique)
    scoped = make_token("operator", hosts=["local"])
    made = scoped.post("/hosts/local/volumes", params={"wait": 30}, json={"name": unique})
    assert outcome(made)[0] == 200, made.text
    assert engine.volumes.get(unique).attrs["Labels"]["dockyard.scope"] == "local"


# -- bind roots: symlinks planted inside a root ---------------------------------------------------


def _symlink_tar(name: str, target: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        link = tarfile.TarInfo(name)
        link.type, link.linkname = tarfile.SYMTYPE, target
        tar.addfile(link)
    return buffer.getvalue()


def _plant_symlinks(operator: Api, base: str, writer: str) -> None:
    """Inside a managed container whose /data is a rw bind under a root: ``ln -s`` and a tar."""
    made = operator.post(f"{base}/{writer}/exec", params={"wait": 60},
                         json={"cmd": ["ln", "-s", "/", "/data/by-exec"]})
    assert outcome(made)[0] == 200 and made.json()["result"]["exit_code"] == 0, made.text
    put = operator.put(f"{base}/{writer}/archive", params={"path": "/data", "wait": 60},
                       data=_symlink_tar("by-tar", "/etc"),
                       headers={"Content-Type": "application/x-tar"})
    assert outcome(put)[0] == 200, put.text


def _symlink_escapes_are_refused(operator: Api, engine: docker.DockerClient, base: str,
                                 folder: Path, unique: str, cleanup: list[str]) -> None:
    writer = f"{unique}-w"
    cleanup.append(writer)
    assert outcome(provision(operator, {"name": writer, "volumes": [f"{folder}:/data"]},
                             base))[0] == 200
    _plant_symlinks(operator, base, writer)
    assert os.readlink(folder / "by-exec") == "/" and os.readlink(folder / "by-tar") == "/etc"
    for link, deeper in (("by-exec", ""), ("by-tar", ""), ("by-exec", "/etc")):
        name = f"{unique}-{link}"
        cleanup.append(name)
        refused(provision(operator, {"name": name, "volumes": [f"{folder}/{link}{deeper}:/h"]},
                          base), "bind-roots")
        assert no_container(engine, name)
    # A plain folder under the root still mounts.
    (folder / "plain").mkdir()
    assert outcome(provision(operator, {"name": f"{unique}-ok",
                                        "volumes": [f"{folder}/plain:/h:ro"]}, base))[0] == 200
    cleanup.append(f"{unique}-ok")


def test_symlinks_planted_in_a_bind_root_do_not_lead_out_of_it(operator, engine, bind_root,
                                                                unique, cleanup):
    folder = bind_root / unique
    folder.mkdir()
    _symlink_escapes_are_refused(operator, engine, LOCAL, folder, unique, cleanup)


# -- ownership: what a non-admin may touch ------------------------------------------------------


def test_an_unmanaged_container_with_a_host_mount_is_out_of_an_operators_reach(
        operator, admin, engine, bind_root, unique, cleanup):
    folder = bind_root / unique
    folder.mkdir()
    run_unmanaged(engine, cleanup, unique, volumes={str(folder): {"bind": "/data", "mode": "rw"}})
    refused(operator.post(f"{LOCAL}/{unique}/exec", json={"cmd": ["touch", "/data/by-exec"]}),
            "managed-only")
    refused(operator.put(f"{LOCAL}/{unique}/archive", params={"path": "/data"},
                         data=_symlink_tar("by-tar", "/"),
                         headers={"Content-Type": "application/x-tar"}), "managed-only")
    for verb in ("stop", "kill", "pause"):
        refused(operator.post(f"{LOCAL}/{unique}/{verb}", params={"wait": 30}), "managed-only")
    refused(operator.delete(f"{LOCAL}/{unique}", params={"force": "true", "wait": 30}),
            "managed-only")
    refused(operator.post(f"{LOCAL}/{unique}/update", params={"wait": 30},
                          json={"memory": "64m"}), "managed-only")
    refused(operator.post(f"{LOCAL}/{unique}/commit", params={"wait": 30},
                          json={"repository": f"dyt/{unique}"}), "managed-only")
    refused(operator.post(f"{LOCAL}/{unique}/backups", json={}), "managed-only")
    refused(operator.get(f"{LOCAL}/{unique}/logs"), "managed-only")
    refused(operator.get(f"{LOCAL}/{unique}"), "managed-only")
    refused(provision(operator, {"name": unique, "replace": True}), "managed-only")
    assert sorted(p.name for p in folder.iterdir()) == []
    container = engine.containers.get(unique)
    assert container.status == "running" and container.attrs["HostConfig"]["Memory"] == 0
    assert engine.images.list(name=f"dyt/{unique}") == []
    # Listings still show it, and an admin may act on it.
    listed = operator.get(LOCAL, params={"name": unique}).json()
    assert [c["name"] for c in listed] == [unique]
    done = admin.post(f"{LOCAL}/{unique}/exec", params={"wait": 30}, json={"cmd": ["true"]})
    assert outcome(done)[0] == 200, done.text
    denials = admin.get("/audit", params={"outcome": "denied", "limit": 200}).json()["items"]
    routes = {e["route"] for e in denials if e.get("rule") == "managed-only"
              and unique in (e.get("path") or "") + (e.get("target") or "")}
    assert {"/api/v1/hosts/<string:host>/containers/<string:ref>/exec",
            "containers.action"} <= routes, routes


def test_a_scoped_operator_cannot_touch_containers_made_outside_its_scope(
        operator, make_token, engine, unique, cleanup):
    cleanup.append(unique)
    assert outcome(provision(operator, {"name": unique}))[0] == 200
    scoped = make_token("operator", hosts=["local"])
    refused(scoped.post(f"{LOCAL}/{unique}/stop", params={"wait": 30}), "owner-scope")
    refused(scoped.post(f"{LOCAL}/{unique}/exec", json={"cmd": ["true"]}), "owner-scope")
    assert engine.containers.get(unique).status == "running"
    # What the scoped token makes itself, it may drive.
    mine = f"{unique}-mine"
    cleanup.append(mine)
    assert outcome(provision(scoped, {"name": mine}))[0] == 200
    assert engine.containers.get(mine).labels["dockyard.scope"] == "local"
    assert outcome(scoped.post(f"{LOCAL}/{mine}/stop", params={"wait": 30}))[0] == 200


def test_a_non_admin_prune_removes_only_what_it_may_remove(operator, make_token, engine,
                                                           unique, cleanup):
    theirs, unmanaged = f"{unique}-theirs", f"{unique}-unmanaged"
    cleanup.extend([theirs, unmanaged])
    assert outcome(provision(operator, {"name": theirs, "labels": {"dyt.case": unique},
                                        "command": ["true"], "wait_for": "none"}))[0] == 200
    engine.containers.create(BUSYBOX, ["true"], name=unmanaged, labels={"dyt.case": unique})
    scoped = make_token("operator", hosts=["local"])
    mine = f"{unique}-mine"
    cleanup.append(mine)
    assert outcome(provision(scoped, {"name": mine, "labels": {"dyt.case": unique},
                                      "command": ["true"], "wait_for": "none"}))[0] == 200
    engine.containers.get(theirs).wait(timeout=30)
    engine.containers.get(mine).wait(timeout=30)
    mine_id = engine.containers.get(mine).id
    job = scoped.post(f"{LOCAL}/prune", params={"wait": 60},
                      json={"filters": {"label": [f"dyt.case={unique}"]}})
    assert outcome(job)[0] == 200, job.text
    assert job.json()["result"]["deleted"] == [mine_id]
    left = {c.name for c in engine.containers.list(all=True, filters={"label": f"dyt.case={unique}"})}
    assert left == {theirs, unmanaged}


def test_dockyards_own_containers_are_out_of_every_roles_reach(admin, operator, viewer, engine,
                                                               unique, cleanup):
    secret = "system-secret-" + unique
    run_unmanaged(engine, cleanup, unique, labels={"dockyard.system": "true"},
                  environment={"DOCKYARD_SECRET_KEY": secret})
    refused(admin.post(f"{LOCAL}/{unique}/exec", json={"cmd": ["true"]}), "dockyard-system")
    refused(admin.delete(f"{LOCAL}/{unique}", params={"force": "true", "wait": 30}),
            "dockyard-system")
    refused(admin.post(f"{LOCAL}/{unique}/commit", params={"wait": 30},
                       json={"repository": f"dyt/{unique}"}), "dockyard-system")
    refused(admin.get(f"{LOCAL}/{unique}/archive", params={"path": "/"}), "dockyard-system")
    for api in (admin, operator, viewer):
        answer = api.get(f"{LOCAL}/{unique}")
        if api is admin:
            assert answer.status_code == 200 and secret not in answer.text, answer.text
            assert "DOCKYARD_SECRET_KEY=<redacted>" in answer.json()["Config"]["Env"]
        else:
            assert answer.status_code == 403  # not managed: listings only
    assert engine.containers.get(unique).status == "running"


# -- readers learn no secrets ------------------------------------------------------------------


def test_viewers_read_no_environment_values_labels_or_arguments(operator, viewer, engine, unique,
                                                                 cleanup):
    password = "pw-" + unique
    cleanup.append(unique)
    made = provision(operator, {"name": unique, "env": {"DB_PASSWORD": password},
                                "labels": {"db-password": password, "team": "a"},
                                "command": ["sh", "-c", f"sleep 300 # {password}"]})
    assert outcome(made)[0] == 200, made.text
    seen = viewer.get(f"{LOCAL}/{unique}")
    assert seen.status_code == 200 and password not in seen.text, seen.text
    assert "DB_PASSWORD=<redacted>" in seen.json()["Config"]["Env"]
    assert seen.json()["Config"]["Labels"]["team"] == "a"
    listed = viewer.get(LOCAL, params={"name": unique})
    assert listed.status_code == 200 and password not in listed.text
    top = viewer.get(f"{LOCAL}/{unique}/top")
    assert top.status_code == 200 and password not in top.text, top.text
    events = viewer.get("/hosts/local/events", params={"container": unique, "since": "5m"})
    assert events.status_code == 200 and password not in events.text
    # The operator who runs it sees it whole.
    assert password in operator.get(f"{LOCAL}/{unique}").text
    assert viewer.get(f"{LOCAL}/{unique}/archive", params={"path": "/"}).status_code == 403


def test_viewers_cannot_download_backup_content(operator, viewer, unique, cleanup):
    cleanup.append(unique)
    assert outcome(provision(operator, {"name": unique, "env": {"TOKEN": "t-" + unique}}))[0] == 200
    job = operator.post(f"{LOCAL}/{unique}/backups", params={"wait": 60}, json={})
    assert outcome(job)[0] == 200, job.text
    backup = job.json()["id"]
    try:
        assert viewer.get(f"/backups/{backup}").status_code == 200
        denied = viewer.get(f"/backups/{backup}/content")
        assert denied.status_code == 403 and denied.json()["required_role"] == "operator"
        assert operator.get(f"/backups/{backup}/content").status_code == 200
    finally:
        operator.delete(f"/backups/{backup}")


# -- the same on a host reached over mutual TLS ---------------------------------------------------


@pytest.fixture(scope="module")
def tls_engine(state_dir: Path) -> Iterator[RemoteEngine]:
    remote = start_on_a_free_subnet(f"cnt{os.getpid() % 100000}", state_dir, range(40, 50))
    try:
        yield remote
    finally:
        remote.stop()


@pytest.fixture(scope="module")
def tls_host(tls_engine: RemoteEngine, admin: Api, engine: docker.DockerClient) -> Iterator[str]:
    tls_engine.load_image_from(engine, BUSYBOX)
    name = f"tls-{tls_engine.name}"
    response = admin.post("/hosts", json={"name": name, "url": tls_engine.url, "tls": {
        "ca_cert": tls_engine.ca_pem, "client_cert": tls_engine.client_cert_pem,
        "client_key": tls_engine.client_key_pem}})
    assert response.status_code == 201, response.text
    deadline = time.monotonic() + 30
    while admin.get(f"/hosts/{name}/info").status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    yield name
    admin.delete(f"/hosts/{name}")


@pytest.mark.remote
def test_side_doors_stay_shut_on_a_tls_host(operator, tls_engine, tls_host, bind_root, unique):
    base = f"/hosts/{tls_host}/containers"
    remote = tls_engine.client()
    made: list[str] = []
    try:
        # A container with the host root, made on that engine directly.
        lender = f"{unique}-root"
        made.append(lender)
        remote.containers.create(BUSYBOX, SLEEP, name=lender,
                                 volumes={"/": {"bind": "/hostroot", "mode": "ro"}})
        refused(provision(operator, {"name": unique, "volumes_from": [lender]}, base),
                "volumes-from")
        refused(operator.post(f"{base}/{lender}/start", params={"wait": 30}), "managed-only")
        assert no_container(remote, unique)
        # Symlinks planted inside the root are judged on that engine's host.
        folder = bind_root / f"{unique}-tls"
        folder.mkdir()
        _symlink_escapes_are_refused(operator, remote, base, folder, unique, made)
    finally:
        for name in made:
            with contextlib.suppress(docker.errors.NotFound):
                remote.containers.get(name).remove(force=True, v=True)
        remote.close()


def test_volumes_made_elsewhere_or_by_dockyard_itself_are_not_removed(operator, admin, engine,
                                                                      unique, volumes):
    theirs, system = f"{unique}-theirs", f"{unique}-system"
    volumes.extend([theirs, system])
    engine.volumes.create(theirs, labels={"dyt.case": unique})
    engine.volumes.create(system, labels={"dyt.case": unique, "dockyard.system": "true"})
    refused(operator.delete(f"/hosts/local/volumes/{theirs}", params={"wait": 30}),
            "managed-only")
    refused(admin.delete(f"/hosts/local/volumes/{system}", params={"wait": 30}),
            "dockyard-system")
    for api in (operator, admin):
        pruned = api.post("/hosts/local/volumes/prune", params={"wait": 30},
                          json={"filters": {"label": [f"dyt.case={unique}"]}})
        assert outcome(pruned)[0] == 200, pruned.text
    left = {v.name for v in engine.volumes.list(filters={"label": f"dyt.case={unique}"})}
    assert left == {system}  # the admin's prune took the unmanaged one, nobody the system one
