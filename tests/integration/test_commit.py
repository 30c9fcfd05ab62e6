"""docker commit through the API, pushed to the registry, pulled back and run."""

from __future__ import annotations

import uuid

import requests

from tests.integration.helpers import BUSYBOX


def test_commit_exec_change_push_pull_and_run(operator, engine, unique, cleanup):
    cleanup.extend([unique, f"{unique}-from-commit"])
    assert operator.post("/hosts/local/containers", params={"wait": 60}, json={
        "image": BUSYBOX, "name": unique, "command": ["sleep", "300"]}).json()["state"] \
        == "succeeded"
    changed = operator.post(f"/hosts/local/containers/{unique}/exec", params={"wait": 30},
                            json={"cmd": ["sh", "-c", "echo committed-change > /marker"]}).json()
    assert changed["state"] == "succeeded" and changed["result"]["exit_code"] == 0
    repository, tag = f"dyt-commit/{uuid.uuid4().hex[:8]}", "v1"
    job = operator.post(f"/hosts/local/containers/{unique}/commit", params={"wait": 60}, json={
        "repository": repository, "tag": tag, "message": "from the api", "author": "dyt",
        "changes": ['CMD ["cat", "/marker"]'], "push": {"registry": "local"}}).json()
    assert job["state"] == "succeeded", job
    result = job["result"]
    pushed_ref = f"127.0.0.1:5000/{repository}:{tag}"
    assert result["pushed"]["ref"] == pushed_ref
    manifest = requests.head(f"http://127.0.0.1:5000/v2/{repository}/manifests/{tag}", timeout=10,
                             headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"})
    assert manifest.headers["Docker-Content-Digest"] == result["pushed"]["digest"]
    inspect = engine.api.inspect_image(result["image_id"])
    assert inspect["Comment"] == "from the api" and inspect["Author"] == "dyt"
    assert inspect["Config"]["Cmd"] == ["cat", "/marker"]
    for ref in (f"{repository}:{tag}", pushed_ref):
        engine.images.remove(ref)
    pulled = operator.post("/hosts/local/images/pull", params={"wait": 60},
                           json={"image": pushed_ref}).json()
    assert pulled["state"] == "succeeded", pulled
    run = operator.post("/hosts/local/containers", params={"wait": 60}, json={
        "image": pushed_ref, "name": f"{unique}-from-commit", "wait_for": "none",
        "pull": "never"}).json()
    assert run["state"] == "succeeded", run
    container = engine.containers.get(f"{unique}-from-commit")
    container.wait(timeout=30)
    assert container.logs() == b"committed-change\n"
    container.remove(force=True)
    engine.images.remove(pushed_ref, force=True)
    requests.delete(f"http://127.0.0.1:5000/v2/{repository}/manifests/"
                    f"{result['pushed']['digest']}", timeout=10)


def test_commit_bad_input(operator, unique):
    missing = operator.post("/hosts/local/containers/no-such-box-z/commit", params={"wait": 30},
                            json={"repository": "dyt/x"}).json()
    assert missing["state"] == "failed" and missing["error"]["status"] == 404
    assert operator.post(f"/hosts/local/containers/{unique}/commit",
                         json={"repository": "UPPER/Case"}).status_code == 422
    assert operator.post(f"/hosts/local/containers/{unique}/commit",
                         json={"repository": "dyt/x", "push": {"registry": "nope"}}
                         ).status_code == 422
