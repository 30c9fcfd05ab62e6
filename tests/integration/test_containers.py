"""Container reads and lifecycle routes agree with what the engine reports."""

from __future__ import annotations

import time

import pytest

from tests.integration.helpers import BUSYBOX, eventually


@pytest.fixture
def running(operator, unique, cleanup):
    cleanup.append(unique)
    response = operator.post("/hosts/local/containers", params={"wait": 60}, json={
        "image": BUSYBOX, "name": unique, "labels": {"suite": unique},
        "command": ["sh", "-c", "echo line1; echo line2; sleep 0.3; echo err >&2; exec sleep 300"]})
    job = response.json()
    assert job["state"] == "succeeded", job
    return job["result"]


def act(api, ref, verb, body=None):
    response = api.post(f"/hosts/local/containers/{ref}/{verb}", params={"wait": 60}, json=body)
    assert response.status_code == 200, response.text
    return response.json()


def test_ps_filters_by_exact_name_label_status_and_ancestor(viewer, running, unique, engine):
    by_name = viewer.get("/hosts/local/containers", params={"name": unique}).json()
    assert [c["id"] for c in by_name] == [running["id"]]
    assert by_name[0]["labels"]["suite"] == unique
    assert viewer.get("/hosts/local/containers", params={"name": unique[:-1]}).json() == []
    by_label = viewer.get("/hosts/local/containers", params={"label": f"suite={unique}"}).json()
    assert [c["name"] for c in by_label] == [unique]
    running_ids = {c["id"] for c in viewer.get("/hosts/local/containers",
                                               params={"status": "running"}).json()}
    assert running["id"] in running_ids
    assert running_ids == {c.id for c in engine.containers.list(filters={"status": "running"})}
    by_ancestor = viewer.get("/hosts/local/containers", params={"ancestor": BUSYBOX}).json()
    assert running["id"] in {c["id"] for c in by_ancestor}


def test_ps_all_limit_and_latest_match_docker(viewer, engine, running):
    listed = viewer.get("/hosts/local/containers", params={"all": "true"}).json()
    assert {c["id"] for c in listed} == {c.id for c in engine.containers.list(all=True, sparse=True)}
    latest = viewer.get("/hosts/local/containers", params={"latest": "true"}).json()
    assert [c["id"] for c in latest] == [c.id for c in engine.containers.list(all=True, limit=1, sparse=True)]
    limited = viewer.get("/hosts/local/containers", params={"all": "true", "limit": 1}).json()
    assert len(limited) == 1


def test_inspect_by_name_id_and_unique_prefix(viewer, running, unique):
    for ref in (unique, running["id"], running["id"][:12]):
        response = viewer.get(f"/hosts/local/containers/{ref}")
        assert response.status_code == 200
        assert response.json()["Id"] == running["id"]
    missing = viewer.get("/hosts/local/containers/no-such-container-xyz")
    assert missing.status_code == 404
    assert missing.headers["Content-Type"] == "application/problem+json"


def test_lifecycle_actions_change_engine_state(operator, engine, running, unique):
    container = engine.containers.get(unique)
    assert act(operator, unique, "pause")["result"]["state"] == "paused"
    container.reload()
    assert container.status == "paused"
    assert act(operator, unique, "unpause")["result"]["state"] == "running"
    assert act(operator, unique, "stop", {"timeout": 1})["result"]["state"] == "exited"
    container.reload()
    assert container.status == "exited"
    assert act(operator, unique, "start")["result"]["state"] == "running"
    started = engine.api.inspect_container(unique)["State"]["StartedAt"]
    assert act(operator, unique, "restart", {"timeout": 1})["result"]["state"] == "running"
    assert engine.api.inspect_container(unique)["State"]["StartedAt"] != started
    killed = act(operator, unique, "kill", {"signal": "SIGTERM"})
    assert killed["state"] == "succeeded"
    container.reload()
    # sh as PID 1 ignores SIGTERM unless it traps it, so the kill was delivered and the
    # container lives on; SIGKILL ends it.
    act(operator, unique, "kill", {"signal": "KILL"})
    container.reload()
    assert container.status == "exited"
    assert container.attrs["State"]["ExitCode"] == 137


def test_bad_signal_and_unknown_fields_are_422(operator, running, unique):
    bad = operator.post(f"/hosts/local/containers/{unique}/kill", json={"signal": "NOPE"})
    assert bad.status_code == 422 and "signal" in bad.json()["errors"]
    extra = operator.post(f"/hosts/local/containers/{unique}/start", json={"force": True})
    assert extra.status_code == 422
    negative = operator.post(f"/hosts/local/containers/{unique}/stop", json={"timeout": -1})
    assert negative.status_code == 422


def test_action_on_unknown_container_fails_job_with_404(operator):
    job = act(operator, "no-such-container-xyz", "start")
    assert job["state"] == "failed" and job["error"]["status"] == 404


def test_logs_tail_timestamps_and_since(viewer, running, unique):
    def lines():
        return viewer.get(f"/hosts/local/containers/{unique}/logs").text.splitlines()

    eventually(lambda: len(lines()) == 3)
    assert lines() == ["line1", "line2", "err"]
    assert viewer.get(f"/hosts/local/containers/{unique}/logs", params={"tail": 1}).text == "err\n"
    stamped = viewer.get(f"/hosts/local/containers/{unique}/logs",
                         params={"timestamps": "true"}).text.splitlines()
    assert stamped[0].endswith(" line1") and stamped[0][:4].isdigit()
    future = int(time.time()) + 3600
    assert viewer.get(f"/hosts/local/containers/{unique}/logs",
                      params={"since": future}).text == ""
    bad = viewer.get(f"/hosts/local/containers/{unique}/logs", params={"tail": -5})
    assert bad.status_code == 422 and "tail" in bad.json()["errors"]


def test_rm_refuses_running_without_force_then_removes_with_volumes(operator, engine, unique,
                                                                     cleanup):
    cleanup.append(unique)
    volume_job = operator.post("/hosts/local/containers", params={"wait": 60}, json={
        "image": BUSYBOX, "name": unique, "command": ["sleep", "300"],
        "volumes": ["/anon"]}).json()
    assert volume_job["state"] == "succeeded"
    anon = next(m["name"] for m in volume_job["result"]["mounts"])
    refused = operator.delete(f"/hosts/local/containers/{unique}", params={"wait": 30}).json()
    assert refused["state"] == "failed" and refused["error"]["status"] == 409
    assert engine.containers.get(unique).status == "running"
    removed = operator.delete(f"/hosts/local/containers/{unique}",
                              params={"wait": 30, "force": "true", "volumes": "true"}).json()
    assert removed["state"] == "succeeded", removed
    assert engine.containers.list(all=True, filters={"name": f"^/{unique}$"}) == []
    assert anon not in {v.name for v in engine.volumes.list()}
