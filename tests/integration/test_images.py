"""Image routes agree with the docker CLI run against the same engine."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import tarfile
import time
from collections.abc import Iterator

import docker
import pytest
import requests

from tests.integration.helpers import (
    BUSYBOX,
    REGISTRY_PASSWORD,
    REGISTRY_USER,
    eventually,
    free_port,
)

LOCAL_REGISTRY = "127.0.0.1:5000"
MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"


def docker_cli(*args: str) -> str:
    """Run the docker CLI against the engine under test (DOCKER_HOST) and return stdout."""
    done = subprocess.run(["docker", *args], env=os.environ, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def cli_lines(*args: str) -> list[str]:
    return docker_cli(*args).split()


def cli_fails(*args: str) -> bool:
    return subprocess.run(["docker", *args], env=os.environ, capture_output=True,
                          timeout=60).returncode != 0


def registry_digest(address: str, repository: str, tag: str, auth=None) -> str:
    response = requests.head(f"http://{address}/v2/{repository}/manifests/{tag}",
                             headers={"Accept": MANIFEST_V2}, auth=auth, timeout=10)
    assert response.status_code == 200, response.status_code
    return response.headers["Docker-Content-Digest"]


class Images:
    """Images a test builds or tags; all carry the label ``dockyard.test=<unique>``."""

    def __init__(self, engine: docker.DockerClient, unique: str) -> None:
        self.engine = engine
        self.unique = unique
        self.label = f"dockyard.test={unique}"
        self.refs: list[str] = []
        self.manifests: list[tuple[str, str, str, tuple | None]] = []

    def build(self, tag: str, marker: str = "1") -> str:
        """``docker build`` of ``FROM busybox`` + labels from a tar context; the image id."""
        dockerfile = (f"FROM {BUSYBOX}\nLABEL dockyard.test={self.unique}\n"
                      f"LABEL marker={marker}\n").encode()
        context = io.BytesIO()
        with tarfile.open(fileobj=context, mode="w") as tar:
            info = tarfile.TarInfo("Dockerfile")
            info.size = len(dockerfile)
            tar.addfile(info, io.BytesIO(dockerfile))
        context.seek(0)
        self.refs.append(tag)
        image, _log = self.engine.images.build(fileobj=context, custom_context=True, tag=tag,
                                               pull=False, rm=True)
        return image.id

    def tag(self, source: str, reference: str) -> str:
        repository, _, tag = reference.rpartition(":")
        self.refs.append(reference)
        self.engine.images.get(source).tag(repository, tag)
        return reference

    def remove_everything(self) -> None:
        for ref in self.refs:
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                self.engine.images.remove(ref, force=True)
        for image in self.engine.images.list(all=True, filters={"label": self.label}):
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                self.engine.images.remove(image.id, force=True)
        for address, repository, digest, auth in self.manifests:
            requests.delete(f"http://{address}/v2/{repository}/manifests/{digest}", auth=auth,
                            timeout=10)


@pytest.fixture
def made(engine, unique) -> Iterator[Images]:
    images = Images(engine, unique)
    yield images
    images.remove_everything()


def job_of(response: requests.Response) -> dict:
    assert response.status_code in (200, 202), response.text
    return response.json()


# -- reads --------------------------------------------------------------------------------


def test_images_quiet_all_and_dangling_match_docker_images_q(viewer, made, unique):
    made.build(f"{unique}/app:v1", marker="1")
    made.build(f"{unique}/app:v1", marker="2")  # the first build is now dangling

    def same(params: dict, *cli: str) -> bool:
        listed = viewer.get("/hosts/local/images", params={"quiet": "true", **params})
        assert listed.status_code == 200, listed.text
        return set(listed.json()) == set(cli_lines("images", "-q", "--no-trunc", *cli))

    eventually(lambda: same({}), timeout=10)
    eventually(lambda: same({"all": "true"}, "-a"), timeout=10)
    eventually(lambda: same({"dangling": "true"}, "-f", "dangling=true"), timeout=10)
    labelled = {"label": made.label}
    assert same(labelled, "-f", f"label={made.label}")
    assert same({**labelled, "dangling": "true"}, "-f", f"label={made.label}", "-f",
                "dangling=true")
    assert len(viewer.get("/hosts/local/images", params={**labelled, "quiet": "true"}).json()) == 2


def test_images_rows_carry_tags_and_reference_filters_like_docker(viewer, engine):
    busybox_id = engine.images.get(BUSYBOX).id
    rows = viewer.get("/hosts/local/images", params={"reference": "dockyard-test/busybox"}).json()
    assert [row["id"] for row in rows] == [busybox_id]
    assert BUSYBOX in rows[0]["repo_tags"]
    assert rows[0]["size"] == engine.images.get(BUSYBOX).attrs["Size"]
    assert set(cli_lines("images", "-q", "--no-trunc", "dockyard-test/busybox")) == {busybox_id}
    assert viewer.get("/hosts/local/images", params={"reference": "no-such-repo-xyz"}).json() == []


def test_inspect_by_name_id_prefix_and_registry_port_ref_matches_docker(viewer, made, unique):
    image_id = made.build(f"{unique}/app:v1")
    slashed = made.tag(image_id, f"{LOCAL_REGISTRY}/{unique}/team/web:1")
    expected = docker_cli("image", "inspect", "--format", "{{.Id}}", slashed).strip()
    assert expected == image_id
    for ref in (slashed, f"{unique}/app:v1", image_id, image_id.removeprefix("sha256:")[:12]):
        response = viewer.get(f"/hosts/local/images/{ref}")
        assert response.status_code == 200, (ref, response.text)
        assert response.json()["Id"] == expected
    assert slashed in viewer.get(f"/hosts/local/images/{slashed}").json()["RepoTags"]


def test_history_has_the_layers_docker_history_lists(viewer, made, unique):
    slashed = made.tag(BUSYBOX, f"{LOCAL_REGISTRY}/{unique}/history:1")
    for ref in (BUSYBOX, slashed):
        history = viewer.get(f"/hosts/local/images/{ref}/history")
        assert history.status_code == 200, history.text
        cli = cli_lines("history", "-q", "--no-trunc", ref)
        assert len(history.json()) == len(cli)
        assert [entry["id"] or "<missing>" for entry in history.json()] == cli
    assert viewer.get("/hosts/local/images/no-such-image-xyz/history").status_code == 404


def test_search_fails_fast_with_a_clear_problem_when_the_index_is_unreachable(viewer):
    started = time.monotonic()
    response = viewer.get("/hosts/local/images/search", params={"term": "busybox", "limit": 3})
    elapsed = time.monotonic() - started
    print(f"search answered {response.status_code} in {elapsed:.2f}s: "
          f"{response.json().get('detail')}")
    assert response.status_code in (502, 503), response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    assert "index" in response.json()["detail"] or "docker.io" in response.json()["detail"]
    assert elapsed < 12
    assert viewer.get("/hosts/local/images/search", params={"term": "x", "limit": 0}
                      ).status_code == 422
    assert viewer.get("/hosts/local/images/search").status_code == 422


# -- tag and rmi --------------------------------------------------------------------------


def test_tag_then_rmi_as_docker_shows_it(operator, made, unique):
    image_id = made.build(f"{unique}/app:v1")
    repository = f"{LOCAL_REGISTRY}/{unique}/web"
    made.refs.append(f"{repository}:2")
    tagged = job_of(operator.post(f"/hosts/local/images/{unique}/app:v1/tag",
                                  params={"wait": 30}, json={"repository": repository,
                                                             "tag": "2"}))
    assert tagged["state"] == "succeeded", tagged
    assert tagged["result"] == {"id": image_id, "ref": f"{repository}:2"}
    assert f"{repository}:2" in docker_cli("image", "inspect", "--format",
                                           "{{json .RepoTags}}", image_id)
    removed = job_of(operator.delete(f"/hosts/local/images/{repository}:2", params={"wait": 30}))
    assert removed["state"] == "succeeded", removed
    assert removed["result"]["untagged"] == [f"{repository}:2"]
    assert removed["result"]["deleted"] == []  # the image keeps its other tag
    assert cli_fails("image", "inspect", f"{repository}:2")
    assert docker_cli("image", "inspect", "--format", "{{.Id}}", image_id).strip() == image_id


def test_bulk_rmi_reports_each_ref_like_docker_rmi_a_b(operator, made, unique):
    first = made.build(f"{unique}/one:1", marker="one")
    second = made.build(f"{unique}/two:1", marker="two")
    job = job_of(operator.delete("/hosts/local/images", params={
        "ref": [f"{unique}/one:1", "no-such-image-xyz:1", f"{unique}/two:1"],
        "wait": 30}))
    assert job["state"] == "succeeded", job
    results = job["result"]["results"]
    assert [r["ref"] for r in results] == [f"{unique}/one:1", "no-such-image-xyz:1",
                                           f"{unique}/two:1"]
    assert first in results[0]["deleted"] and second in results[2]["deleted"]
    assert results[1]["error"]["status"] == 404 and results[1]["deleted"] == []
    assert (job["result"]["removed"], job["result"]["failed"]) == (2, 1)
    assert cli_fails("image", "inspect", first) and cli_fails("image", "inspect", second)


def test_rmi_of_an_image_in_use_is_409_unless_forced(operator, engine, made, unique, cleanup):
    image_id = made.build(f"{unique}/used:1")
    cleanup.append(unique)
    engine.containers.create(f"{unique}/used:1", command=["true"], name=unique)
    refused = job_of(operator.delete(f"/hosts/local/images/{unique}/used:1",
                                     params={"wait": 30}))
    assert refused["state"] == "failed" and refused["error"]["status"] == 409, refused
    assert docker_cli("image", "inspect", "--format", "{{.Id}}", image_id).strip() == image_id
    forced = job_of(operator.delete(f"/hosts/local/images/{unique}/used:1",
                                    params={"wait": 30, "force": "true"}))
    assert forced["state"] == "succeeded", forced
    assert forced["result"]["untagged"] == [f"{unique}/used:1"]
    assert cli_fails("image", "inspect", f"{unique}/used:1")


# -- prune ----------------------------------------------------------------------------------


def test_prune_removes_the_dangling_image_it_made_and_nothing_else(operator, made, unique):
    old = made.build(f"{unique}/app:v1", marker="old")
    new = made.build(f"{unique}/app:v1", marker="new")
    assert old != new
    assert set(cli_lines("images", "-q", "--no-trunc", "-f", "dangling=true",
                         "-f", f"label={made.label}")) == {old}
    job = job_of(operator.post("/hosts/local/images/prune", params={"wait": 60},
                               json={"filters": {"label": [made.label]}}))
    assert job["state"] == "succeeded", job
    assert old in job["result"]["deleted"]
    assert new not in job["result"]["deleted"]
    assert isinstance(job["result"]["space_reclaimed"], int)
    assert cli_fails("image", "inspect", old)
    assert docker_cli("image", "inspect", "--format", "{{.Id}}", new).strip() == new
    assert docker_cli("image", "inspect", "--format", "{{.Id}}", BUSYBOX).strip()


# -- push and pull ------------------------------------------------------------------------


def test_push_reports_the_registry_digest_and_pull_brings_it_back(operator, engine, made,
                                                                  unique):
    image_id = made.build(f"{unique}/app:v1")
    target = f"{LOCAL_REGISTRY}/{unique}/app:v1"
    made.refs.append(target)
    pushed = job_of(operator.post(f"/hosts/local/images/{unique}/app:v1/push",
                                  params={"wait": 60}, json={"registry": "local"}))
    assert pushed["state"] == "succeeded", pushed
    digest = registry_digest(LOCAL_REGISTRY, f"{unique}/app", "v1")
    made.manifests.append((LOCAL_REGISTRY, f"{unique}/app", digest, None))
    assert pushed["result"] == {"ref": target, "id": image_id, "digest": digest}
    events = operator.get(f"/jobs/{pushed['id']}/events", stream=True, timeout=30)
    layer_events = [line for line in events.iter_lines(decode_unicode=True)
                    if line.startswith("data:") and '"layers"' in line]
    assert layer_events, "a push reports per-layer progress"

    again = job_of(operator.post(f"/hosts/local/images/{target}/push", params={"wait": 60}))
    assert again["state"] == "succeeded" and again["result"]["digest"] == digest

    for ref in (target, f"{unique}/app:v1"):
        engine.images.remove(ref)
    assert cli_fails("image", "inspect", image_id)
    pulled = job_of(operator.post("/hosts/local/images/pull", params={"wait": 60},
                                  json={"image": f"{unique}/app:v1", "registry": "local"}))
    assert pulled["state"] == "succeeded", pulled
    assert pulled["result"]["ref"] == target and pulled["result"]["id"] == image_id
    assert f"{LOCAL_REGISTRY}/{unique}/app@{digest}" in pulled["result"]["repo_digests"]
    assert docker_cli("image", "inspect", "--format", "{{.Id}}", target).strip() == image_id
    events = operator.get(f"/jobs/{pulled['id']}/events", stream=True, timeout=30)
    assert [line for line in events.iter_lines(decode_unicode=True)
            if line.startswith("data:") and '"layers"' in line], "a pull reports layer progress"


def test_push_and_pull_use_the_stored_credentials_of_the_registry(admin, operator, engine, made,
                                                                  unique, auth_registry):
    name = f"reg-{unique}"
    created = admin.post("/registries", json={
        "name": name, "url": f"http://{auth_registry}", "username": REGISTRY_USER,
        "password": REGISTRY_PASSWORD, "insecure": True})
    assert created.status_code == 201, created.text
    try:
        image_id = made.build(f"{unique}/app:v1")
        target = f"{auth_registry}/{unique}/app:v1"
        made.refs.append(target)
        pushed = job_of(operator.post(f"/hosts/local/images/{unique}/app:v1/push",
                                      params={"wait": 60}, json={"registry": name}))
        assert pushed["state"] == "succeeded", pushed
        credentials = (REGISTRY_USER, REGISTRY_PASSWORD)
        digest = registry_digest(auth_registry, f"{unique}/app", "v1", credentials)
        made.manifests.append((auth_registry, f"{unique}/app", digest, credentials))
        assert pushed["result"]["digest"] == digest
        engine.images.remove(target)
        engine.images.remove(f"{unique}/app:v1")
        # no registry named: the stored one whose address the reference names is used
        pulled = job_of(operator.post("/hosts/local/images/pull", params={"wait": 60},
                                      json={"image": target}))
        assert pulled["state"] == "succeeded", pulled
        assert pulled["result"]["id"] == image_id
        assert REGISTRY_PASSWORD not in str(pulled) + str(pushed)
    finally:
        admin.delete(f"/registries/{name}")


def test_push_to_an_unreachable_registry_fails_with_the_reason(operator, made, unique):
    image_id = made.build(f"{unique}/app:v1")
    closed = f"127.0.0.1:{free_port()}"
    ref = made.tag(image_id, f"{closed}/{unique}/app:1")
    failed = job_of(operator.post(f"/hosts/local/images/{ref}/push", params={"wait": 60}))
    assert failed["state"] == "failed", failed
    assert failed["error"]["status"] == 502
    assert "connection refused" in failed["error"]["detail"].lower()
    assert closed in failed["error"]["detail"]
    retagged = job_of(operator.post(f"/hosts/local/images/{ref}/push", params={"wait": 60},
                                    json={"tag": "other"}))
    assert retagged["state"] == "failed", retagged
    assert cli_fails("image", "inspect", f"{closed}/{unique}/app:other"), \
        "the tag made for a failed push is removed"


def test_pull_of_a_missing_image_fails_the_job(operator, unique):
    job = job_of(operator.post("/hosts/local/images/pull", params={"wait": 60},
                               json={"image": f"{unique}/nothing:1", "registry": "local"}))
    assert job["state"] == "failed", job
    assert job["error"]["status"] in (404, 502)
    assert "not found" in job["error"]["detail"].lower() or "unknown" in \
        job["error"]["detail"].lower()


# -- bad input ----------------------------------------------------------------------------


def test_unknown_images_are_404(viewer, operator):
    for path in ("/hosts/local/images/no-such-image-xyz",
                 "/hosts/local/images/127.0.0.1:5000/no/such:1"):
        response = viewer.get(path)
        assert response.status_code == 404, response.text
        assert response.headers["Content-Type"] == "application/problem+json"
    for response in (
        operator.delete("/hosts/local/images/no-such-image-xyz", params={"wait": 30}),
        operator.post("/hosts/local/images/no-such-image-xyz/tag", params={"wait": 30},
                      json={"repository": "dyt/x"}),
        operator.post("/hosts/local/images/no-such-image-xyz/push", params={"wait": 30},
                      json={"registry": "local"}),
    ):
        job = job_of(response)
        assert job["state"] == "failed" and job["error"]["status"] == 404, job


@pytest.mark.parametrize("body", [
    {"repository": "Upper/Case"}, {"repository": "dyt/x", "tag": "-leading-dash"},
    {"repository": "dyt/x", "tag": "a" * 129}, {"repository": "dyt/x:1"},
    {"repository": "dyt/x", "force": True}, {},
])
def test_invalid_tag_requests_are_422_and_change_nothing(operator, body):
    response = operator.post(f"/hosts/local/images/{BUSYBOX}/tag", json=body)
    assert response.status_code == 422, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    assert response.json()["errors"]


@pytest.mark.parametrize("path, body", [
    ("/hosts/local/images/pull", {"image": "UPPER:1"}),
    ("/hosts/local/images/pull", {"image": "busybox", "username": "x"}),
    ("/hosts/local/images/pull", {"image": "busybox", "registry": "no-such-registry"}),
    ("/hosts/local/images/pull", {"image": "10.9.9.9:5000/x", "registry": "local"}),
    ("/hosts/local/images/prune", {"filters": {"dangling": ["false"]}}),
    ("/hosts/local/images/prune", {"everything": True}),
    (f"/hosts/local/images/{BUSYBOX}/push", {"tag": "bad tag"}),
    (f"/hosts/local/images/{BUSYBOX}/push", {"insecure": True}),
    ("/hosts/local/images/sha256:abc/push", {}),
])
def test_invalid_operation_bodies_are_422(operator, path, body):
    response = operator.post(path, json=body)
    assert response.status_code == 422, response.text
    assert response.json()["errors"]


def test_viewers_cannot_change_images(viewer):
    assert viewer.post(f"/hosts/local/images/{BUSYBOX}/tag",
                       json={"repository": "dyt/x"}).status_code == 403
    assert viewer.delete(f"/hosts/local/images/{BUSYBOX}").status_code == 403
    assert viewer.post("/hosts/local/images/prune", json={}).status_code == 403
    assert viewer.post("/hosts/local/images/pull", json={"image": BUSYBOX}).status_code == 403
