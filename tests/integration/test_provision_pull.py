"""Provision pulls with a stored registry's credentials, brokered per engine call."""

from __future__ import annotations

import contextlib
import json
import uuid

import docker
import pytest

from tests.integration.helpers import BUSYBOX, REGISTRY_PASSWORD, REGISTRY_USER, containers_of_job, job_keys

USER, PASSWORD = REGISTRY_USER, REGISTRY_PASSWORD


@pytest.fixture(scope="module")
def pushed_image(auth_registry, engine):
    reference = f"{auth_registry}/dyt/busybox"
    tag = uuid.uuid4().hex[:8]
    engine.images.get(BUSYBOX).tag(reference, tag)
    auth = {"username": USER, "password": PASSWORD}
    for line in engine.api.push(reference, tag, auth_config=auth, stream=True, decode=True):
        assert "error" not in line, line
    engine.images.remove(f"{reference}:{tag}")
    yield f"{reference}:{tag}"
    # The tests pull it back; leave the engine with no extra tag on the test image.
    with contextlib.suppress(docker.errors.ImageNotFound):
        engine.images.remove(f"{reference}:{tag}")


@pytest.fixture(scope="module")
def stored_registries(admin, auth_registry):
    names = {"good": f"authreg-{uuid.uuid4().hex[:6]}", "bad": f"badreg-{uuid.uuid4().hex[:6]}"}
    for kind, password in (("good", PASSWORD), ("bad", "wrong-" + PASSWORD)):
        response = admin.post("/registries", json={
            "name": names[kind], "url": f"http://{auth_registry}", "username": USER,
            "password": password, "insecure": True})
        assert response.status_code == 201, response.text
        assert "password" not in response.json() and response.json()["has_password"] is True
    yield names
    for name in names.values():
        admin.delete(f"/registries/{name}")


def test_registry_password_is_never_returned(admin, stored_registries):
    listing = admin.get("/registries").text
    assert PASSWORD not in listing
    one = admin.get(f"/registries/{stored_registries['good']}")
    assert PASSWORD not in one.text and one.json()["username"] == USER


def test_provision_pulls_a_missing_image_with_stored_credentials(operator, engine, pushed_image,
                                                                 stored_registries, unique,
                                                                 cleanup):
    cleanup.append(unique)
    assert not engine.images.list(name=pushed_image)
    response = operator.post("/hosts/local/containers", params={"wait": 60}, json={
        "image": pushed_image, "name": unique, "command": ["sleep", "60"],
        "registry": stored_registries["good"]})
    job = response.json()
    assert job["state"] == "succeeded", job
    assert engine.images.get(pushed_image).id == engine.images.get(BUSYBOX).id
    assert engine.containers.get(unique).image.id == engine.images.get(BUSYBOX).id


def test_pull_never_refuses_and_pull_always_repulls(operator, engine, pushed_image,
                                                    stored_registries, unique, cleanup):
    cleanup.append(unique)
    never = operator.post("/hosts/local/containers", params={"wait": 30}, json={
        "image": "127.0.0.1:1/dyt/nothing:1", "name": unique, "pull": "never"}).json()
    assert never["state"] == "failed" and never["error"]["status"] == 404
    always = operator.post("/hosts/local/containers", params={"wait": 60}, json={
        "image": pushed_image, "name": unique, "command": ["sleep", "60"], "pull": "always",
        "registry": stored_registries["good"]}).json()
    assert always["state"] == "succeeded", always
    events = operator.get(f"/jobs/{always['id']}/events", stream=True, timeout=30)
    progress = [line for line in events.iter_lines(decode_unicode=True)
                if line.startswith("data:") and "layers" in line]
    assert progress, "a pull reports per-layer progress"


def test_wrong_credentials_fail_with_the_registry_reason_and_no_secret(operator, engine,
                                                                       pushed_image,
                                                                       stored_registries,
                                                                       unique, test_redis):
    job = operator.post("/hosts/local/containers", params={"wait": 60}, json={
        "image": pushed_image, "name": unique, "pull": "always",
        "registry": stored_registries["bad"]}).json()
    assert job["state"] == "failed"
    detail = job["error"]["detail"].lower()
    assert "unauthorized" in detail or "authentication required" in detail
    assert containers_of_job(engine, job["id"]) == []
    raw_record = json.dumps(test_redis.hgetall(job_keys(test_redis, job["id"])[0]))
    raw_events = json.dumps(test_redis.xrange(job_keys(test_redis, job["id"])[1]))
    for secret in (PASSWORD, "wrong-" + PASSWORD):
        assert secret not in raw_record and secret not in raw_events
        assert secret not in json.dumps(job)
