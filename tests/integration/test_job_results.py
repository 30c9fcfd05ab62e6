"""Every job answer, its result included, is what the OpenAPI document says the operation returns.

The contract test's stack has no reachable engine, so its jobs never produce a result; here
real jobs run on the real engine and each finished job is checked against the schema of the
operation that started it (results are ``additionalProperties: false``, so an undocumented
member fails too).
"""

from __future__ import annotations

import contextlib
import io
import tarfile
from typing import Any

import docker
import jsonschema_rs
import pytest

from tests.integration.helpers import BUSYBOX

HOST = "/hosts/local"


def _json_schema(node: Any) -> Any:
    """OpenAPI 3.0 → JSON Schema: ``nullable: true`` becomes "or null"."""
    if isinstance(node, list):
        return [_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {key: _json_schema(value) for key, value in node.items() if key != "nullable"}
    if node.get("nullable"):
        return {"anyOf": [converted, {"type": "null"}]}
    return converted


@pytest.fixture(scope="module")
def conforms(admin):
    """``conforms(method, path, job)``: the job validates against the operation's 202 schema."""
    document = admin.get("/openapi.json").json()
    components = _json_schema(document["components"])

    def check(method: str, path: str, job: dict[str, Any]) -> None:
        operation = document["paths"]["/api/v1" + path][method.lower()]
        schema = operation["responses"]["202"]["content"]["application/json"]["schema"]
        assert schema["$ref"] != "#/components/schemas/Job", f"{path}: result is untyped"
        validator = jsonschema_rs.Draft202012Validator({**schema, "components": components})
        errors = [f"{error.instance_path}: {error.message}" for error in validator.iter_errors(job)]
        assert errors == [], (operation["operationId"], job["result"])

    return check


def run(api, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
    """The finished job of ``path`` (under the host ``local`` unless it starts at the root)."""
    path = path.removeprefix("~") if path.startswith("~") else HOST + path
    response = api.request(method, path, params={"wait": 60, **kwargs.pop("params", {})},
                           **kwargs)
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["state"] == "succeeded", job
    return job


def test_container_job_results_match_their_documented_schemas(operator, unique, cleanup,
                                                              conforms):
    cleanup.append(unique)
    label = f"dyt.case={unique}"
    spec = {"image": BUSYBOX, "name": unique, "command": ["sleep", "300"],
            "labels": {"dyt.case": unique}, "ports": ["8080"]}
    conforms("POST", "/hosts/{host}/containers", run(operator, "POST", "/containers", json=spec))
    ref = "/hosts/{host}/containers/{ref}"
    conforms("POST", ref + "/exec", run(operator, "POST", f"/containers/{unique}/exec",
                                         json={"cmd": ["echo", "hi"]}))
    conforms("POST", ref + "/update", run(operator, "POST", f"/containers/{unique}/update",
                                           json={"cpus": 0.5}))
    conforms("POST", ref + "/pause", run(operator, "POST", f"/containers/{unique}/pause"))
    conforms("POST", ref + "/unpause", run(operator, "POST", f"/containers/{unique}/unpause"))
    conforms("POST", ref + "/kill", run(operator, "POST", f"/containers/{unique}/kill",
                                         json={"signal": "SIGKILL"}))
    conforms("POST", ref + "/wait", run(operator, "POST", f"/containers/{unique}/wait",
                                         json={"condition": "not-running"}))
    renamed = f"{unique}-renamed"
    cleanup.append(renamed)
    conforms("POST", ref + "/rename", run(operator, "POST", f"/containers/{unique}/rename",
                                           json={"name": renamed}))
    conforms("POST", ref + "/start", run(operator, "POST", f"/containers/{renamed}/start"))
    conforms("POST", ref + "/stop", run(operator, "POST", f"/containers/{renamed}/stop",
                                         json={"timeout": 1}))
    conforms("POST", "/hosts/{host}/containers/prune",
             run(operator, "POST", "/containers/prune", json={"filters": {"label": [label]}}))
    for suffix in ("a", "b"):
        cleanup.append(f"{unique}-{suffix}")
        run(operator, "POST", "/containers", json={**spec, "name": f"{unique}-{suffix}"})
    conforms("DELETE", ref, run(operator, "DELETE", f"/containers/{unique}-a",
                                params={"force": "true"}))
    conforms("DELETE", "/hosts/{host}/containers",
             run(operator, "DELETE", "/containers", params={"label": label, "force": "true"}))


def test_placed_and_fanned_out_provision_results_match_their_documented_schema(
        operator, unique, cleanup, conforms):
    spec = {"image": BUSYBOX, "command": ["sleep", "300"]}
    for mode in ("least-loaded", "all"):
        name = f"{unique}-{mode}"
        cleanup.append(name)
        job = run(operator, "POST", "~/hosts/auto/containers",
                  json={**spec, "name": name, "placement": {"mode": mode}})
        conforms("POST", "/hosts/auto/containers", job)
        assert (job["result"]["children"][0]["result"]["name"] if mode == "all"
                else job["result"]["name"]) == name


def test_image_and_volume_job_results_match_their_documented_schemas(operator, unique,
                                                                     conforms):
    label = f"dyt.case={unique}"
    volume = run(operator, "POST", "/volumes", json={"name": unique, "labels": {"dyt.case": unique}})
    conforms("POST", "/hosts/{host}/volumes", volume)
    conforms("DELETE", "/hosts/{host}/volumes/{name}", run(operator, "DELETE", f"/volumes/{unique}"))
    run(operator, "POST", "/volumes", json={"name": f"{unique}-2", "labels": {"dyt.case": unique}})
    conforms("POST", "/hosts/{host}/volumes/prune",
             run(operator, "POST", "/volumes/prune", json={"filters": {"label": [label]}}))

    tagged = run(operator, "POST", f"/images/{BUSYBOX}/tag",
                 json={"repository": f"dyt-results/{unique}", "tag": "v1"})
    conforms("POST", "/hosts/{host}/images/{ref}/tag", tagged)
    conforms("DELETE", "/hosts/{host}/images/{ref}",
             run(operator, "DELETE", f"/images/dyt-results/{unique}:v1"))


def _tar(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_transfer_build_commit_and_backup_job_results_match_their_documented_schemas(
        operator, engine, unique, cleanup, conforms):
    images = [f"dyt-results/{unique}-{kind}:v1" for kind in ("commit", "build", "import")]
    backups: list[str] = []
    cleanup.extend([unique, f"{unique}-restored"])
    try:
        run(operator, "POST", "/containers", json={"image": BUSYBOX, "name": unique,
                                                   "command": ["sleep", "300"]})
        ref = "/hosts/{host}/containers/{ref}"
        conforms("PUT", ref + "/archive", run(
            operator, "PUT", f"/containers/{unique}/archive", params={"path": "/"},
            data=_tar({"note.txt": b"hi\n"}), headers={"Content-Type": "application/x-tar"}))
        repository, tag = images[0].split(":")
        conforms("POST", ref + "/commit", run(operator, "POST", f"/containers/{unique}/commit",
                                               json={"repository": repository, "tag": tag}))
        built = run(operator, "POST", "~/builds", json={
            "host": "local", "dockerfile": f"FROM {BUSYBOX}\nLABEL dyt.case={unique}\n",
            "tags": [images[1]]})
        conforms("POST", "/builds", built)
        repository, tag = images[2].split(":")
        conforms("POST", "/hosts/{host}/images/import", run(
            operator, "POST", "/images/import", params={"repository": repository, "tag": tag},
            data=_tar({"marker": b"x"}), headers={"Content-Type": "application/x-tar"}))
        saved = operator.get(f"{HOST}/images/save", params={"ref": [images[2]]}).content
        conforms("POST", "/hosts/{host}/images/load", run(
            operator, "POST", "/images/load", data=saved,
            headers={"Content-Type": "application/x-tar"}))

        backup = run(operator, "POST", f"/containers/{unique}/backups", json={})
        conforms("POST", ref + "/backups", backup)
        backups.append(backup["result"]["id"])
        restored = run(operator, "POST", f"~/backups/{backups[0]}/restore",
                       json={"name": f"{unique}-restored"})
        conforms("POST", "/backups/{backup_id}/restore", restored)
        images.append(restored["result"]["image"])
    finally:
        for backup_id in backups:
            operator.delete(f"/backups/{backup_id}")
        for image in images:
            with contextlib.suppress(docker.errors.ImageNotFound):
                engine.images.remove(image, force=True)
