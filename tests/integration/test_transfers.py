"""docker cp both ways, save/load, import and the live event stream, checked with the CLI."""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
import threading
import time
import uuid

import pytest

from tests.integration.helpers import BUSYBOX, eventually


def cli(*args: str, data: bytes | None = None) -> bytes:
    return subprocess.run(["docker", *args], input=data, capture_output=True, check=True,
                          env=os.environ).stdout


def make_tar(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mtime = int(time.time())
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


@pytest.fixture
def box(operator, unique, cleanup):
    cleanup.append(unique)
    job = operator.post("/hosts/local/containers", params={"wait": 60}, json={
        "image": BUSYBOX, "name": unique,
        "command": ["sh", "-c", "mkdir -p /data && echo hello-cp > /data/hello.txt && sleep 300"]})
    assert job.json()["state"] == "succeeded", job.text
    eventually(lambda: b"hello-cp" in cli("exec", unique, "cat", "/data/hello.txt"))
    return unique


def test_cp_out_streams_the_same_tar_docker_cp_gives(operator, box):
    response = operator.get(f"/hosts/local/containers/{box}/archive", params={"path": "/data"},
                          stream=True)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/x-tar"
    stat = json.loads(__import__("base64").b64decode(
        response.headers["X-Docker-Container-Path-Stat"]))
    assert stat["name"] == "data"
    body = b"".join(response.iter_content(65536))
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        ours = {m.name: m.size for m in tar.getmembers()}
        assert tar.extractfile("data/hello.txt").read() == b"hello-cp\n"
    with tarfile.open(fileobj=io.BytesIO(cli("cp", f"{box}:/data", "-"))) as tar:
        theirs = {m.name: m.size for m in tar.getmembers()}
    assert ours == theirs


def test_cp_out_of_a_missing_path_is_404(operator, viewer, box):
    # docker cp out needs the operator role: a container's files hold what its env holds.
    assert viewer.get(f"/hosts/local/containers/{box}/archive",
                      params={"path": "/data"}).status_code == 403
    response = operator.get(f"/hosts/local/containers/{box}/archive", params={"path": "/nope"})
    assert response.status_code == 404
    assert response.headers["Content-Type"] == "application/problem+json"


def test_cp_in_extracts_the_tar_into_the_container(operator, box):
    payload = make_tar({"incoming/note.txt": b"from the api\n"})
    response = operator.put(f"/hosts/local/containers/{box}/archive",
                            params={"path": "/data", "wait": 30}, data=payload,
                            headers={"Content-Type": "application/x-tar"})
    assert response.status_code == 200, response.text
    assert response.json()["state"] == "succeeded"
    assert cli("exec", box, "cat", "/data/incoming/note.txt") == b"from the api\n"


def test_cp_in_bad_inputs(operator, viewer, box, state_dir):
    url = f"/hosts/local/containers/{box}/archive"
    not_tar = operator.put(url, params={"path": "/data"}, data=b"definitely not a tar" * 100,
                           headers={"Content-Type": "application/x-tar"})
    assert not_tar.status_code == 422
    too_big = operator.put(url, params={"path": "/data"}, data=b"\0" * (9 * 1024 * 1024),
                           headers={"Content-Type": "application/x-tar"})
    assert too_big.status_code == 413
    assert viewer.put(url, params={"path": "/data"}, data=make_tar({"a": b"a"}),
                      headers={"Content-Type": "application/x-tar"}).status_code == 403
    missing = operator.put(url, params={"path": "/no/such/dir", "wait": 30},
                           data=make_tar({"a": b"a"}),
                           headers={"Content-Type": "application/x-tar"}).json()
    assert missing["state"] == "failed" and missing["error"]["status"] == 404
    assert list((state_dir / "spool").glob("*")) == [], "uploads never linger in the spool"


def test_save_then_load_round_trips_an_image_id(viewer, operator, engine):
    name = f"dyt-save-{uuid.uuid4().hex[:8]}:1"
    engine.images.get(BUSYBOX).tag(name)
    image_id = engine.images.get(name).id
    # docker save needs the operator role: an image holds files, a committed one secrets too.
    assert viewer.get("/hosts/local/images/save", params={"ref": [name]}).status_code == 403
    response = operator.get("/hosts/local/images/save", params={"ref": [name]}, stream=True)
    assert response.status_code == 200
    archive = b"".join(response.iter_content(1 << 16))
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        assert "manifest.json" in tar.getnames()
    engine.images.remove(name)
    job = operator.post("/hosts/local/images/load", params={"wait": 60}, data=archive,
                        headers={"Content-Type": "application/x-tar"}).json()
    try:
        assert job["state"] == "succeeded", job
        assert name in job["result"]["loaded"]
        assert engine.images.get(name).id == image_id
        assert json.loads(cli("image", "inspect", name))[0]["Id"] == image_id
    finally:
        engine.images.remove(name)


def test_save_of_unknown_image_is_404(operator):
    response = operator.get("/hosts/local/images/save", params={"ref": ["dyt-none/absent:9"]})
    assert response.status_code == 404


def test_load_of_not_a_tar_is_422_and_viewer_is_403(operator, viewer):
    assert operator.post("/hosts/local/images/load", data=b"x" * 2048,
                         headers={"Content-Type": "application/x-tar"}).status_code == 422
    assert viewer.post("/hosts/local/images/load", data=make_tar({"a": b"a"}),
                       headers={"Content-Type": "application/x-tar"}).status_code == 403


def test_import_makes_an_image_with_changes(operator, engine, unique):
    with open("/bin/busybox", "rb") as handle:
        rootfs = make_tar({"bin/busybox": handle.read()})
    # tarfile gave the binary mode 0644; docker import keeps it, so run it through sh-less CMD
    repository, tag = f"dyt-import/{unique}", "v1"
    job = operator.post("/hosts/local/images/import", params={
        "repository": repository, "tag": tag, "wait": 60,
        "change": ['CMD ["/bin/busybox", "echo", "imported"]', "ENV MODE=restored"]},
        data=rootfs, headers={"Content-Type": "application/x-tar"}).json()
    try:
        assert job["state"] == "succeeded", job
        inspect = json.loads(cli("image", "inspect", f"{repository}:{tag}"))[0]
        assert inspect["Id"] == job["result"]["id"]
        assert inspect["Config"]["Cmd"] == ["/bin/busybox", "echo", "imported"]
        assert "MODE=restored" in inspect["Config"]["Env"]
    finally:
        subprocess.run(["docker", "rmi", f"{repository}:{tag}"], capture_output=True)


def test_import_refuses_bad_changes_and_urls(operator):
    bad = operator.post("/hosts/local/images/import", params={"change": ["RUN rm -rf /"]},
                        data=make_tar({"a": b"a"}), headers={"Content-Type": "application/x-tar"})
    assert bad.status_code == 422 and "change" in bad.json()["errors"]
    url = operator.post("/hosts/local/images/import", params={"fromSrc": "http://10.0.0.1/x"},
                        data=make_tar({"a": b"a"}), headers={"Content-Type": "application/x-tar"})
    assert url.status_code == 422


def test_event_stream_carries_a_container_start(viewer, engine, unique, cleanup):
    cleanup.append(unique)
    seen: list[dict] = []
    # Only this test's container: another container starting on the engine must not end the read.
    response = viewer.get("/hosts/local/events/stream",
                          params={"type": "container", "container": unique},
                          stream=True, timeout=30)
    assert response.status_code == 200

    def read() -> None:
        for line in response.iter_lines(decode_unicode=True):
            if line.startswith("data: {") and line != "data: {}":
                seen.append(json.loads(line[6:]))
                if seen[-1].get("status") == "start":
                    return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    container = engine.containers.run(BUSYBOX, ["sleep", "30"], name=unique, detach=True)
    reader.join(20)
    response.close()
    assert any(e.get("id") == container.id and e.get("status") == "start" for e in seen), seen


def test_streams_refuse_unknown_hosts_and_bad_args(operator, viewer):
    assert operator.get("/hosts/nowhere/images/save", params={"ref": ["x"]}).status_code == 404
    assert operator.get("/hosts/local/images/save").status_code == 422
    assert viewer.get("/hosts/local/events/stream", params={"type": "bogus"}).status_code == 422


def test_logs_follow_streams_lines_as_sse_and_ends_when_the_container_stops(viewer, operator,
                                                                           unique, cleanup):
    cleanup.append(unique)
    job = operator.post("/hosts/local/containers", params={"wait": 60}, json={
        "image": BUSYBOX, "name": unique,
        "command": ["sh", "-c", "echo first; sleep 2; echo second; sleep 1; echo third"],
        "wait_for": "none"}).json()
    assert job["state"] == "succeeded", job
    response = viewer.get(f"/hosts/local/containers/{unique}/logs", params={"follow": "true"},
                          stream=True, timeout=30)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    events, current = [], None
    started = time.monotonic()
    for line in response.iter_lines(decode_unicode=True):
        if line.startswith("event: "):
            current = line[7:]
        elif line.startswith("data: "):
            events.append((current, line[6:]))
    assert [d for e, d in events if e == "log"] == ["first", "second", "third"]
    assert events[-1][0] == "end"
    assert time.monotonic() - started < 20  # it ended with the container, not a timeout


def test_logs_follow_of_unknown_container_is_404_and_until_is_refused(viewer, box):
    assert viewer.get("/hosts/local/containers/no-such-box-x/logs",
                      params={"follow": "true"}).status_code == 404
    assert viewer.get(f"/hosts/local/containers/{box}/logs",
                      params={"follow": "true", "until": "1"}).status_code == 422
