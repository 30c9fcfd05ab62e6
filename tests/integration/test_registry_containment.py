"""Registries and builds: credentials stay with their registry, the allow-list cannot be
sidestepped by making an image look allowed, builds fetch nothing the policy did not see."""

from __future__ import annotations

import contextlib
import io
import json
import os
import tarfile
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import docker
import pytest
import redis

from app.core.config import Settings
from app.core.errors import InvalidInputError
from app.registry.registries import RegistryStore
from app.runtime import runtime
from tasks.containers import registry_auth
from tests.integration.conftest import ADMIN_TOKEN, SECRET_KEY, STACK_REDIS_URL, TEST_REDIS_URL, Api
from tests.integration.helpers import BUSYBOX, REGISTRY_PASSWORD, REGISTRY_USER
from tests.integration.test_builds import tar_context, upload
from tests.integration.test_faults import PrivateRedis, private_stack_env
from tests.support.stack import Stack

LOCAL_REGISTRY = "127.0.0.1:5000"


# -- a registry that records who knocked -----------------------------------------------------


class RecordingRegistry:
    """An HTTP listener on loopback answering every request like a registry that wants basic
    auth (401 + WWW-Authenticate), and recording each request's Authorization header."""

    def __init__(self) -> None:
        seen: list[tuple[str, str | None]] = []

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                seen.append((self.path, self.headers.get("Authorization")))
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="recording"')
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self) -> None:
                self._answer()

            def do_HEAD(self) -> None:
                self._answer()

            def do_POST(self) -> None:
                self._answer()

            def log_message(self, *args: object) -> None:
                pass

        self.seen = seen
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def recording() -> Iterator[RecordingRegistry]:
    listener = RecordingRegistry()
    yield listener
    listener.close()


@pytest.fixture
def registry_with_credentials(admin, auth_registry) -> Iterator[str]:
    name = f"creds-{uuid.uuid4().hex[:8]}"
    created = admin.post("/registries", json={"name": name, "url": f"http://{auth_registry}",
                                              "username": REGISTRY_USER,
                                              "password": REGISTRY_PASSWORD})
    assert created.status_code == 201, created.text
    yield name
    admin.delete(f"/registries/{name}")


def assert_refused(response, status: int, rule: str | None = None,
                   field: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/problem+json")
    body = response.json()
    if rule:
        assert body["rule"] == rule, body
    if field:
        assert field in body["errors"], body
    return body


def no_image(engine: docker.DockerClient, reference: str) -> bool:
    try:
        engine.images.get(reference)
    except docker.errors.ImageNotFound:
        return True
    return False


# -- stored credentials go only to their own registry -----------------------------------------


@pytest.mark.parametrize("route", ["/hosts/local/containers", "/hosts/auto/containers"])
def test_provision_naming_a_registry_for_an_image_elsewhere_is_refused_and_sends_nothing(
        operator, engine, recording, registry_with_credentials, unique, route):
    body = {"image": f"{recording.address}/team/web:1", "name": unique, "pull": "always",
            "registry": registry_with_credentials}
    if route.startswith("/hosts/auto"):
        body["placement"] = {"labels": {"role": "local"}, "mode": "least-loaded"}
    refused = operator.post(route, params={"wait": 30}, json=body)
    assert_refused(refused, 422, field="registry")
    assert recording.seen == []
    assert engine.containers.list(all=True, filters={"name": unique}) == []


def test_pull_naming_a_registry_for_an_image_elsewhere_is_refused_and_sends_nothing(
        operator, recording, registry_with_credentials):
    refused = operator.post("/hosts/local/images/pull", params={"wait": 30}, json={
        "image": f"{recording.address}/team/web:1", "registry": registry_with_credentials})
    assert_refused(refused, 422, field="registry")
    assert recording.seen == []


def test_the_worker_refuses_credentials_for_an_image_in_another_registry(
        recording, registry_with_credentials, stack):
    # What the worker runs before every pull or push with auth (provision, restore, pull,
    # push, commit+push, build+push), here against the suite's real Redis and sealed record.
    store = RegistryStore(redis.Redis.from_url(TEST_REDIS_URL, decode_responses=True),
                          Settings(redis_url=STACK_REDIS_URL, secret_key=SECRET_KEY))
    rt = runtime()
    saved = rt.__dict__.get("registries")
    rt.__dict__["registries"] = store
    try:
        with pytest.raises(InvalidInputError) as refused:
            registry_auth(f"{recording.address}/team/web:1", registry_with_credentials)
        assert "registry" in refused.value.extra["errors"]
        own = registry_auth(f"{store_address(store, registry_with_credentials)}/team/web:1",
                            registry_with_credentials)
        assert own is not None and own["username"] == REGISTRY_USER
    finally:
        if saved is None:
            rt.__dict__.pop("registries", None)
        else:
            rt.__dict__["registries"] = saved
    assert recording.seen == []


def store_address(store: RegistryStore, name: str) -> str:
    return store.get(name)["url"].split("://", 1)[1]


# -- registry urls --------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["https://è+Æ", "http://user:pass@host", "http://host:0",
                                 "http://host:70000", "http://host/v2/", "http://host?q",
                                 "host:5000", "http://[::1"])
def test_a_registry_url_that_is_not_scheme_host_port_is_refused_and_nothing_is_stored(
        admin, url):
    name = f"bad-{uuid.uuid4().hex[:8]}"
    assert_refused(admin.post("/registries", json={"name": name, "url": url}), 422, field="url")
    assert admin.get(f"/registries/{name}").status_code == 404


def test_patching_a_registry_to_a_bad_url_is_refused_and_changes_nothing(admin):
    name = f"good-{uuid.uuid4().hex[:8]}"
    assert admin.post("/registries", json={"name": name, "url": "http://127.0.0.1:5999"}
                      ).status_code == 201
    try:
        assert_refused(admin.patch(f"/registries/{name}",
                                   json={"url": "http://user:pass@127.0.0.1:5999"}),
                       422, field="url")
        assert admin.get(f"/registries/{name}").json()["url"] == "http://127.0.0.1:5999"
    finally:
        admin.delete(f"/registries/{name}")


# -- builds: ADD <url>, git contexts ----------------------------------------------------------


@pytest.mark.parametrize("dockerfile", [
    "FROM scratch\nADD http://{addr}/payload /payload\n",
    "FROM scratch\nadd \\\n  # sneaky\n  http://{addr}/payload /payload\n",
    "FROM scratch\nAD\\\nD http://{addr}/payload /payload\n",
])
def test_a_non_admin_build_may_not_add_a_url_and_the_engine_fetches_nothing(
        operator, engine, recording, unique, dockerfile):
    text = dockerfile.format(addr=recording.address)
    tag = f"{unique}/added:1"
    inline = operator.post("/builds", params={"wait": 30}, json={
        "host": "local", "dockerfile": text, "tags": [tag]})
    assert_refused(inline, 403, rule="no-add-url")
    uploaded = upload(operator, {"host": "local", "tags": [tag]},
                      tar_context({"Dockerfile": text.encode()}), wait=30)
    assert_refused(uploaded, 403, rule="no-add-url")
    assert recording.seen == [] and no_image(engine, tag)


def test_copy_from_an_earlier_stage_is_not_an_add_url(operator, engine, unique):
    tag = f"{unique}/staged:1"
    job = operator.post("/builds", params={"wait": 60}, json={
        "host": "local", "tags": [tag], "dockerfile":
        f"FROM {BUSYBOX} AS first\nRUN echo hi > /hi\nFROM scratch\nCOPY --from=first /hi /hi\n"
    }).json()
    try:
        assert job["state"] == "succeeded", job
    finally:
        with contextlib.suppress(docker.errors.ImageNotFound):
            engine.images.remove(tag)


def test_a_git_ref_or_subdir_starting_with_a_dash_is_refused_on_field_git(admin):
    for url in ("git://127.0.0.1:9/r.git#--upload-pack=touch", "git://127.0.0.1:9/r.git#main:-x"):
        assert_refused(admin.post("/builds", json={"host": "local", "git": url}), 422,
                       field="git")


def test_a_non_admin_git_context_from_a_host_not_allowed_is_refused(operator):
    refused = operator.post("/builds", json={"host": "local",
                                             "git": "git://localhost:9/repo.git#main"})
    assert_refused(refused, 403, rule="git-allowed-hosts")


# -- the allow-list cannot be sidestepped ------------------------------------------------------


@pytest.fixture(scope="module")
def allowing(stack_env: dict[str, str], state_dir: Path) -> Iterator[tuple[Api, Api]]:
    """A private stack (own Redis, own API and workers, same engine) whose allow-list is the
    suite's registry: (admin, operator)."""
    folder = state_dir / f"allowing-{uuid.uuid4().hex[:6]}"
    store = PrivateRedis(folder / "redis")
    store.start()
    env = private_stack_env(stack_env, store, folder, os.environ["DOCKER_HOST"],
                            DOCKYARD_ALLOWED_REGISTRIES=LOCAL_REGISTRY)
    env["DOCKYARD_LOCAL_REGISTRY"] = f"http://{LOCAL_REGISTRY}"
    running = Stack(env, folder / "log")
    try:
        running.start()
        admin = Api(running.url, ADMIN_TOKEN)
        made = admin.post("/tokens", json={"name": "op", "role": "operator"})
        assert made.status_code == 201, made.text
        yield admin, Api(running.url, made.json()["token"])
    finally:
        running.stop()
        store.stop()


@pytest.fixture
def allowed_base(engine, unique) -> Iterator[str]:
    """The test image pushed to the allowed registry and present on the engine."""
    repository = f"{LOCAL_REGISTRY}/{unique}/base"
    engine.images.get(BUSYBOX).tag(repository, "1")
    for chunk in engine.api.push(repository, "1", stream=True, decode=True):
        assert "error" not in chunk, chunk
    yield f"{repository}:1"
    with contextlib.suppress(docker.errors.APIError):
        engine.images.remove(f"{repository}:1")


def test_pull_from_a_registry_off_the_allow_list_is_refused(allowing, engine, unique):
    _, operator = allowing
    refused = operator.post("/hosts/local/images/pull", json={"image": f"{unique}/x:1"})
    assert_refused(refused, 403, rule="allowed-registries")
    assert no_image(engine, f"{unique}/x:1")


@pytest.mark.parametrize("source", [BUSYBOX, "id"])
def test_tagging_an_image_into_an_allowed_namespace_needs_an_allowed_source(
        allowing, engine, unique, source):
    _, operator = allowing
    ref = engine.images.get(BUSYBOX).id if source == "id" else source
    target = f"{LOCAL_REGISTRY}/{unique}/smuggled"
    refused = operator.post(f"/hosts/local/images/{ref}/tag", json={"repository": target})
    assert_refused(refused, 403, rule="allowed-registries")
    assert no_image(engine, f"{target}:latest")


def test_tagging_an_allowed_image_to_another_allowed_name_is_fine(allowing, engine, unique,
                                                                   allowed_base):
    _, operator = allowing
    target = f"{LOCAL_REGISTRY}/{unique}/renamed"
    job = operator.post(f"/hosts/local/images/{allowed_base}/tag", params={"wait": 30},
                        json={"repository": target, "tag": "2"}).json()
    try:
        assert job["state"] == "succeeded", job
    finally:
        with contextlib.suppress(docker.errors.APIError):
            engine.images.remove(f"{target}:2")


def test_pushing_a_disallowed_image_into_an_allowed_registry_is_refused(allowing, engine,
                                                                         unique):
    _, operator = allowing
    target = f"{LOCAL_REGISTRY}/{BUSYBOX.split(':')[0]}"
    refused = operator.post(f"/hosts/local/images/{BUSYBOX}/push",
                            json={"registry": "local", "tag": unique})
    assert_refused(refused, 403, rule="allowed-registries")
    assert no_image(engine, f"{target}:{unique}")


def test_loading_a_tar_that_names_an_allowed_image_is_refused(allowing, engine, unique):
    _, operator = allowing
    name = f"{LOCAL_REGISTRY}/{unique}/loaded:1"
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        raw = json.dumps([{"Config": "c.json", "RepoTags": [name], "Layers": []}]).encode()
        info = tarfile.TarInfo("manifest.json")
        info.size = len(raw)
        tar.addfile(info, io.BytesIO(raw))
    refused = operator.post("/hosts/local/images/load", data=archive.getvalue(),
                            headers={"Content-Type": "application/x-tar"})
    assert_refused(refused, 403, rule="allowed-registries")
    assert no_image(engine, name)


def test_importing_or_committing_into_an_allowed_namespace_is_refused(allowing, engine,
                                                                       unique):
    _, operator = allowing
    name = f"{LOCAL_REGISTRY}/{unique}/made"
    refused = operator.post("/hosts/local/images/import", params={"repository": name},
                            data=tar_context({"bin/sh": b"x"}),
                            headers={"Content-Type": "application/x-tar"})
    assert_refused(refused, 403, rule="allowed-registries")
    committed = operator.post("/hosts/local/containers/anything/commit",
                              json={"repository": name})
    assert_refused(committed, 403, rule="allowed-registries")
    assert no_image(engine, f"{name}:latest")


@pytest.mark.parametrize("dockerfile, args", [
    ("FROM elsewhere.example/team/base:1\n", {}),
    ("ARG REG=elsewhere.example\nFROM ${REG}/team/base:1\n", {}),
    ("ARG REG=" + LOCAL_REGISTRY + "\nFROM $REG/team/base:1\n", {"REG": "elsewhere.example"}),
    ("FROM scratch AS s\nCOPY --from=elsewhere.example/tools /t /t\n", {}),
    ("FROM scratch\nLABEL smuggled=yes\n", {}),
])
def test_a_build_reading_or_making_a_disallowed_image_is_refused(allowing, engine, unique,
                                                                 dockerfile, args):
    _, operator = allowing
    tag = f"{LOCAL_REGISTRY}/{unique}/built:1"
    refused = operator.post("/builds", json={"host": "local", "dockerfile": dockerfile,
                                             "tags": [tag], "build_args": args})
    assert_refused(refused, 403, rule="allowed-registries")
    assert no_image(engine, tag)


def test_a_build_from_an_allowed_image_is_built_under_an_allowed_name(allowing, engine,
                                                                      unique, allowed_base):
    _, operator = allowing
    tag = f"{LOCAL_REGISTRY}/{unique}/derived:1"
    job = operator.post("/builds", params={"wait": 60}, json={
        "host": "local", "tags": [tag],
        "dockerfile": f"ARG BASE={allowed_base}\nFROM $BASE AS base\nFROM base\nLABEL ok=1\n"
    }).json()
    try:
        assert job["state"] == "succeeded", job
    finally:
        with contextlib.suppress(docker.errors.APIError):
            engine.images.remove(tag)


def test_a_git_build_is_refused_when_its_dockerfile_cannot_be_checked(allowing):
    _, operator = allowing
    refused = operator.post("/builds", json={"host": "local",
                                             "git": "git://127.0.0.1:9/repo.git#main"})
    assert_refused(refused, 403, rule="allowed-registries")


def test_provision_of_an_image_off_the_allow_list_is_refused(allowing, engine, unique):
    _, operator = allowing
    refused = operator.post("/hosts/local/containers", json={"image": BUSYBOX, "name": unique,
                                                             "pull": "never"})
    assert_refused(refused, 403, rule="allowed-registries")
    assert engine.containers.list(all=True, filters={"name": unique}) == []
