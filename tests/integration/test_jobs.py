"""The job model: lifecycle, ?wait, listing, idempotency, cancellation and events."""

from __future__ import annotations

import json

from tests.integration.helpers import BUSYBOX, containers_of_job, eventually

SLOW_HEALTH = {"test": ["test", "-f", "/ready"], "interval": "1s", "retries": 100}


def slow_spec(name: str, ready_after: int = 300) -> dict:
    return {"image": BUSYBOX, "name": name,
            "command": ["sh", "-c", f"sleep {ready_after}; touch /ready; sleep 300"],
            "healthcheck": SLOW_HEALTH, "wait_for": "healthy", "wait_timeout": 120}


def test_operation_answers_202_with_location_then_finishes(operator, unique, cleanup):
    cleanup.append(unique)
    response = operator.post("/hosts/local/containers",
                             json={"image": BUSYBOX, "name": unique, "command": ["sleep", "60"]})
    assert response.status_code == 202
    job = response.json()
    assert response.headers["Location"] == f"/api/v1/jobs/{job['id']}"
    assert job["state"] in ("queued", "running", "succeeded")
    assert job["kind"] == "containers.provision" and job["host"] == "local"
    assert job["requested_by"].startswith("t-operator")
    finished = operator.wait_job(job["id"])
    assert finished["state"] == "succeeded"
    assert finished["started_at"] and finished["finished_at"]
    assert finished["created_at"] <= finished["started_at"] <= finished["finished_at"]


def test_wait_answers_200_with_the_finished_job(operator, unique, cleanup):
    cleanup.append(unique)
    response = operator.post("/hosts/local/containers", params={"wait": 30},
                             json={"image": BUSYBOX, "name": unique, "command": ["sleep", "60"]})
    assert response.status_code == 200
    assert response.json()["state"] == "succeeded"


def test_wait_that_runs_out_answers_202_with_the_running_job(operator, unique, cleanup):
    cleanup.append(unique)
    response = operator.post("/hosts/local/containers", params={"wait": 1},
                             json=slow_spec(unique))
    assert response.status_code == 202
    assert response.json()["state"] in ("queued", "running")
    cancel = operator.post(f"/jobs/{response.json()['id']}/cancel")
    assert cancel.status_code == 200
    assert operator.wait_job(response.json()["id"])["state"] == "cancelled"


def test_list_filters_and_pages_newest_first(operator, viewer, unique, cleanup):
    ids = []
    for index in range(3):
        name = f"{unique}-{index}"
        cleanup.append(name)
        response = operator.post("/hosts/local/containers", params={"wait": 30}, json={
            "image": BUSYBOX, "name": name, "command": ["sleep", "60"]})
        ids.append(response.json()["id"])
    page = viewer.get("/jobs", params={"kind": "containers.provision", "limit": 2}).json()
    assert [j["id"] for j in page["items"]] == ids[::-1][:2]
    assert page["next_cursor"]
    rest = viewer.get("/jobs", params={"kind": "containers.provision", "limit": 1,
                                       "cursor": page["next_cursor"]}).json()
    assert [j["id"] for j in rest["items"]] == [ids[0]]
    succeeded = viewer.get("/jobs", params={"state": "succeeded", "host": "local",
                                            "limit": 500}).json()["items"]
    assert set(ids) <= {j["id"] for j in succeeded}
    assert all(j["state"] == "succeeded" for j in succeeded)
    assert viewer.get("/jobs", params={"state": "exploded"}).status_code == 422


def test_unknown_job_is_404(viewer, operator):
    assert viewer.get("/jobs/01NOSUCHJOB0000000000000000").status_code == 404
    assert operator.post("/jobs/01NOSUCHJOB0000000000000000/cancel").status_code == 404


def test_idempotency_key_replays_the_same_job_and_one_container(operator, engine, unique,
                                                                cleanup):
    cleanup.append(unique)
    spec = {"image": BUSYBOX, "name": unique, "command": ["sleep", "60"]}
    headers = {"Idempotency-Key": f"key-{unique}"}
    first = operator.post("/hosts/local/containers", json=spec, headers=headers)
    second = operator.post("/hosts/local/containers", json=spec, headers=headers)
    assert first.status_code == 202 and second.status_code in (200, 202)
    assert first.json()["id"] == second.json()["id"]
    operator.wait_job(first.json()["id"])
    third = operator.post("/hosts/local/containers", params={"wait": 5}, json=spec,
                          headers=headers)
    assert third.json()["id"] == first.json()["id"] and third.json()["state"] == "succeeded"
    assert len(engine.containers.list(all=True, filters={"name": f"^/{unique}$"})) == 1
    changed = operator.post("/hosts/local/containers", json={**spec, "command": ["sleep", "61"]},
                            headers=headers)
    assert changed.status_code == 422
    assert "Idempotency-Key" in changed.json()["errors"]


def test_idempotency_keys_are_per_token(operator, make_token, unique, cleanup):
    other = make_token("operator")
    names = [f"{unique}-a", f"{unique}-b"]
    cleanup.extend(names)
    headers = {"Idempotency-Key": f"shared-{unique}"}
    first = operator.post("/hosts/local/containers", headers=headers,
                          json={"image": BUSYBOX, "name": names[0], "command": ["sleep", "60"]})
    second = other.post("/hosts/local/containers", headers=headers,
                        json={"image": BUSYBOX, "name": names[1], "command": ["sleep", "60"]})
    assert first.json()["id"] != second.json()["id"]
    assert operator.wait_job(first.json()["id"])["state"] == "succeeded"
    assert other.wait_job(second.json()["id"])["state"] == "succeeded"


def test_cancel_queued_job_never_runs_it(operator, engine, unique, cleanup):
    # The ops lane has two worker processes: two slow jobs fill it, the third waits.
    blockers = [f"{unique}-b{i}" for i in range(2)]
    cleanup.extend([*blockers, f"{unique}-q"])
    blocking = [operator.post("/hosts/local/containers", json=slow_spec(n)).json()["id"]
                for n in blockers]
    queued = operator.post("/hosts/local/containers", json={
        "image": BUSYBOX, "name": f"{unique}-q", "command": ["sleep", "60"]}).json()
    eventually(lambda: all(operator.get(f"/jobs/{j}").json()["state"] == "running"
                           for j in blocking))
    assert operator.get(f"/jobs/{queued['id']}").json()["state"] == "queued"
    cancelled = operator.post(f"/jobs/{queued['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    for job_id in blocking:
        assert operator.post(f"/jobs/{job_id}/cancel").status_code == 200
    for job_id in blocking:
        assert operator.wait_job(job_id)["state"] == "cancelled"
        assert containers_of_job(engine, job_id) == []  # a cancelled provision leaves nothing
    final = operator.wait_job(queued["id"], timeout=5)
    assert final["state"] == "cancelled" and final["started_at"] is None
    assert containers_of_job(engine, queued["id"]) == []
    again = operator.post(f"/jobs/{queued['id']}/cancel")
    assert again.status_code == 409


def test_viewer_cannot_cancel(viewer, operator, unique, cleanup):
    cleanup.append(unique)
    job = operator.post("/hosts/local/containers", params={"wait": 30}, json={
        "image": BUSYBOX, "name": unique, "command": ["sleep", "60"]}).json()
    assert viewer.post(f"/jobs/{job['id']}/cancel").status_code == 403


def _read_sse(api, job_id: str, last_event_id: str | None = None) -> list[dict]:
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    response = api.get(f"/jobs/{job_id}/events", headers=headers, stream=True, timeout=30)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    events, current = [], {}
    for line in response.iter_lines(decode_unicode=True):
        if not line:
            if "data" in current:
                events.append(current)
            current = {}
            continue
        field, _, value = line.partition(": ")
        if field in ("id", "event", "data"):
            current[field] = value
    return events


def test_events_stream_states_and_progress_and_resume(operator, viewer, unique, cleanup):
    cleanup.append(unique)
    job = operator.post("/hosts/local/containers", params={"wait": 30}, json={
        "image": BUSYBOX, "name": unique, "command": ["sleep", "60"]}).json()
    events = _read_sse(viewer, job["id"])
    states = [json.loads(e["data"])["state"] for e in events if e["event"] == "state"]
    assert states == ["queued", "running", "succeeded"]
    assert any(e["event"] == "progress" for e in events)
    resumed = _read_sse(viewer, job["id"], last_event_id=events[1]["id"])
    assert [e["id"] for e in resumed] == [e["id"] for e in events[2:]]


def test_job_of_another_host_is_hidden_from_a_scoped_token(operator, make_token, unique,
                                                           cleanup):
    cleanup.append(unique)
    job = operator.post("/hosts/local/containers", params={"wait": 30}, json={
        "image": BUSYBOX, "name": unique, "command": ["sleep", "60"]}).json()
    scoped = make_token("viewer", hosts=["elsewhere"])
    assert scoped.get(f"/jobs/{job['id']}").status_code == 404
    assert job["id"] not in {j["id"] for j in scoped.get("/jobs").json()["items"]}


def test_job_for_a_lane_no_worker_consumes_is_503_and_records_neither_job_nor_key(
        admin, operator, test_redis, unique):
    # An agent-routed host whose agent never started: its lanes have no heartbeat.
    response = admin.post("/hosts", json={"name": unique, "url": "unix:///var/run/docker.sock",
                                          "route": "agent"})
    assert response.status_code == 201, response.text
    try:
        jobs_before = test_redis.zcard("dy:jobs")
        idem_before = set(test_redis.scan_iter("dy:idem:*"))
        refused = operator.post(f"/hosts/{unique}/containers/{unique}/start",
                                headers={"Idempotency-Key": unique})
        assert refused.status_code == 503, refused.text
        assert refused.json()["queue"] == f"host.{unique}.ops"
        assert test_redis.zcard("dy:jobs") == jobs_before
        assert set(test_redis.scan_iter("dy:idem:*")) == idem_before
        assert operator.get("/jobs", params={"host": unique}).json()["items"] == []
    finally:
        admin.delete(f"/hosts/{unique}")
