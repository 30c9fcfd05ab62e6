"""Authentication, roles, host scope, tokens and the problem+json answer to every bad request."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
import requests

from app.security.auth import hash_token
from tests.integration.conftest import ADMIN_TOKEN, Api
from tests.support.stack import Stack

PROBLEM_MEMBERS = {"type", "title", "status", "detail"}


def assert_problem(response: requests.Response, status: int) -> dict:
    """The response is an RFC 9457 problem with ``status``; returns its body."""
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].split(";")[0].strip() == "application/problem+json"
    body = response.json()
    assert set(body) >= PROBLEM_MEMBERS, body
    assert body["status"] == status
    assert body["type"].startswith("https://") and body["title"] and body["detail"]
    assert "Traceback" not in response.text
    return body


def host_absent(admin: Api, name: str) -> bool:
    response = admin.get(f"/hosts/{name}")
    return response.status_code == 404 and name not in [h["name"] for h in admin.get("/hosts").json()]


def token_names(admin: Api) -> list[str]:
    response = admin.get("/tokens")
    assert response.status_code == 200, response.text
    return [t["name"] for t in response.json()]


def api_url(stack: Stack, path: str) -> str:
    return f"{stack.url}/api/v1{path}"


def valid_host(name: str) -> dict:
    return {"name": name, "url": "tcp://127.0.0.1:2375"}


# --------------------------------------------------------------------------- 401


def test_request_without_a_token_is_401_problem(stack: Stack) -> None:
    body = assert_problem(requests.get(api_url(stack, "/hosts"), timeout=10), 401)
    assert "Authorization" in body["detail"]


@pytest.mark.parametrize("header", ["Basic YWRtaW46YWRtaW4=", "Bearer", "Bearer    ", "dy_abc",
                                    "Token dy_abc"])
def test_malformed_authorization_header_is_401_problem(stack: Stack, header: str) -> None:
    response = requests.get(api_url(stack, "/hosts"), headers={"Authorization": header},
                            timeout=10)
    body = assert_problem(response, 401)
    assert "Bearer" in body["detail"]


def test_unknown_token_is_401_problem(stack: Stack) -> None:
    response = requests.get(api_url(stack, "/hosts"),
                            headers={"Authorization": "Bearer dy_" + uuid.uuid4().hex}, timeout=10)
    body = assert_problem(response, 401)
    assert body["detail"] == "invalid token"


def test_bearer_scheme_is_case_insensitive(stack: Stack) -> None:
    response = requests.get(api_url(stack, "/hosts"),
                            headers={"Authorization": f"bearer {ADMIN_TOKEN}"}, timeout=10)
    assert response.status_code == 200, response.text


def test_401_tells_the_client_to_use_bearer_auth(stack: Stack) -> None:
    response = requests.get(api_url(stack, "/hosts"), timeout=10)
    assert response.status_code == 401
    assert response.headers.get("WWW-Authenticate", "").lower().startswith("bearer")


def test_a_request_without_a_token_changes_nothing(stack: Stack, admin: Api, unique: str) -> None:
    response = requests.post(api_url(stack, "/hosts"), json=valid_host(unique), timeout=10)
    assert_problem(response, 401)
    assert host_absent(admin, unique)


# --------------------------------------------------------------------------- 403: roles


def test_viewer_reads_hosts(viewer: Api) -> None:
    response = viewer.get("/hosts")
    assert response.status_code == 200, response.text
    assert "local" in [h["name"] for h in response.json()]


def test_viewer_cannot_register_a_host(viewer: Api, admin: Api, unique: str) -> None:
    body = assert_problem(viewer.post("/hosts", json=valid_host(unique)), 403)
    assert "admin" in body["detail"]
    assert host_absent(admin, unique)


def test_viewer_cannot_create_a_token(viewer: Api, admin: Api, unique: str) -> None:
    assert_problem(viewer.post("/tokens", json={"name": unique, "role": "admin"}), 403)
    assert unique not in token_names(admin)


@pytest.mark.parametrize(("method", "path", "payload"), [
    ("POST", "/hosts", {"name": "op-made", "url": "tcp://127.0.0.1:2375"}),
    ("PATCH", "/hosts/local", {"labels": {"owned": "by-operator"}}),
    ("DELETE", "/hosts/local", None),
    ("GET", "/tokens", None),
    ("POST", "/tokens", {"name": "op-made", "role": "admin"}),
    ("DELETE", "/tokens/bootstrap-admin", None),
])
def test_operator_is_refused_on_admin_routes(operator: Api, admin: Api, method: str, path: str,
                                             payload: dict | None) -> None:
    body = assert_problem(operator.request(method, path, json=payload), 403)
    assert body.get("required_role") == "admin"
    # Nothing changed: local is still there, unlabelled by the operator, the admin still works.
    local = admin.get("/hosts/local")
    assert local.status_code == 200, local.text
    assert "owned" not in local.json()["labels"]
    assert host_absent(admin, "op-made")
    assert "op-made" not in token_names(admin)


# --------------------------------------------------------------------------- 403: host scope


@pytest.fixture(scope="module")
def scoped_to_other(make_token) -> Api:
    return make_token("operator", ["other"])


def test_token_scoped_elsewhere_cannot_read_local_info(scoped_to_other: Api) -> None:
    body = assert_problem(scoped_to_other.get("/hosts/local/info"), 403)
    assert "local" in body["detail"]


@pytest.mark.parametrize("path", ["/hosts/local", "/hosts/local/version", "/hosts/local/df"])
def test_token_scoped_elsewhere_cannot_read_any_local_route(scoped_to_other: Api,
                                                            path: str) -> None:
    assert_problem(scoped_to_other.get(path), 403)


def test_token_scoped_elsewhere_does_not_see_local_in_the_inventory(scoped_to_other: Api) -> None:
    response = scoped_to_other.get("/hosts")
    assert response.status_code == 200, response.text
    assert "local" not in [h["name"] for h in response.json()]


def test_token_scoped_to_local_reads_local(make_token) -> None:
    scoped = make_token("viewer", ["local"])
    assert [h["name"] for h in scoped.get("/hosts").json()] == ["local"]
    assert scoped.get("/hosts/local/version").status_code == 200


def test_scoped_admin_cannot_mint_a_token_with_wider_scope(make_token, admin: Api,
                                                           unique: str) -> None:
    scoped_admin = make_token("admin", ["other"])
    response = scoped_admin.post("/tokens", json={"name": unique, "role": "admin", "hosts": None})
    try:
        assert_problem(response, 403)
    finally:
        if response.status_code == 201:
            admin.delete(f"/tokens/{response.json()['id']}")


# --------------------------------------------------------------------------- routing errors


@pytest.mark.parametrize("path", ["/api/v1/nope", "/api/v2/hosts", "/nope"])
def test_unknown_route_is_404_problem(stack: Stack, admin: Api, path: str) -> None:
    assert_problem(admin.session.get(stack.url + path, timeout=10), 404)
    assert_problem(requests.get(stack.url + path, timeout=10), 404)


def test_wrong_method_is_405_problem_with_allow(admin: Api) -> None:
    response = admin.put("/hosts", json={})
    assert_problem(response, 405)
    allowed = {m.strip() for m in response.headers["Allow"].split(",")}
    assert {"GET", "POST"} <= allowed
    assert "PUT" not in allowed


def test_wrong_method_on_a_host_lists_its_methods(admin: Api) -> None:
    response = admin.post("/hosts/local", json={})
    assert_problem(response, 405)
    allowed = {m.strip() for m in response.headers["Allow"].split(",")}
    assert {"GET", "PATCH", "DELETE"} <= allowed


# --------------------------------------------------------------------------- body errors


def test_malformed_json_is_400_problem(admin: Api, unique: str) -> None:
    response = admin.post("/hosts", data=f'{{"name": "{unique}", "url": ',
                          headers={"Content-Type": "application/json"})
    assert_problem(response, 400)
    assert host_absent(admin, unique)


def test_text_plain_body_is_415_problem(admin: Api, unique: str) -> None:
    response = admin.post("/hosts", data=json.dumps(valid_host(unique)),
                          headers={"Content-Type": "text/plain"})
    body = assert_problem(response, 415)
    assert "application/json" in body["detail"]
    assert host_absent(admin, unique)


def test_every_body_sent_over_the_limit_gets_the_413_answer(admin: Api, unique: str) -> None:
    payload = {**valid_host(unique), "labels": {"padding": "x" * (300 * 1024)}}
    for _ in range(40):
        assert_problem(admin.post("/hosts", json=payload), 413)
    assert host_absent(admin, unique)


def test_body_just_under_the_limit_is_read(admin: Api, unique: str) -> None:
    payload = {**valid_host(unique), "labels": {f"k{i}": "v" * 200 for i in range(1000)}}
    assert 200 * 1024 < len(json.dumps(payload)) < 256 * 1024
    response = admin.post("/hosts", json=payload)
    try:
        assert response.status_code == 201, response.text
        assert len(response.json()["labels"]) == 1000
    finally:
        admin.delete(f"/hosts/{unique}")


def test_unknown_fields_are_422_keyed_by_field(admin: Api, unique: str) -> None:
    response = admin.post("/hosts", json={**valid_host(unique), "privileged": True,
                                          "colour": "red"})
    body = assert_problem(response, 422)
    assert set(body["errors"]) == {"privileged", "colour"}
    assert body["type"].endswith("/invalid-input")
    assert host_absent(admin, unique)


def test_missing_required_fields_are_422_keyed_by_field(admin: Api) -> None:
    body = assert_problem(admin.post("/hosts", json={"labels": {}}), 422)
    assert set(body["errors"]) == {"name", "url"}


def test_invalid_host_name_is_422(admin: Api) -> None:
    body = assert_problem(admin.post("/hosts", json=valid_host("Not A Name")), 422)
    assert set(body["errors"]) == {"name"}
    assert host_absent(admin, "Not A Name")


def test_json_array_instead_of_object_is_422(admin: Api) -> None:
    assert_problem(admin.post("/hosts", json=[valid_host("x")]), 422)


def test_request_id_is_echoed_on_problems(admin: Api) -> None:
    response = admin.get("/hosts/no-such-host", headers={"X-Request-ID": "trace-123"})
    assert_problem(response, 404)
    assert response.headers["X-Request-ID"] == "trace-123"


# --------------------------------------------------------------------------- tokens


def test_token_secret_is_returned_once_and_works(admin: Api, stack: Stack, unique: str) -> None:
    response = admin.post("/tokens", json={"name": unique, "role": "viewer"})
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["token"].startswith("dy_") and len(created["token"]) > 40
    assert created["role"] == "viewer" and created["hosts"] is None
    fresh = Api(stack.url, created["token"])
    assert fresh.get("/hosts").status_code == 200
    listed = [t for t in admin.get("/tokens").json() if t["id"] == created["id"]]
    assert listed and "token" not in listed[0]


def test_token_list_never_contains_a_secret_or_hash(admin: Api, unique: str) -> None:
    secrets = [admin.post("/tokens", json={"name": f"{unique}-{i}", "role": "operator"}).json()
               ["token"] for i in range(2)]
    response = admin.get("/tokens")
    assert response.status_code == 200, response.text
    text = response.text
    assert f"{unique}-0" in text and f"{unique}-1" in text
    for secret in [*secrets, ADMIN_TOKEN]:
        assert secret not in text
        assert hash_token(secret) not in text
    for record in response.json():
        assert set(record) <= {"id", "name", "role", "hosts", "expires_at", "created_at",
                               "rate_limit"}


def test_revoked_token_is_refused_at_once(admin: Api, stack: Stack, unique: str) -> None:
    created = admin.post("/tokens", json={"name": unique, "role": "operator"}).json()
    holder = Api(stack.url, created["token"])
    assert holder.get("/hosts").status_code == 200
    assert admin.delete(f"/tokens/{created['id']}").status_code == 204
    assert_problem(holder.get("/hosts"), 401)
    assert unique not in token_names(admin)


def test_revoking_an_unknown_token_is_404(admin: Api) -> None:
    assert_problem(admin.delete("/tokens/01NOSUCHTOKEN0000000000000"), 404)


def test_token_with_expires_at_in_the_past_is_422(admin: Api, unique: str) -> None:
    past = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    body = assert_problem(admin.post("/tokens", json={"name": unique, "role": "viewer",
                                                      "expires_at": past}), 422)
    assert "expires_at" in body["errors"]
    assert unique not in token_names(admin)


def test_past_expires_at_with_a_utc_offset_is_422(admin: Api, unique: str) -> None:
    tz = timezone(timedelta(hours=14))
    past = (datetime.now(UTC) - timedelta(hours=1)).astimezone(tz).isoformat()
    response = admin.post("/tokens", json={"name": unique, "role": "viewer", "expires_at": past})
    try:
        assert_problem(response, 422)
    finally:
        if response.status_code == 201:
            admin.delete(f"/tokens/{response.json()['id']}")


def test_expires_at_without_a_timezone_is_422(admin: Api, unique: str) -> None:
    naive = (datetime.now(UTC) + timedelta(days=1)).replace(tzinfo=None).isoformat()
    body = assert_problem(admin.post("/tokens", json={"name": unique, "role": "viewer",
                                                      "expires_at": naive}), 422)
    assert "expires_at" in body["errors"]


def test_token_stops_working_when_it_expires(admin: Api, stack: Stack, unique: str) -> None:
    expires = datetime.now(UTC) + timedelta(seconds=2)
    response = admin.post("/tokens", json={"name": unique, "role": "viewer",
                                           "expires_at": expires.isoformat()})
    assert response.status_code == 201, response.text
    holder = Api(stack.url, response.json()["token"])
    assert holder.get("/hosts").status_code == 200
    time.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 0.2)
    body = assert_problem(holder.get("/hosts"), 401)
    assert "expired" in body["detail"]


@pytest.mark.parametrize("payload", [
    {"name": "bad-role", "role": "root"},
    {"name": "", "role": "viewer"},
    {"name": "bad-scope", "role": "viewer", "hosts": ["Not A Host"]},
])
def test_invalid_token_requests_are_422(admin: Api, payload: dict) -> None:
    body = assert_problem(admin.post("/tokens", json=payload), 422)
    assert body["errors"]
    assert payload["name"] not in token_names(admin) or payload["name"] == ""


# --------------------------------------------------------------------------- public endpoints


def test_healthz_is_public(stack: Stack) -> None:
    response = requests.get(stack.url + "/healthz", timeout=10)
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


def test_readyz_is_public_and_reports_redis_and_lanes(stack: Stack) -> None:
    response = requests.get(stack.url + "/readyz", timeout=10)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ready"
    assert body["checks"]["redis"] is True
    assert body["checks"]["lanes"] == {"engine.ops": True, "engine.query": True}


def test_openapi_document_is_public_json_with_the_routes(stack: Stack) -> None:
    response = requests.get(stack.url + "/api/v1/openapi.json", timeout=10)
    assert response.status_code == 200
    spec = response.json()
    assert spec["openapi"].startswith("3.")
    paths = spec["paths"]
    for path in ("/api/v1/hosts", "/api/v1/hosts/{host}", "/api/v1/hosts/{host}/info",
                 "/api/v1/tokens", "/api/v1/jobs"):
        assert path in paths, sorted(paths)
    assert "bearer" in spec["components"]["securitySchemes"]
