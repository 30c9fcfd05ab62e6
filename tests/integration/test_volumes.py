"""Volume routes agree with ``docker volume ls/inspect`` run against the same engine."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator

import docker
import pytest

from tests.integration.helpers import BUSYBOX, eventually


def docker_cli(*args: str) -> str:
    done = subprocess.run(["docker", *args], env=os.environ, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def label(engine, unique) -> Iterator[str]:
    """``dyt.test=<unique>``: every volume a test makes carries it and is removed after."""
    value = f"dyt.test={unique}"
    yield value
    for volume in engine.volumes.list(filters={"label": value}):
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            volume.remove(force=True)


def create(api, **body) -> dict:
    response = api.post("/hosts/local/volumes", params={"wait": 30}, json=body)
    assert response.status_code == 200, response.text
    return response.json()


def test_create_inspect_and_ls_match_docker_volume(operator, viewer, unique, label):
    job = create(operator, name=unique, labels={"dyt.test": unique, "team": "a"})
    assert job["state"] == "succeeded", job
    assert job["result"]["name"] == unique and job["result"]["created"] is True
    cli = json.loads(docker_cli("volume", "inspect", unique))[0]
    inspected = viewer.get(f"/hosts/local/volumes/{unique}")
    assert inspected.status_code == 200
    for key in ("Name", "Driver", "Mountpoint", "Labels", "Scope", "CreatedAt"):
        assert inspected.json()[key] == cli[key]
    assert cli["Labels"]["team"] == "a" and cli["Driver"] == "local"
    assert job["result"]["mountpoint"] == cli["Mountpoint"]

    by_label = viewer.get("/hosts/local/volumes", params={"label": label}).json()
    assert [v["name"] for v in by_label] == docker_cli(
        "volume", "ls", "-q", "-f", f"label={label}").split() == [unique]
    by_name = viewer.get("/hosts/local/volumes", params={"name": unique}).json()
    assert {v["name"] for v in by_name} == set(docker_cli("volume", "ls", "-q", "-f",
                                                          f"name={unique}").split())
    eventually(lambda: {v["name"] for v in viewer.get("/hosts/local/volumes").json()}
               == set(docker_cli("volume", "ls", "-q").split()), timeout=10)


def test_create_is_idempotent_for_the_same_driver_and_409_for_another(operator, admin, unique,
                                                                      label):
    assert create(operator, name=unique, labels={"dyt.test": unique})["state"] == "succeeded"
    again = create(operator, name=unique)
    assert again["state"] == "succeeded" and again["result"]["created"] is False
    # Another driver: only admins may ask for one (operators get 403 volume-drivers).
    other = admin.post("/hosts/local/volumes", json={"name": unique, "driver": "other-driver"})
    assert other.status_code == 409, other.text
    assert other.headers["Content-Type"] == "application/problem+json"
    assert json.loads(docker_cli("volume", "inspect", unique))[0]["Driver"] == "local"


def test_a_nameless_volume_gets_a_generated_name(operator, unique, label):
    job = create(operator, labels={"dyt.test": unique})
    assert job["state"] == "succeeded", job
    assert docker_cli("volume", "ls", "-q", "-f", f"label={label}").split() == \
        [job["result"]["name"]]


def test_rm_refuses_a_volume_in_use_then_removes_it(operator, engine, unique, label, cleanup):
    create(operator, name=unique, labels={"dyt.test": unique})
    cleanup.append(unique)
    engine.containers.create(BUSYBOX, command=["true"], name=unique,
                             volumes={unique: {"bind": "/data", "mode": "rw"}})
    refused = operator.delete(f"/hosts/local/volumes/{unique}", params={"wait": 30}).json()
    assert refused["state"] == "failed" and refused["error"]["status"] == 409, refused
    assert unique in docker_cli("volume", "ls", "-q").split()
    engine.containers.get(unique).remove()
    removed = operator.delete(f"/hosts/local/volumes/{unique}", params={"wait": 30}).json()
    assert removed["state"] == "succeeded", removed
    assert unique not in docker_cli("volume", "ls", "-q").split()


def test_dangling_filter_and_prune_touch_only_unused_labelled_volumes(operator, viewer, engine,
                                                                       unique, label, cleanup):
    used, unused = f"{unique}-used", f"{unique}-unused"
    for name in (used, unused):
        create(operator, name=name, labels={"dyt.test": unique})
    cleanup.append(unique)
    engine.containers.create(BUSYBOX, command=["true"], name=unique,
                             volumes={used: {"bind": "/data", "mode": "rw"}})
    dangling = viewer.get("/hosts/local/volumes", params={"label": label, "dangling": "true"})
    assert [v["name"] for v in dangling.json()] == docker_cli(
        "volume", "ls", "-q", "-f", f"label={label}", "-f", "dangling=true").split() == [unused]

    job = operator.post("/hosts/local/volumes/prune", params={"wait": 60},
                        json={"filters": {"label": [label]}}).json()
    assert job["state"] == "succeeded", job
    assert job["result"]["deleted"] == [unused]
    assert isinstance(job["result"]["space_reclaimed"], int)
    assert docker_cli("volume", "ls", "-q", "-f", f"label={label}").split() == [used]


def test_unknown_volumes_are_404(viewer, operator):
    missing = viewer.get("/hosts/local/volumes/no-such-volume-xyz")
    assert missing.status_code == 404
    assert missing.headers["Content-Type"] == "application/problem+json"
    job = operator.delete("/hosts/local/volumes/no-such-volume-xyz", params={"wait": 30}).json()
    assert job["state"] == "failed" and job["error"]["status"] == 404, job


@pytest.mark.parametrize("body", [
    {"name": "x"}, {"name": "bad name"}, {"name": "-dash"}, {"name": "ok-name", "size": 1},
    {"name": "ok-name", "driver_opts": {"type": "none", "o": "bind", "device": "/etc"}},
    {"name": "ok-name", "labels": "team=a"}, {"name": "ok-name", "driver": "Bad Driver"},
])
def test_invalid_create_requests_are_422_and_change_nothing(operator, body):
    response = operator.post("/hosts/local/volumes", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["errors"]
    assert "ok-name" not in docker_cli("volume", "ls", "-q").split()


def test_prune_refuses_unknown_filters_and_viewers_cannot_change_volumes(operator, viewer):
    assert operator.post("/hosts/local/volumes/prune",
                         json={"filters": {"dangling": ["true"]}}).status_code == 422
    assert viewer.post("/hosts/local/volumes", json={"name": "dyt-never"}).status_code == 403
    assert viewer.delete("/hosts/local/volumes/dyt-never").status_code == 403
    assert viewer.post("/hosts/local/volumes/prune", json={}).status_code == 403
