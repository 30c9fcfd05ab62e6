"""POST /builds: contexts uploaded, fetched from git or inline, built, pushed, pulled back, run."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tarfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
import requests

from tests.integration.helpers import (
    BUSYBOX,
    REGISTRY_PASSWORD,
    REGISTRY_USER,
    eventually,
    free_port,
    job_keys,
)

LOCAL_REGISTRY = "127.0.0.1:5000"
MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"


# -- helpers ------------------------------------------------------------------------------


def tar_context(files: dict[str, bytes], gz: bool = False) -> bytes:
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz" if gz else "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return archive.getvalue()


def upload(api, spec: dict, context: bytes, wait: float = 60, **kwargs) -> requests.Response:
    return api.post("/builds", params={"wait": wait} if wait else None, files={
        "spec": (None, json.dumps(spec), "application/json"),
        "context": ("context.tar", context, "application/x-tar")}, **kwargs)


def finished(api, response: requests.Response, timeout: float = 120) -> dict:
    assert response.status_code in (200, 202), response.text
    job = response.json()
    if job["state"] in ("queued", "running"):
        job = api.wait_job(job["id"], timeout=timeout)
        if job["state"] in ("queued", "running"):
            job = api.wait_job(job["id"], timeout=timeout)
    return job


def registry_digest(address: str, repository: str, tag: str, auth=None) -> str:
    response = requests.head(f"http://{address}/v2/{repository}/manifests/{tag}",
                             headers={"Accept": MANIFEST_V2}, auth=auth, timeout=10)
    assert response.status_code == 200, response.status_code
    return response.headers["Docker-Content-Digest"]


def registry_lists(address: str, repository: str, auth=None) -> tuple[list[str], list[str]]:
    """The registry's own catalog and the repository's tags."""
    repositories: list[str] = []
    url: str | None = f"http://{address}/v2/_catalog?n=1000"
    while url:
        page = requests.get(url, auth=auth, timeout=10)
        assert page.status_code == 200, page.text
        repositories += page.json()["repositories"] or []
        url = f"http://{address}{page.links['next']['url']}" if "next" in page.links else None
    tags = requests.get(f"http://{address}/v2/{repository}/tags/list", auth=auth, timeout=10)
    assert tags.status_code == 200, tags.text
    return repositories, tags.json()["tags"] or []


def events_of(test_redis, job_id: str) -> list[tuple[str, dict]]:
    return [(fields["type"], json.loads(fields["data"]))
            for _id, fields in test_redis.xrange(job_keys(test_redis, job_id)[1])]


def everything_recorded(test_redis, state_dir: Path, job_id: str) -> str:
    """The job's record, its events and every log line of the stack, as one text."""
    record = json.dumps(test_redis.hgetall(job_keys(test_redis, job_id)[0]))
    events = json.dumps(test_redis.xrange(job_keys(test_redis, job_id)[1]))
    logs = "".join(path.read_text(errors="replace") for path in (state_dir / "log").glob("*"))
    return record + events + logs


def run_and_read(engine: docker.DockerClient, image: str, path: str) -> str:
    container = engine.containers.create(image, ["cat", path])
    try:
        container.start()
        assert container.wait(timeout=30)["StatusCode"] == 0
        return container.logs(stdout=True, stderr=False).decode()
    finally:
        container.remove(force=True)


def spool_files(state_dir: Path) -> list[Path]:
    folder = state_dir / "spool"
    return sorted(folder.iterdir()) if folder.exists() else []


class Made:
    """Local image references and registry manifests a test made; removed afterwards."""

    def __init__(self, engine: docker.DockerClient) -> None:
        self.engine = engine
        self.refs: list[str] = []
        self.manifests: list[tuple[str, str, str, tuple | None]] = []

    def pushed(self, job: dict, address: str, auth=None) -> None:
        for entry in job["result"]["pushed"]:
            repository = entry["ref"].removeprefix(address + "/").rsplit(":", 1)[0]
            self.refs.append(entry["ref"])
            self.manifests.append((address, repository, entry["digest"], auth))

    def remove_local(self) -> None:
        for ref in self.refs:
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                self.engine.images.remove(ref, force=True)

    def remove_everything(self) -> None:
        self.remove_local()
        for address, repository, digest, auth in self.manifests:
            with contextlib.suppress(requests.RequestException):
                requests.delete(f"http://{address}/v2/{repository}/manifests/{digest}",
                                auth=auth, timeout=10)


@pytest.fixture
def name() -> str:
    return "dyt-build-" + uuid.uuid4().hex[:10]


@pytest.fixture
def made(engine) -> Iterator[Made]:
    tracked = Made(engine)
    yield tracked
    tracked.remove_everything()


_LAYER_LINE = re.compile(r" ---> ([0-9a-f]{12})$")
_cleaned_jobs: set[str] = set()


@pytest.fixture(autouse=True)
def intermediates(engine, test_redis) -> Iterator[None]:
    """Removes the untagged images that builds of the test left behind (failed, cancelled or
    killed builds keep the layers of the steps that finished), newest first."""
    yield
    for job_id in test_redis.zrange("dy:jobs", 0, -1):
        if job_id in _cleaned_jobs or test_redis.hget(job_keys(test_redis, job_id)[0], "kind") != \
                "builds.build":
            continue
        _cleaned_jobs.add(job_id)
        layers = [found[1] for kind, data in events_of(test_redis, job_id) if kind == "log"
                  for found in [_LAYER_LINE.search(data["message"])] if found]
        for layer in reversed(layers):
            with contextlib.suppress(docker.errors.APIError):
                if not engine.images.get(layer).tags:
                    engine.api.remove_image(layer)


@pytest.fixture(scope="module")
def git_server(state_dir: Path) -> Iterator[tuple[Path, str]]:
    """``git daemon`` on loopback exporting every repository under a folder: (folder, base URL)."""
    folder = state_dir / f"git-{uuid.uuid4().hex[:6]}"
    folder.mkdir()
    port = free_port()
    proc = subprocess.Popen(["git", "daemon", f"--base-path={folder}", "--export-all",
                             "--reuseaddr", "--listen=127.0.0.1", f"--port={port}", str(folder)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"git://127.0.0.1:{port}"
    try:
        eventually(lambda: _port_open(port), timeout=10)
        yield folder, base
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(folder, ignore_errors=True)


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def git_repository(folder: Path, name: str, files: dict[str, bytes], branch: str) -> str:
    """A bare repository ``<name>.git`` whose ``branch`` holds ``files``."""
    work = folder / f"{name}-work"
    for path, data in files.items():
        (work / path).parent.mkdir(parents=True, exist_ok=True)
        (work / path).write_bytes(data)
    git = ["git", "-c", "user.email=t@dockyard.test", "-c", "user.name=test"]
    subprocess.run([*git, "init", "-q", "-b", branch, str(work)], check=True)
    subprocess.run([*git, "-C", str(work), "add", "."], check=True)
    subprocess.run([*git, "-C", str(work), "commit", "-qm", "context"], check=True)
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(folder / f"{name}.git")],
                   check=True)
    return f"{name}.git"


# -- builds that push, pull back and run --------------------------------------------------


def test_uploaded_context_is_built_pushed_pulled_back_and_runs(operator, engine, made, name,
                                                               test_redis, state_dir):
    payload = (uuid.uuid4().hex * 2048).encode()  # 64 KiB generated file
    dockerfile = (f"FROM {BUSYBOX}\nCOPY payload.txt /data/payload.txt\n"
                  "RUN wc -c /data/payload.txt\nCMD [\"cat\", \"/data/payload.txt\"]\n")
    context = tar_context({"Dockerfile": dockerfile.encode(), "payload.txt": payload}, gz=True)
    tags = [f"{name}/app:1", f"{name}/app:2"]
    job = finished(operator, upload(operator, {"host": "local", "tags": tags,
                                               "push": {"registry": "local"}}, context))
    made.refs.extend(tags)
    assert job["state"] == "succeeded", job
    made.pushed(job, LOCAL_REGISTRY)
    result = job["result"]
    assert result["image_id"] == engine.images.get(tags[0]).id == engine.images.get(tags[1]).id
    assert result["tags"] == tags
    assert [p["ref"] for p in result["pushed"]] == [f"{LOCAL_REGISTRY}/{t}" for t in tags]
    for entry, tag in zip(result["pushed"], ("1", "2"), strict=True):
        assert entry["digest"] == registry_digest(LOCAL_REGISTRY, f"{name}/app", tag)
    catalog, registry_tags = registry_lists(LOCAL_REGISTRY, f"{name}/app")
    assert f"{name}/app" in catalog
    assert sorted(registry_tags) == ["1", "2"]

    events = events_of(test_redis, job["id"])
    lines = [data["message"] for kind, data in events if kind == "log"]
    assert "Step 2/4 : COPY payload.txt /data/payload.txt" in lines
    assert any(line.strip().startswith(str(len(payload))) for line in lines), "RUN output"
    steps = [data for kind, data in events if kind == "progress" and data["unit"] == "steps"]
    assert [(s["done"], s["total"]) for s in steps][:4] == [(0, 4), (1, 4), (2, 4), (3, 4)]
    assert (steps[-1]["done"], steps[-1]["total"]) == (4, 4)
    assert any(kind == "progress" and data["unit"] == "layers" for kind, data in events)
    assert spool_files(state_dir) == [], "the upload is deleted once the job is final"

    made.remove_local()
    with pytest.raises(docker.errors.ImageNotFound):
        engine.images.get(result["image_id"])
    pulled = finished(operator, operator.post("/hosts/local/images/pull", params={"wait": 60},
                                              json={"image": tags[0], "registry": "local"}))
    assert pulled["state"] == "succeeded", pulled
    assert pulled["result"]["id"] == result["image_id"]
    assert run_and_read(engine, f"{LOCAL_REGISTRY}/{tags[0]}", "/data/payload.txt") == \
        payload.decode()


def test_git_context_with_ref_and_subdir_is_built_pushed_and_runs(operator, engine, made, name,
                                                                  git_server):
    folder, base = git_server
    marker = uuid.uuid4().hex
    repo = git_repository(folder, name, {
        "README": b"not the context\n",
        "image/Dockerfile": f"FROM {BUSYBOX}\nCOPY marker.txt /marker.txt\n".encode(),
        "image/marker.txt": marker.encode()}, branch="release")
    tag = f"{name}/git:1"
    job = finished(operator, operator.post("/builds", params={"wait": 60}, json={
        "host": "local", "git": f"{base}/{repo}#release:image", "tags": [tag],
        "push": {"registry": "local"}}))
    made.refs.append(tag)
    assert job["state"] == "succeeded", job
    made.pushed(job, LOCAL_REGISTRY)
    [entry] = job["result"]["pushed"]
    assert entry["digest"] == registry_digest(LOCAL_REGISTRY, f"{name}/git", "1")
    catalog, registry_tags = registry_lists(LOCAL_REGISTRY, f"{name}/git")
    assert f"{name}/git" in catalog and registry_tags == ["1"]

    made.remove_local()
    pulled = finished(operator, operator.post("/hosts/local/images/pull", params={"wait": 60},
                                              json={"image": tag, "registry": "local"}))
    assert pulled["state"] == "succeeded", pulled
    assert run_and_read(engine, entry["ref"], "/marker.txt") == marker

    missing = finished(operator, operator.post("/builds", params={"wait": 60}, json={
        "host": "local", "git": f"{base}/{repo}#no-such-branch:image", "tags": [f"{tag}x"]}))
    assert missing["state"] == "failed", missing
    assert "no-such-branch" in missing["error"]["detail"]


def test_inline_dockerfile_with_build_args_labels_and_target(operator, engine, made, name):
    dockerfile = (f"FROM {BUSYBOX} AS base\nARG GREETING\nRUN echo \"$GREETING\" > /greeting\n"
                  f"FROM base AS final\nRUN echo final > /stage\n"
                  "FROM base AS other\nRUN echo other > /stage\n")
    tag = f"{name}/inline:1"
    job = finished(operator, operator.post("/builds", params={"wait": 60}, json={
        "host": "local", "dockerfile": dockerfile, "dockerfile_path": "build/Containerfile",
        "tags": [tag], "build_args": {"GREETING": "hello from dockyard"},
        "labels": {"org.example.team": name}, "target": "final", "no_cache": True,
        "push": {"registry": "local"}}))
    made.refs.append(tag)
    assert job["state"] == "succeeded", job
    made.pushed(job, LOCAL_REGISTRY)
    image = engine.images.get(tag)
    assert image.labels["org.example.team"] == name
    assert run_and_read(engine, tag, "/stage") == "final\n"

    made.remove_local()
    pulled = finished(operator, operator.post("/hosts/local/images/pull", params={"wait": 60},
                                              json={"image": tag, "registry": "local"}))
    assert pulled["state"] == "succeeded", pulled
    assert run_and_read(engine, f"{LOCAL_REGISTRY}/{tag}", "/greeting") == \
        "hello from dockyard\n"


# -- credentials and secrets --------------------------------------------------------------


def test_authenticated_registry_push_with_stored_credentials(admin, operator, made, name,
                                                             auth_registry, test_redis,
                                                             state_dir):
    good, bad = f"reg-{name}", f"bad-{name}"
    wrong_password = "wrong-" + uuid.uuid4().hex
    for registry, password in ((good, REGISTRY_PASSWORD), (bad, wrong_password)):
        created = admin.post("/registries", json={
            "name": registry, "url": f"http://{auth_registry}", "username": REGISTRY_USER,
            "password": password, "insecure": True})
        assert created.status_code == 201, created.text
    try:
        dockerfile = f"FROM {BUSYBOX}\nRUN echo {name} > /name\n"
        tag = f"{name}/auth:1"
        job = finished(operator, operator.post("/builds", params={"wait": 60}, json={
            "host": "local", "dockerfile": dockerfile, "tags": [tag],
            "push": {"registry": good}}))
        made.refs.append(tag)
        assert job["state"] == "succeeded", job
        credentials = (REGISTRY_USER, REGISTRY_PASSWORD)
        made.pushed(job, auth_registry, credentials)
        [entry] = job["result"]["pushed"]
        assert entry["ref"] == f"{auth_registry}/{tag}"
        assert entry["digest"] == registry_digest(auth_registry, f"{name}/auth", "1",
                                                  credentials)
        _catalog, registry_tags = registry_lists(auth_registry, f"{name}/auth", credentials)
        assert registry_tags == ["1"]

        refused = finished(operator, operator.post("/builds", params={"wait": 60}, json={
            "host": "local", "dockerfile": dockerfile, "tags": [f"{name}/auth:2"],
            "push": {"registry": bad}}))
        made.refs.append(f"{name}/auth:2")
        assert refused["state"] == "failed", refused
        assert refused["error"]["status"] == 502
        assert "unauthorized" in refused["error"]["detail"].lower() or \
            "authentication required" in refused["error"]["detail"].lower()
        recorded = everything_recorded(test_redis, state_dir, job["id"]) + \
            everything_recorded(test_redis, state_dir, refused["id"])
        assert REGISTRY_PASSWORD not in recorded and wrong_password not in recorded
    finally:
        admin.delete(f"/registries/{good}")
        admin.delete(f"/registries/{bad}")


def test_secret_build_args_are_redacted_everywhere(operator, engine, made, name, test_redis,
                                                   state_dir):
    secret = "s3cret-" + uuid.uuid4().hex
    dockerfile = (f"FROM {BUSYBOX}\nARG TOKEN\nARG PLAIN\n"
                  "RUN echo \"token=$TOKEN plain=$PLAIN\" && sleep 2\n"
                  "RUN test \"$TOKEN\" = nope-$TOKEN\n")
    response = operator.post("/builds", json={
        "host": "local", "dockerfile": dockerfile, "tags": [f"{name}/secret:1"],
        "build_args": {"TOKEN": {"value": secret, "secret": True}, "PLAIN": "visible"}})
    # While the job runs, its task message waits in the broker's unacked set: sealed.
    message = eventually(lambda: [raw for raw in test_redis.hvals("unacked")
                                  if response.json()["id"] in raw], timeout=20)
    assert secret not in json.dumps(message)
    job = finished(operator, response)
    made.refs.append(f"{name}/secret:1")
    assert job["state"] == "failed", job  # the last step fails, so the error is checked too
    assert job["error"]["step"] == "Step 5/5 : RUN test \"$TOKEN\" = nope-$TOKEN"
    lines = [data["message"] for kind, data in events_of(test_redis, job["id"]) if kind == "log"]
    assert "token=*** plain=visible" in lines
    assert secret not in everything_recorded(test_redis, state_dir, job["id"])
    assert secret not in json.dumps(job)


# -- failures -----------------------------------------------------------------------------


def test_a_failing_step_fails_the_job_naming_the_step_and_the_engine_message(operator, engine,
                                                                            name):
    before = {c.id for c in engine.containers.list(all=True, sparse=True)}
    job = finished(operator, operator.post("/builds", params={"wait": 60}, json={
        "host": "local", "tags": [f"{name}/broken:1"],
        "dockerfile": f"FROM {BUSYBOX}\nRUN echo before\nRUN echo boom && exit 3\n"}))
    assert job["state"] == "failed", job
    error = job["error"]
    assert error["step"] == "Step 3/3 : RUN echo boom && exit 3"
    assert error["engine_message"] == \
        "The command '/bin/sh -c echo boom && exit 3' returned a non-zero code: 3"
    assert error["step"] in error["detail"] and error["engine_message"] in error["detail"]
    # forcerm: the failed step's intermediate container is not left behind
    assert {c.id for c in engine.containers.list(all=True, sparse=True)} <= before

    unparsable = finished(operator, operator.post("/builds", params={"wait": 60}, json={
        "host": "local", "dockerfile": f"FROM {BUSYBOX}\nFROBNICATE now\n"}))
    assert unparsable["state"] == "failed", unparsable
    assert unparsable["error"]["step"] is None
    assert "unknown instruction: FROBNICATE" in unparsable["error"]["detail"]


def test_push_to_an_unreachable_registry_fails_in_bounded_time(admin, operator, engine, made,
                                                               name):
    closed = f"127.0.0.1:{free_port()}"
    registry = f"closed-{name}"
    assert admin.post("/registries", json={"name": registry, "url": f"http://{closed}",
                                           "insecure": True}).status_code == 201
    try:
        started = time.monotonic()
        job = finished(operator, operator.post("/builds", params={"wait": 60}, json={
            "host": "local", "dockerfile": f"FROM {BUSYBOX}\nRUN echo {name}\n",
            "tags": [f"{name}/nowhere:1"], "push": {"registry": registry}}))
        elapsed = time.monotonic() - started
        made.refs.extend([f"{name}/nowhere:1", f"{closed}/{name}/nowhere:1"])
        assert job["state"] == "failed", job
        assert elapsed < 30, elapsed
        assert job["error"]["status"] in (502, 503)
        assert "connection refused" in job["error"]["detail"].lower()
        assert closed in job["error"]["detail"]
        with pytest.raises(docker.errors.ImageNotFound):
            engine.images.get(f"{closed}/{name}/nowhere:1")  # the push's tag is removed again
    finally:
        admin.delete(f"/registries/{registry}")


def test_cancel_stops_a_long_build_and_leaves_no_image(operator, engine, name, test_redis,
                                                       state_dir):
    tag = f"{name}/slow:1"
    context = tar_context({"Dockerfile": f"FROM {BUSYBOX}\nRUN sleep 30\n".encode()})
    response = upload(operator, {"host": "local", "tags": [tag]}, context, wait=0)
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    eventually(lambda: any(kind == "log" and "Running in" in data["message"]
                           for kind, data in events_of(test_redis, job_id)), timeout=30)
    started = time.monotonic()
    assert operator.post(f"/jobs/{job_id}/cancel").status_code in (200, 202)
    job = operator.wait_job(job_id, timeout=30)
    elapsed = time.monotonic() - started
    assert job["state"] == "cancelled", job
    assert elapsed < 10, elapsed
    with pytest.raises(docker.errors.ImageNotFound):
        engine.images.get(tag)
    # the engine removes the step's container once the build is cancelled; read the list
    # alone (containers.list inspects each one, and the one being removed answers 404)
    eventually(lambda: not [c for c in engine.api.containers(all=True)
                            if "sleep 30" in (c.get("Command") or "")],
               timeout=20)
    assert spool_files(state_dir) == []


def test_a_worker_killed_mid_build_is_redelivered_with_its_upload(operator, engine, made,
                                                                  stack, name, test_redis,
                                                                  state_dir):
    tag = f"{name}/redelivered:1"
    context = tar_context({"Dockerfile": f"FROM {BUSYBOX}\nCOPY f /f\nRUN sleep 4\n".encode(),
                           "f": name.encode()})
    response = upload(operator, {"host": "local", "tags": [tag], "no_cache": True}, context,
                      wait=0)
    made.refs.append(tag)
    job_id = response.json()["id"]
    eventually(lambda: any(kind == "log" and "Running in" in data["message"]
                           for kind, data in events_of(test_redis, job_id)), timeout=30)
    assert len(spool_files(state_dir)) == 1
    parent = stack.procs["worker-ops"].pid
    children = subprocess.run(["pgrep", "-P", str(parent)], capture_output=True, text=True)
    for pid in children.stdout.split():
        os.kill(int(pid), signal.SIGKILL)
    job = operator.wait_job(job_id, timeout=90)
    assert job["state"] == "succeeded", job
    assert run_and_read(engine, tag, "/f") == name
    assert spool_files(state_dir) == []


def test_an_idempotent_upload_replays_the_job_and_keeps_no_second_upload(operator, made, name,
                                                                          state_dir):
    tag = f"{name}/idem:1"
    context = tar_context({"Dockerfile": f"FROM {BUSYBOX}\nLABEL n={name}\n".encode()})
    headers = {"Idempotency-Key": name}
    first = finished(operator, upload(operator, {"host": "local", "tags": [tag]}, context,
                                      headers=headers))
    made.refs.append(tag)
    again = upload(operator, {"host": "local", "tags": [tag]}, context, headers=headers)
    assert again.status_code in (200, 202), again.text
    assert again.json()["id"] == first["id"] and first["state"] == "succeeded"
    assert spool_files(state_dir) == []


# -- bad input ----------------------------------------------------------------------------


def test_a_context_that_is_not_a_tar_is_422_and_leaves_nothing(operator, state_dir):
    response = upload(operator, {"host": "local", "tags": ["dyt-build-x/y:1"]},
                      b"this is not a tar archive" * 100)
    assert response.status_code == 422, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    assert spool_files(state_dir) == []


@pytest.mark.parametrize("size", [8 * 1024 * 1024 + 64 * 1024, 12 * 1024 * 1024])
def test_a_context_over_the_limit_is_413_and_leaves_nothing(operator, state_dir, size):
    big = tar_context({"Dockerfile": f"FROM {BUSYBOX}\n".encode(), "big": b"\0" * size})
    response = upload(operator, {"host": "local"}, big)
    assert response.status_code == 413, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    assert spool_files(state_dir) == []


@pytest.mark.parametrize("body", [
    {"host": "local", "dockerfile": "FROM scratch\n", "tags": ["Upper/Case:1"]},
    {"host": "local", "dockerfile": "FROM scratch\n", "tags": ["dyt/x:bad tag"]},
    {"host": "local", "dockerfile": "FROM scratch\n", "tags": ["dyt/x@sha256:" + "a" * 64]},
    {"host": "local", "dockerfile": "FROM scratch\n", "tags": ["dyt/x:1", "dyt/x:1"]},
    {"host": "local", "dockerfile": "FROM scratch\n", "push": {"registry": "local"}},
    {"host": "local", "dockerfile": "FROM scratch\n", "build_args": {"1BAD": "x"}},
    {"host": "local", "dockerfile": "FROM scratch\n", "build_args": {"A": {"value": 1}}},
    {"host": "local", "dockerfile": "FROM scratch\n", "dockerfile_path": "../Dockerfile"},
    {"host": "local", "dockerfile": "FROM scratch\n", "env": {"A": "b"}},
    {"host": "local", "dockerfile": "FROM scratch\n", "push": {"registry": "local", "x": 1}},
    {"host": "local", "dockerfile": "FROM scratch\n", "git": "git://127.0.0.1/x.git"},
    {"host": "local"},
    {"host": "local", "git": "https://example.com/not-a-repository"},
    {"host": "local", "git": "file:///etc/x.git"},
    {"dockerfile": "FROM scratch\n"},
])
def test_invalid_build_requests_are_422(operator, body):
    response = operator.post("/builds", json=body)
    assert response.status_code == 422, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    assert response.json()["errors"]


def test_a_multipart_spec_may_not_name_another_context(operator, state_dir):
    response = upload(operator, {"host": "local", "dockerfile": "FROM scratch\n"},
                      tar_context({"Dockerfile": b"FROM scratch\n"}))
    assert response.status_code == 422, response.text
    assert "dockerfile" in response.json()["errors"]
    missing = operator.post("/builds", files={"context": ("c.tar", tar_context({"a": b"a"}))})
    assert missing.status_code == 422 and "spec" in missing.json()["errors"], missing.text
    assert spool_files(state_dir) == []


def test_unknown_registry_and_host_are_404(operator, state_dir):
    response = operator.post("/builds", json={"host": "local", "dockerfile": "FROM scratch\n",
                                              "tags": ["dyt/x:1"],
                                              "push": {"registry": "no-such-registry"}})
    assert response.status_code == 404, response.text
    assert "no-such-registry" in response.json()["detail"]
    uploaded = upload(operator, {"host": "no-such-host", "tags": ["dyt/x:1"]},
                      tar_context({"Dockerfile": b"FROM scratch\n"}))
    assert uploaded.status_code == 404, uploaded.text
    assert spool_files(state_dir) == []


def test_builds_need_an_operator_on_the_host(viewer, make_token):
    assert viewer.post("/builds", json={"host": "local",
                                        "dockerfile": "FROM scratch\n"}).status_code == 403
    elsewhere = make_token("operator", hosts=["edge-elsewhere"])
    assert elsewhere.post("/builds", json={"host": "local",
                                           "dockerfile": "FROM scratch\n"}).status_code == 403
