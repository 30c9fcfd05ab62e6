"""Audit log, policy dry-run and per-token rate limits."""

from __future__ import annotations

import time

from tests.integration.helpers import BUSYBOX


def test_changing_and_denied_requests_are_audited_without_secrets(admin, operator, viewer,
                                                                  unique, cleanup):
    cleanup.append(unique)
    job = operator.post("/hosts/local/containers", params={"wait": 30}, json={
        "image": BUSYBOX, "name": unique, "command": ["sleep", "30"],
        "env": {"API_TOKEN": "dy_supersecretvalue123"}}).json()
    denied = viewer.post("/hosts/local/containers", json={"image": BUSYBOX})
    assert denied.status_code == 403
    refused = operator.post("/hosts/local/containers", json={"image": BUSYBOX,
                                                             "privileged": True})
    assert refused.status_code == 403
    registry = admin.post("/registries", json={"name": f"r-{unique}", "url": "http://127.0.0.1:1",
                                               "username": "u", "password": "hunter2-secret"})
    assert registry.status_code == 201
    admin.delete(f"/registries/r-{unique}")
    page = admin.get("/audit", params={"limit": 50}).json()["items"]
    text = str(page)
    assert "dy_supersecretvalue123" not in text and "hunter2-secret" not in text
    mine = next(e for e in page if e.get("job_id") == job["id"])
    assert mine["actor"].startswith("t-operator") and mine["host"] == "local"
    assert mine["outcome"] == "ok" and mine["decision"] == "allowed"
    assert mine["request"]["body"]["env"]["API_TOKEN"] == "***"
    assert mine["request_id"]
    policy = next(e for e in page if e.get("rule") == "no-privileged")
    assert policy["outcome"] == "denied" and policy["status"] == 403
    role = next(e for e in page if e["actor"] and e["actor"].startswith("t-viewer")
                and e["status"] == 403)
    assert role["route"] == "/api/v1/hosts/<string:host>/containers"
    denied_only = admin.get("/audit", params={"outcome": "denied", "limit": 100}).json()["items"]
    assert denied_only and all(e["outcome"] == "denied" for e in denied_only)


def test_audit_is_admin_only_and_append_only(operator, admin):
    assert operator.get("/audit").status_code == 403
    assert admin.delete("/audit").status_code == 405
    assert admin.post("/audit", json={}).status_code == 405


def test_policy_check_lists_every_violation_and_creates_nothing(viewer, engine):
    before = len(engine.containers.list(all=True, sparse=True))
    response = viewer.post("/policy/check", json={
        "image": BUSYBOX, "privileged": True, "network": "host", "volumes": ["/etc:/e"]})
    assert response.status_code == 200
    body = response.json()
    assert body["allowed"] is False
    assert [v["rule"] for v in body["violations"]] == ["no-privileged", "no-host-network",
                                                       "bind-roots"]
    clean = viewer.post("/policy/check", json={"image": BUSYBOX}).json()
    assert clean == {"allowed": True, "violations": []}
    assert viewer.post("/policy/check", json={"image": ""}).status_code == 422
    assert len(engine.containers.list(all=True, sparse=True)) == before


def test_rate_limit_answers_429_with_retry_after_per_token(admin, make_token):
    response = admin.post("/tokens", json={"name": "limited", "role": "viewer",
                                           "rate_limit": {"reads": 5}})
    assert response.status_code == 201
    from tests.integration.conftest import Api

    limited = Api(admin.base.removesuffix("/api/v1"), response.json()["token"])
    other = make_token("viewer")
    time.sleep(1 - time.time() % 1)  # start at the beginning of a one-second window
    statuses = [limited.get("/hosts").status_code for _ in range(8)]
    assert statuses[:5] == [200] * 5 and 429 in statuses[5:]
    blocked = limited.get("/hosts")
    if blocked.status_code == 429:
        assert blocked.headers["Retry-After"].isdigit()
        assert blocked.headers["Content-Type"] == "application/problem+json"
    assert other.get("/hosts").status_code == 200  # limits are per token
    time.sleep(1.1)
    assert limited.get("/hosts").status_code == 200
