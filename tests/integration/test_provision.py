"""Provisioning (docker run -d) through the API against the real engine."""

from __future__ import annotations

import io
import os
import signal
import subprocess

import docker
import pytest
import requests

from app.engine import bind_check
from app.security.policy import Policy
from tests.integration.helpers import (
    BUSYBOX,
    containers_of_job,
    eventually,
    free_port,
    httpd_spec,
    refused,
)

ANY_IPV4 = "0.0.0.0"  # noqa: S104 (what the engine reports for -p without an address)


@pytest.fixture
def www(bind_root, unique):
    folder = bind_root / unique
    folder.mkdir()
    (folder / "index.html").write_text(f"hello from {unique}\n")
    return folder


def bind_check_helpers(engine, root):
    """The bind check's helper containers that mount ``root`` (the engine's list alone)."""
    return [row for row in engine.api.containers(
        all=True, filters={"label": "dockyard.helper=bind-check"})
        if any(m.get("Source") == str(root) for m in row.get("Mounts") or [])
        and "dockyard.managed" not in (row.get("Labels") or {})]


def assert_one_kept_helper(engine, root):
    """The bind check leaves one helper per root, kept between provisions: never started,
    of its own empty image (so it holds no image a user may remove), out of every token's
    reach, mounting the root read-only and nothing else."""
    helpers = bind_check_helpers(engine, root)
    assert len(helpers) == 1, helpers
    helper = engine.api.inspect_container(helpers[0]["Id"])
    assert helper["State"]["Status"] == "created" and helper["State"]["StartedAt"].startswith("0001")
    assert helper["Config"]["Image"] == bind_check.HELPER_IMAGE
    assert engine.api.inspect_image(bind_check.HELPER_IMAGE)["Size"] == 0
    assert helper["Config"]["Labels"]["dockyard.system"] == "true"
    assert "dockyard.managed" not in helper["Config"]["Labels"]
    assert [(m["Type"], m["Source"], m["Destination"], m["RW"]) for m in helper["Mounts"]] \
        == [("bind", str(root), str(root), False)]
    return helper


def provision(api, spec, wait=60, host="local"):
    response = api.post(f"/hosts/{host}/containers", params={"wait": wait}, json=spec)
    assert response.status_code in (200, 202), response.text
    return response.json()


def test_provision_maps_ports_and_mounts_read_only(operator, engine, www, bind_root, unique,
                                                   cleanup):
    port = free_port()
    cleanup.append(unique)
    job = provision(operator, httpd_spec(unique, port, str(www), env={"MODE": "prod"},
                                         labels={"team": "a"}))
    assert job["state"] == "succeeded", job
    assert_one_kept_helper(engine, bind_root)
    result = job["result"]
    assert result["name"] == unique and result["state"] == "running"
    assert {"container_port": 8080, "protocol": "tcp", "host_ip": ANY_IPV4, "host_port": port} \
        in result["ports"]
    assert result["mounts"] == [{"type": "bind", "source": str(www), "target": "/www",
                                 "read_only": True, "name": None}]
    body = requests.get(f"http://127.0.0.1:{port}/index.html", timeout=5).text
    assert body == f"hello from {unique}\n"
    container = engine.containers.get(unique)
    assert container.labels["dockyard.managed"] == "true"
    assert container.labels["dockyard.job"] == job["id"]
    assert container.labels["team"] == "a"
    assert "MODE=prod" in container.attrs["Config"]["Env"]
    code, output = container.exec_run(["touch", "/www/written"])
    assert code != 0 and b"Read-only file system" in output
    assert not (www / "written").exists()


@pytest.mark.parametrize("ports, expected", [
    (["{p}:8080/tcp"], lambda p: {(ANY_IPV4, str(p), "8080/tcp")}),
    (["8080"], None),
    (["127.0.0.1:{p}:8080"], lambda p: {("127.0.0.1", str(p), "8080/tcp")}),
    ([{"container_port": 8080, "host_port": "{p}", "protocol": "udp", "host_ip": "127.0.0.1"}],
     lambda p: {("127.0.0.1", str(p), "8080/udp")}),
])
def test_provision_accepts_docker_port_forms(operator, engine, unique, cleanup, ports, expected):
    port = free_port()
    rendered = [p.format(p=port) if isinstance(p, str) else {**p, "host_port": port} for p in ports]
    cleanup.append(unique)
    job = provision(operator, {"image": BUSYBOX, "name": unique, "command": ["sleep", "300"],
                               "ports": rendered})
    assert job["state"] == "succeeded", job
    bound = engine.api.inspect_container(unique)["NetworkSettings"]["Ports"]
    actual = {(b["HostIp"], b["HostPort"], key) for key, bs in bound.items() for b in bs or []
              if b["HostIp"] != "::"}
    if expected is None:  # "8080": a random host port, reported as bound
        assert len(actual) == 1
        (_, host_port, key), = actual
        assert key == "8080/tcp" and int(host_port) > 0
        assert any(p["host_port"] == int(host_port) for p in job["result"]["ports"])
    else:
        assert actual == expected(port)


def test_provision_accepts_volume_short_forms(operator, engine, www, unique, cleanup):
    volume = f"{unique}-data"
    cleanup.append(unique)
    job = provision(operator, {"image": BUSYBOX, "name": unique, "command": ["sleep", "300"],
                               "volumes": [f"{www}:/www:ro", f"{volume}:/data", "/cache"]})
    assert job["state"] == "succeeded", job
    mounts = {m["Destination"]: m for m in engine.api.inspect_container(unique)["Mounts"]}
    assert mounts["/www"]["Type"] == "bind" and mounts["/www"]["RW"] is False
    assert mounts["/data"]["Type"] == "volume" and mounts["/data"]["Name"] == volume
    assert mounts["/data"]["RW"] is True
    assert mounts["/cache"]["Type"] == "volume"
    engine.containers.get(unique).remove(force=True, v=True)
    engine.volumes.get(volume).remove()


def test_volumes_from_shares_mounts_read_only(operator, engine, www, unique, cleanup):
    source, sharer = f"{unique}-src", f"{unique}-use"
    cleanup.extend([sharer, source])
    assert provision(operator, {"image": BUSYBOX, "name": source, "command": ["sleep", "300"],
                                "volumes": [f"{unique}-vol:/shared"]})["state"] == "succeeded"
    engine.containers.get(source).exec_run(["sh", "-c", "echo shared > /shared/f"])
    job = provision(operator, {"image": BUSYBOX, "name": sharer, "command": ["sleep", "300"],
                               "volumes_from": [f"{source}:ro"]})
    assert job["state"] == "succeeded", job
    container = engine.containers.get(sharer)
    assert container.exec_run(["cat", "/shared/f"]).output == b"shared\n"
    assert container.exec_run(["touch", "/shared/g"]).exit_code != 0


def test_wait_for_healthy_returns_once_healthcheck_passes(operator, engine, unique, cleanup):
    cleanup.append(unique)
    job = provision(operator, {
        "image": BUSYBOX, "name": unique,
        "command": ["sh", "-c", "sleep 1; touch /ready; sleep 300"],
        "healthcheck": {"test": ["test", "-f", "/ready"], "interval": "1s", "retries": 30},
        "wait_for": "healthy", "wait_timeout": 30})
    assert job["state"] == "succeeded", job
    assert job["result"]["health"] == "healthy"
    assert engine.api.inspect_container(unique)["State"]["Health"]["Status"] == "healthy"


def test_restart_policy_memory_cpus_user_workdir_hostname_reach_the_engine(operator, engine, unique,
                                                                          cleanup):
    cleanup.append(unique)
    job = provision(operator, {
        "image": BUSYBOX, "name": unique, "command": "sleep 300",
        "restart_policy": {"name": "on-failure", "maximum_retry_count": 3},
        "memory": "64m", "cpus": 0.5, "user": "1000", "workdir": "/tmp", "hostname": "box1",
        "entrypoint": ["/bin/sh", "-c", "exec \"$0\" \"$@\""]})
    assert job["state"] == "succeeded", job
    info = engine.api.inspect_container(unique)
    host_config, config = info["HostConfig"], info["Config"]
    assert host_config["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 3}
    assert host_config["Memory"] == 64 * 1024 * 1024
    assert host_config["NanoCpus"] == 500_000_000
    assert (config["User"], config["WorkingDir"], config["Hostname"]) == ("1000", "/tmp", "box1")
    assert config["Cmd"] == ["sleep", "300"]


def test_with_wait_a_taken_name_is_the_workers_409_naming_the_failed_job(operator, engine,
                                                                         unique, cleanup):
    cleanup.append(unique)
    provision(operator, {"image": BUSYBOX, "name": unique, "command": ["sleep", "300"]})
    before = engine.api.inspect_container(unique)
    without_wait = operator.post("/hosts/local/containers",
                                 json={"image": BUSYBOX, "name": unique, "command": ["sleep", "1"]})
    assert without_wait.status_code == 409  # checked by the API before anything is queued
    assert "job" not in without_wait.json()
    with_wait = operator.post("/hosts/local/containers", params={"wait": 60},
                              json={"image": BUSYBOX, "name": unique, "command": ["sleep", "1"]})
    assert with_wait.status_code == 409, with_wait.text
    assert with_wait.headers["Content-Type"] == "application/problem+json"
    problem = with_wait.json()
    assert problem["detail"] == without_wait.json()["detail"]
    assert problem["name"] == unique
    job = operator.get(f"/jobs/{problem['job']}").json()
    assert job["state"] == "failed" and job["error"]["status"] == 409
    assert job["error"]["name"] == unique
    assert containers_of_job(engine, problem["job"]) == []
    after = engine.api.inspect_container(unique)
    assert (after["Id"], after["State"]["StartedAt"], after["Config"]["Cmd"]) == \
        (before["Id"], before["State"]["StartedAt"], before["Config"]["Cmd"])


def test_replace_swaps_the_container_and_keeps_the_name(operator, engine, unique, cleanup):
    cleanup.append(unique)
    first = provision(operator, {"image": BUSYBOX, "name": unique, "command": ["sleep", "300"]})
    conflict = operator.post("/hosts/local/containers",
                             json={"image": BUSYBOX, "name": unique, "command": ["sleep", "1"]})
    assert conflict.status_code == 409
    assert conflict.headers["Content-Type"] == "application/problem+json"
    second = provision(operator, {"image": BUSYBOX, "name": unique, "command": ["sleep", "301"],
                                  "replace": True})
    assert second["state"] == "succeeded", second
    assert second["result"]["id"] != first["result"]["id"]
    assert engine.containers.get(unique).id == second["result"]["id"]
    assert engine.containers.list(all=True, filters={"id": first["result"]["id"]}) == []


def test_create_without_start_leaves_container_created(operator, engine, unique, cleanup):
    cleanup.append(unique)
    job = provision(operator, {"image": BUSYBOX, "name": unique, "command": ["sleep", "300"],
                               "start": False})
    assert job["state"] == "succeeded"
    assert engine.api.inspect_container(unique)["State"]["Status"] == "created"


# -- failures leave nothing behind ----------------------------------------------------------


def test_bad_command_fails_and_removes_the_container(operator, engine, unique, cleanup):
    cleanup.append(unique)
    job = provision(operator, {"image": BUSYBOX, "name": unique, "command": ["/no/such/binary"]})
    assert job["state"] == "failed"
    assert "no/such/binary" in job["error"]["detail"]
    assert containers_of_job(engine, job["id"]) == []
    assert engine.containers.list(all=True, filters={"name": f"^/{unique}$"}) == []


def test_command_that_exits_fails_with_its_exit_code(operator, engine, unique, cleanup):
    cleanup.append(unique)
    job = provision(operator, {"image": BUSYBOX, "name": unique,
                               "command": ["sh", "-c", "echo boom; exit 3"],
                               "wait_for": "healthy",
                               "healthcheck": {"test": ["true"], "interval": "1s"}})
    assert job["state"] == "failed"
    assert "code 3" in job["error"]["detail"] and "boom" in job["error"]["detail"]
    assert containers_of_job(engine, job["id"]) == []


def test_port_already_bound_fails_and_removes_the_container(operator, engine, unique, cleanup):
    port = free_port()
    first, second = f"{unique}-a", f"{unique}-b"
    cleanup.extend([first, second])
    spec = {"image": BUSYBOX, "command": ["sleep", "300"], "ports": [f"{port}:8080"]}
    assert provision(operator, {**spec, "name": first})["state"] == "succeeded"
    job = provision(operator, {**spec, "name": second})
    assert job["state"] == "failed"
    assert "allocated" in job["error"]["detail"] or "in use" in job["error"]["detail"]
    assert containers_of_job(engine, job["id"]) == []


def test_missing_image_with_pull_never_fails_without_residue(operator, engine, unique):
    job = provision(operator, {"image": "dockyard-test/absent:1", "name": unique, "pull": "never"})
    assert job["state"] == "failed"
    assert job["error"]["status"] == 404
    assert containers_of_job(engine, job["id"]) == []


def test_missing_image_pull_fails_with_registry_reason(operator, engine, unique):
    job = provision(operator, {"image": "127.0.0.1:5000/dockyard-test/absent:1", "name": unique})
    assert job["state"] == "failed"
    assert "absent" in job["error"]["detail"] or "not found" in job["error"]["detail"].lower()
    assert containers_of_job(engine, job["id"]) == []


def test_unhealthy_container_fails_and_is_removed(operator, engine, unique):
    job = provision(operator, {"image": BUSYBOX, "name": unique, "command": ["sleep", "300"],
                               "healthcheck": {"test": ["false"], "interval": "1s", "retries": 1},
                               "wait_for": "healthy", "wait_timeout": 30})
    assert job["state"] == "failed"
    assert "unhealthy" in job["error"]["detail"]
    assert containers_of_job(engine, job["id"]) == []


def test_symlink_escaping_a_bind_root_is_refused_by_the_worker(operator, engine, bind_root,
                                                               unique):
    link = bind_root / unique
    link.symlink_to("/etc")
    job = provision(operator, {"image": BUSYBOX, "name": unique, "command": ["sleep", "300"],
                               "volumes": [f"{link}:/x:ro"]})
    assert job["state"] == "failed"
    assert job["error"]["status"] == 403 and job["error"]["rule"] == "bind-roots"
    assert containers_of_job(engine, job["id"]) == []
    assert len(bind_check_helpers(engine, bind_root)) <= 1


def test_bind_check_refuses_a_symlink_after_its_helper_was_removed(engine, bind_root, unique):
    """The kept helper removed behind the worker's back (a prune, an admin's rm): a path
    stat of a gone container answers 404 like a missing path does, so the walk must not
    read it as 'nothing there'. In process, so that the client that kept the old helper is
    the one asked again."""
    policy = Policy(bind_roots=(str(bind_root),))
    (bind_root / unique).mkdir()
    link = bind_root / unique / "etc"
    assert bind_check.resolve_binds(engine, [str(bind_root / unique)], policy) == []
    kept = assert_one_kept_helper(engine, bind_root)
    link.symlink_to("/etc")
    engine.api.remove_container(kept["Id"], force=True)
    found = bind_check.resolve_binds(engine, [f"{link}/passwd"], policy)
    assert [v.rule for v in found] == ["bind-roots"], found
    assert "is a symlink to '/etc'" in found[0].detail
    assert assert_one_kept_helper(engine, bind_root)["Id"] != kept["Id"]
    # A missing path with a kept helper that is there: nothing to refuse (the engine's own
    # create then says the source does not exist).
    assert bind_check.resolve_binds(engine, [str(bind_root / unique / "missing")], policy) == []


def build_image(engine, tag, *instructions):
    dockerfile = "\n".join([f"FROM {BUSYBOX}", *instructions]) + "\n"
    engine.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag, rm=True)
    return tag


def test_the_kept_helper_is_out_of_every_tokens_reach(operator, admin, engine, www, bind_root,
                                                     unique, cleanup):
    """The helper mounts the whole bind root: no token may read it, run in it, commit, remove
    or start it, and it is left as it was (never started, same id, same mounts)."""
    cleanup.append(unique)
    job = provision(operator, {"image": BUSYBOX, "name": unique, "command": ["sleep", "300"],
                               "volumes": [f"{www}:/www:ro"]})
    assert job["state"] == "succeeded", job
    helper = assert_one_kept_helper(engine, bind_root)
    ref = f"/hosts/local/containers/{helper['Id']}"
    for api in (operator, admin):
        refused(api.get(f"{ref}/archive", params={"path": str(www)}), "dockyard-system")
        refused(api.post(f"{ref}/exec", json={"cmd": ["true"]}), "dockyard-system")
        refused(api.post(f"{ref}/commit", params={"wait": 30},
                         json={"repository": f"dyt/{unique}"}), "dockyard-system")
        refused(api.delete(ref, params={"force": "true", "wait": 30}), "dockyard-system")
    refused(operator.post(f"{ref}/start", params={"wait": 30}), "managed-only")
    after = assert_one_kept_helper(engine, bind_root)
    assert after["Id"] == helper["Id"] and after["Mounts"] == helper["Mounts"]
    assert engine.images.list(name=f"dyt/{unique}") == []


def test_a_volume_the_image_declares_does_not_hide_a_symlink_from_the_bind_check(
        operator, engine, bind_root, unique):
    """An image declaring a VOLUME over the folder that holds a planted symlink: a helper
    made of the provision's own image (as before the kept helper) had that empty volume
    mounted over the folder, the stat of the link answered 404 ("missing", no verdict),
    and the start mounted the host's /etc at /x (seen on f521b8e: the container read the
    host's /etc/hostname)."""
    (bind_root / unique).mkdir()
    link = bind_root / unique / "link"
    link.symlink_to("/etc")
    image = build_image(engine, f"{unique}:shadow", f"VOLUME {bind_root / unique}")
    try:
        job = provision(operator, {"image": image, "name": unique, "command": ["sleep", "300"],
                                   "volumes": [f"{link}:/x:ro"]})
        assert job["state"] == "failed", job
        assert job["error"]["status"] == 403 and job["error"]["rule"] == "bind-roots"
        assert "is a symlink to '/etc'" in job["error"]["detail"]
        assert containers_of_job(engine, job["id"]) == []
        assert_one_kept_helper(engine, bind_root)
    finally:
        engine.images.remove(image, force=True)


def test_a_helper_image_tag_pointed_elsewhere_is_imported_again(engine, bind_root, unique):
    """Someone tags an image with a VOLUME under the root as the helper's image: the helper
    made from it has a mount besides the roots, so it is removed, the empty image imported
    again under the tag, and the walk still sees the symlink."""
    (bind_root / unique).mkdir()
    link = bind_root / unique / "link"
    link.symlink_to("/etc")
    impostor = engine.api.inspect_image(
        build_image(engine, bind_check.HELPER_IMAGE, f"VOLUME {bind_root / unique}"))["Id"]
    try:
        for helper in bind_check_helpers(engine, bind_root):
            engine.api.remove_container(helper["Id"], force=True)
        policy = Policy(bind_roots=(str(bind_root),))
        fresh = docker.DockerClient(base_url=os.environ["DOCKER_HOST"])
        found = bind_check.resolve_binds(fresh, [str(link)], policy)
        assert [v.rule for v in found] == ["bind-roots"], found
        assert_one_kept_helper(engine, bind_root)
        assert engine.api.inspect_image(bind_check.HELPER_IMAGE)["Id"] != impostor
        assert engine.api.inspect_image(bind_check.HELPER_IMAGE)["Config"].get("Volumes") is None
    finally:
        engine.images.remove(impostor, force=True)


def test_bind_check_ignores_a_managed_container_that_looks_like_its_helper(
        operator, engine, bind_root, unique, cleanup):
    """A provisioned, never started container that mounts the root read-only at its own
    path is not taken for the helper (it carries dockyard.managed, whatever its image's
    labels say)."""
    cleanup.append(unique)
    lookalike = build_image(engine, f"{unique}:lookalike",
                            "LABEL dockyard.system=true dockyard.helper=bind-check")
    for helper in bind_check_helpers(engine, bind_root):
        engine.api.remove_container(helper["Id"], force=True)
    job = provision(operator, {"image": lookalike, "name": unique, "command": ["true"],
                               "start": False, "labels": {"team": "a"},
                               "volumes": [f"{bind_root}:{bind_root}:ro"]})
    assert job["state"] == "succeeded", job
    policy = Policy(bind_roots=(str(bind_root),))
    (bind_root / unique).mkdir()
    fresh = docker.DockerClient(base_url=os.environ["DOCKER_HOST"])
    assert bind_check.resolve_binds(fresh, [str(bind_root / unique)], policy) == []
    assert engine.api.inspect_container(unique)["Config"]["Labels"]["dockyard.system"] == "true"
    assert assert_one_kept_helper(engine, bind_root)["Name"] != f"/{unique}"
    engine.api.remove_container(unique, force=True)
    engine.images.remove(lookalike)


def test_worker_killed_mid_provision_ends_with_exactly_one_container(operator, engine, stack,
                                                                     unique, cleanup):
    cleanup.append(unique)
    response = operator.post("/hosts/local/containers", json={
        "image": BUSYBOX, "name": unique,
        "command": ["sh", "-c", "sleep 3; touch /ready; sleep 300"],
        "healthcheck": {"test": ["test", "-f", "/ready"], "interval": "1s", "retries": 60},
        "wait_for": "healthy", "wait_timeout": 60})
    assert response.status_code == 202
    job_id = response.json()["id"]
    eventually(lambda: containers_of_job(engine, job_id), timeout=30)
    parent = stack.procs["worker-ops"].pid
    children = subprocess.run(["pgrep", "-P", str(parent)], capture_output=True, text=True)
    for pid in children.stdout.split():
        os.kill(int(pid), signal.SIGKILL)
    job = operator.wait_job(job_id, timeout=90)
    assert job["state"] == "succeeded", job
    assert job["result"]["adopted"] is True
    assert len(containers_of_job(engine, job_id)) == 1
    assert len(engine.containers.list(all=True, filters={"name": f"^/{unique}$"})) == 1
