"""Backups (export + volume archives) and restores (import) through the API, on the real engine."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import os
import signal
import subprocess
import tarfile
import uuid

import docker
import pytest
import requests

from app.core.config import Settings
from app.jobs.celery import make_celery
from tests.integration.conftest import SECRET_KEY, STACK_REDIS_URL
from tests.integration.helpers import BUSYBOX, eventually, free_port

UNKNOWN_ID = "01ARZ3NDEKTSV4RRFFQ69G5FAV"


@pytest.fixture
def backups_dir(state_dir):
    return state_dir / "backups"


@pytest.fixture
def leftovers(engine):
    """Containers, volumes and images a test made, removed afterwards."""
    made = {"containers": [], "volumes": [], "images": []}
    yield made
    for ref in made["containers"]:
        with contextlib.suppress(docker.errors.NotFound):
            engine.containers.get(ref).remove(force=True, v=True)
    for name in made["volumes"]:
        with contextlib.suppress(docker.errors.NotFound):
            engine.volumes.get(name).remove(force=True)
    for ref in made["images"]:
        with contextlib.suppress(docker.errors.ImageNotFound):
            engine.images.remove(ref, force=True)


# What Dockyard labels the containers it makes with: operators back up only those.
MANAGED = {"dockyard.managed": "true", "dockyard.scope": "*"}


def run_container(engine, leftovers, name, command, **kwargs):
    leftovers["containers"].append(name)
    kwargs["labels"] = {**MANAGED, **kwargs.get("labels", {})}
    container = engine.containers.run(BUSYBOX, command, name=name, detach=True, **kwargs)
    eventually(lambda: engine.containers.get(name).status == "running")
    return container


def back_up(api, ref, wait=120, host="local", **options):
    response = api.post(f"/hosts/{host}/containers/{ref}/backups", params={"wait": wait},
                        json=options)
    assert response.status_code in (200, 202), response.text
    return response.json()


def download(api, backup_id, **kwargs):
    return api.get(f"/backups/{backup_id}/content", **kwargs)


def restore(api, backup_id, wait=120, **body):
    response = api.post(f"/backups/{backup_id}/restore", params={"wait": wait}, json=body)
    assert response.status_code in (200, 202), response.text
    return response.json()


def fetch(url):
    """The body at ``url`` once the server answers (a just-started httpd may reset at first)."""
    def attempt():
        try:
            response = requests.get(url, timeout=5)
        except requests.ConnectionError:
            return None
        return response.text if response.ok else None

    return eventually(attempt, timeout=20, interval=0.2)


def restored_image(backup_id, name):
    return f"dockyard-restore/{name}:backup-{backup_id.lower()}"


def test_backup_and_restore_bring_back_filesystem_volume_command_env_and_ports(
        operator, engine, unique, leftovers, tmp_path):
    volume, port = f"{unique}-data", free_port()
    leftovers["volumes"].append(volume)
    command = ["httpd", "-f", "-p", "8080", "-h", "/"]
    env = {"GREETING": "hello world $HOME \"quoted\""}
    container = run_container(engine, leftovers, unique, command,
                              environment=env, ports={"8080/tcp": port},
                              volumes={volume: {"bind": "/data", "mode": "rw"}},
                              labels={"team": "a"}, restart_policy={"Name": "unless-stopped"})
    container.exec_run(["sh", "-c", f"echo page of {unique} > /page.html"])
    container.exec_run(["sh", "-c", f"echo volume of {unique} > /data/v.txt"])
    assert fetch(f"http://127.0.0.1:{port}/page.html") == f"page of {unique}\n"

    job = back_up(operator, unique, compression="zstd", note="before upgrade")
    assert job["state"] == "succeeded", job
    manifest = job["result"]
    backup_id = manifest["id"]
    assert backup_id == job["id"]
    assert manifest["host"] == "local" and manifest["container"]["name"] == unique
    assert manifest["image"] == BUSYBOX and manifest["note"] == "before upgrade"
    kinds = {p["kind"]: p for p in manifest["parts"]}
    assert set(kinds) == {"config", "rootfs", "volume"}
    assert kinds["volume"]["volume"] == volume and kinds["volume"]["target"] == "/data"
    assert kinds["rootfs"]["path"] == "rootfs.tar.zst"
    assert operator.get(f"/backups/{backup_id}").json()["parts"] == manifest["parts"]
    listed = operator.get("/backups", params={"host": "local", "container": unique}).json()
    assert [b["id"] for b in listed] == [backup_id]

    content = download(operator, backup_id)
    assert content.status_code == 200
    assert content.headers["Content-Type"] == "application/x-tar"
    assert int(content.headers["Content-Length"]) == len(content.content)
    digest = hashlib.sha256(content.content).hexdigest()
    assert hashlib.sha256(download(operator, backup_id).content).hexdigest() == digest
    with tarfile.open(fileobj=io.BytesIO(content.content)) as bundle:
        names = bundle.getnames()
        assert names[0] == f"{backup_id}/manifest.json"
        for part in manifest["parts"]:
            data = bundle.extractfile(f"{backup_id}/{part['path']}").read()
            assert hashlib.sha256(data).hexdigest() == part["sha256"], part["path"]
            assert len(data) == part["size"]
        bundle.extractall(tmp_path, filter="data")
    rootfs = tmp_path / backup_id / "rootfs.tar.zst"
    listing = subprocess.run(["tar", "--zstd", "-tf", str(rootfs)], capture_output=True,
                             text=True, check=True).stdout.split()
    assert "page.html" in listing

    container.remove(force=True)
    engine.volumes.get(volume).remove()
    new_name, new_port = f"{unique}-restored", free_port()
    leftovers["containers"].append(new_name)
    leftovers["images"].append(restored_image(backup_id, unique))
    job = restore(operator, backup_id, name=new_name, overrides={"ports": [f"{new_port}:8080"]})
    assert job["state"] == "succeeded", job
    assert job["result"]["container"]["name"] == new_name
    assert fetch(f"http://127.0.0.1:{new_port}/page.html") == f"page of {unique}\n"
    restored = engine.containers.get(new_name)
    assert restored.exec_run(["cat", "/data/v.txt"]).output == f"volume of {unique}\n".encode()
    config, host_config = restored.attrs["Config"], restored.attrs["HostConfig"]
    assert config["Cmd"] == command
    assert f"GREETING={env['GREETING']}" in config["Env"]
    assert config["Labels"]["team"] == "a"
    assert config["Labels"]["dockyard.restored-from"] == backup_id
    assert host_config["RestartPolicy"]["Name"] == "unless-stopped"
    assert host_config["PortBindings"] == {"8080/tcp": [{"HostIp": "", "HostPort": str(new_port)}]}
    assert [m["Name"] for m in restored.attrs["Mounts"]] == [volume]


def test_range_download_answers_206_with_exact_bytes_and_416_beyond_the_end(
        operator, engine, unique, leftovers):
    run_container(engine, leftovers, unique, ["sleep", "300"])
    backup_id = back_up(operator, unique)["result"]["id"]
    whole = download(operator, backup_id).content
    part = download(operator, backup_id, headers={"Range": "bytes=0-99"})
    assert part.status_code == 206
    assert part.content == whole[:100]
    assert part.headers["Content-Range"] == f"bytes 0-99/{len(whole)}"
    middle = download(operator, backup_id, headers={"Range": f"bytes=1000-{len(whole) + 50}"})
    assert middle.status_code == 206 and middle.content == whole[1000:]
    tail = download(operator, backup_id, headers={"Range": "bytes=-10"})
    assert tail.status_code == 206 and tail.content == whole[-10:]
    beyond = download(operator, backup_id, headers={"Range": f"bytes={len(whole)}-"})
    assert beyond.status_code == 416
    assert beyond.headers["Content-Range"] == f"bytes */{len(whole)}"
    assert beyond.headers["Content-Type"] == "application/problem+json"


def test_download_carries_the_sha256_of_its_bytes_and_answers_if_none_match_with_304(
        operator, engine, unique, leftovers):
    run_container(engine, leftovers, unique,
                  ["sh", "-c", "head -c 300000 /dev/urandom > /noise; sleep 300"])
    job = back_up(operator, unique)
    assert job["state"] == "succeeded", job
    backup_id = job["result"]["id"]
    record = operator.get(f"/backups/{backup_id}").json()
    assert record["content_sha256"] == job["result"]["content_sha256"]

    hasher, size = hashlib.sha256(), 0
    with download(operator, backup_id, stream=True) as response:
        assert response.status_code == 200
        for chunk in response.iter_content(64 * 1024):
            hasher.update(chunk)
            size += len(chunk)
        headers = response.headers
    assert (hasher.hexdigest(), size) == (record["content_sha256"], record["content_size"])
    encoded = base64.b64encode(hasher.digest()).decode()
    assert headers["ETag"] == f'"{hasher.hexdigest()}"'
    assert headers["Repr-Digest"] == f"sha-256=:{encoded}:"
    assert headers["Digest"] == f"sha-256={encoded}"

    for tags in (headers["ETag"], f'"other", W/{headers["ETag"]}', "*"):
        cached = download(operator, backup_id, headers={"If-None-Match": tags})
        assert cached.status_code == 304 and cached.content == b""
        assert cached.headers["ETag"] == headers["ETag"]
    stale = download(operator, backup_id, headers={"If-None-Match": '"other"'})
    assert stale.status_code == 200 and hashlib.sha256(stale.content).hexdigest() == \
        record["content_sha256"]

    whole = stale.content
    ranged = download(operator, backup_id, headers={"Range": "bytes=1000-300999"})
    assert ranged.status_code == 206 and ranged.content == whole[1000:301000]
    assert ranged.headers["Content-Range"] == f"bytes 1000-300999/{size}"
    assert ranged.headers["Repr-Digest"] == headers["Repr-Digest"]  # of the whole download


def test_a_flipped_byte_is_refused_at_restore_and_nothing_is_created(
        operator, engine, unique, leftovers, backups_dir):
    volume = f"{unique}-data"
    leftovers["volumes"].append(volume)
    run_container(engine, leftovers, unique, ["sleep", "300"],
                  volumes={volume: {"bind": "/data", "mode": "rw"}})
    manifest = back_up(operator, unique, compression="gzip")["result"]
    engine.containers.get(unique).remove(force=True)
    engine.volumes.get(volume).remove()
    rootfs = backups_dir / manifest["id"] / "rootfs.tar.gz"
    with open(rootfs, "r+b") as handle:
        handle.seek(rootfs.stat().st_size // 2)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0xFF]))
    leftovers["images"].append(restored_image(manifest["id"], unique))
    job = restore(operator, manifest["id"])
    assert job["state"] == "failed", job
    assert job["error"]["status"] == 422 and job["error"]["part"] == "rootfs.tar.gz"
    assert "corrupt" in job["error"]["detail"] and "nothing was restored" in job["error"]["detail"]
    assert engine.containers.list(all=True, filters={"name": f"^/{unique}$"}) == []
    assert engine.volumes.list(filters={"name": volume}) == []
    with pytest.raises(docker.errors.ImageNotFound):
        engine.images.get(restored_image(manifest["id"], unique))


def test_worker_killed_mid_backup_leaves_one_complete_bundle_and_no_temporary_files(
        operator, engine, stack, unique, leftovers, backups_dir):
    run_container(engine, leftovers, unique, ["sh", "-c", "dd if=/dev/urandom of=/big bs=1M "
                                                          "count=200 2>/dev/null; sleep 600"])
    eventually(lambda: engine.containers.get(unique).exec_run(
        ["sh", "-c", "test $(stat -c %s /big) -eq 209715200"]).exit_code == 0, timeout=60)
    response = operator.post(f"/hosts/local/containers/{unique}/backups",
                             json={"compression": "gzip"})
    assert response.status_code == 202, response.text
    backup_id = response.json()["id"]
    staging = backups_dir / f"{backup_id}.tmp"

    def exporting() -> bool:
        part = staging / "rootfs.tar.gz"
        return part.exists() and part.stat().st_size > (1 << 20)

    eventually(exporting, timeout=30, interval=0.05)
    assert operator.get(f"/backups/{backup_id}").status_code == 404
    parent = stack.procs["worker-ops"].pid
    children = subprocess.run(["pgrep", "-P", str(parent)], capture_output=True, text=True)
    for pid in children.stdout.split():
        os.kill(int(pid), signal.SIGKILL)
    job = operator.wait_job(backup_id, timeout=180)
    assert job["state"] == "succeeded", job
    assert [e.name for e in backups_dir.iterdir() if e.name.startswith(backup_id)] == [backup_id]
    assert not [e.name for e in backups_dir.iterdir() if e.name.endswith(".tmp")]
    listed = operator.get("/backups", params={"container": unique}).json()
    assert [b["id"] for b in listed] == [backup_id]
    rootfs = next(p for p in listed[0]["parts"] if p["kind"] == "rootfs")
    assert rootfs["uncompressed_size"] > 200 << 20


def test_backup_of_an_unknown_container_is_404(operator):
    response = operator.post("/hosts/local/containers/no-such-container-xyz/backups", json={})
    assert response.status_code == 404, response.text


@pytest.mark.parametrize("path", [f"/backups/{UNKNOWN_ID}", f"/backups/{UNKNOWN_ID}/content",
                                  "/backups/not-an-id"])
def test_unknown_backup_is_404(operator, path):
    assert operator.get(path).status_code == 404


def test_restore_of_an_unknown_backup_is_404(operator):
    assert operator.post(f"/backups/{UNKNOWN_ID}/restore", json={}).status_code == 404


def test_restore_onto_a_name_in_use_without_replace_is_409(operator, engine, unique, leftovers):
    run_container(engine, leftovers, unique, ["sleep", "300"])
    backup_id = back_up(operator, unique)["result"]["id"]
    response = operator.post(f"/backups/{backup_id}/restore", json={})
    assert response.status_code == 409, response.text
    assert unique in response.json()["detail"]


def test_compression_rar_is_422(operator, engine, unique, leftovers):
    run_container(engine, leftovers, unique, ["sleep", "300"])
    response = operator.post(f"/hosts/local/containers/{unique}/backups",
                             json={"compression": "rar"})
    assert response.status_code == 422
    assert "compression" in response.json()["errors"]


def test_viewer_may_not_back_up_or_delete(viewer, operator, engine, unique, leftovers):
    run_container(engine, leftovers, unique, ["sleep", "300"])
    assert viewer.post(f"/hosts/local/containers/{unique}/backups", json={}).status_code == 403
    backup_id = back_up(operator, unique)["result"]["id"]
    assert viewer.delete(f"/backups/{backup_id}").status_code == 403
    assert operator.delete(f"/backups/{backup_id}").status_code == 204
    assert operator.get(f"/backups/{backup_id}").status_code == 404


def test_restore_applies_the_policy_to_the_restored_spec(operator, admin, engine, unique,
                                                        leftovers):
    run_container(engine, leftovers, unique, ["sleep", "300"], cap_add=["NET_ADMIN"])
    # An operator may not even back it up: its live configuration breaks the policy.
    refused = operator.post(f"/hosts/local/containers/{unique}/backups", json={})
    assert refused.status_code == 403 and refused.json()["rule"] == "no-cap-add", refused.text
    backup_id = back_up(admin, unique)["result"]["id"]
    response = operator.post(f"/backups/{backup_id}/restore", json={"name": f"{unique}-r"})
    assert response.status_code == 403, response.text
    assert response.json()["rule"] == "no-cap-add"


@pytest.mark.parametrize("cron", ["* * * *", "61 * * * *", "*/0 * * * *", "a b c d e"])
def test_schedule_with_an_invalid_cron_is_422(operator, cron):
    response = operator.post("/backup-schedules",
                             json={"host": "local", "container": "x", "cron": cron, "keep": 3})
    assert response.status_code == 422, response.text
    assert "cron" in response.json()["errors"]


def test_schedule_keeping_zero_is_422(operator):
    response = operator.post("/backup-schedules",
                             json={"host": "local", "container": "x", "cron": "0 3 * * *",
                                   "keep": 0})
    assert response.status_code == 422
    assert "keep" in response.json()["errors"]


def test_a_due_schedule_runs_a_backup_when_beat_ticks(operator, engine, unique, leftovers):
    run_container(engine, leftovers, unique, ["sleep", "300"])
    created = operator.post("/backup-schedules", json={
        "host": "local", "container": unique, "cron": "* * * * *", "keep": 1,
        "compression": "gzip"})
    assert created.status_code == 201, created.text
    schedule = created.json()
    assert schedule in operator.get("/backup-schedules").json()
    try:
        # Like beat, which holds the secret key: workers refuse unsigned task messages.
        beat = make_celery(Settings(redis_url=STACK_REDIS_URL, secret_key=SECRET_KEY))
        beat.send_task("backups.run_schedules", queue="engine.ops")

        def scheduled() -> list:
            found = operator.get("/backups", params={"container": unique}).json()
            return [b for b in found if b["schedule_id"] == schedule["id"]]

        bundles = eventually(scheduled, timeout=60, interval=0.5)
        assert len(bundles) == 1 and bundles[0]["compression"] == "gzip"
        record = operator.get(f"/backup-schedules/{schedule['id']}").json()
        assert record["last_job_id"] == bundles[0]["id"]
        beat.send_task("backups.run_schedules", queue="engine.ops")  # same minute: no second run
    finally:
        assert operator.delete(f"/backup-schedules/{schedule['id']}").status_code == 204
    assert operator.get(f"/backup-schedules/{schedule['id']}").status_code == 404


def test_each_download_is_the_same_bytes(operator, engine, unique, leftovers):
    run_container(engine, leftovers, unique, ["sh", "-c", f"echo {uuid.uuid4()} > /f; sleep 300"])
    backup_id = back_up(operator, unique, consistency="pause")["result"]["id"]
    assert engine.containers.get(unique).status == "running"
    first = download(operator, backup_id)
    assert first.headers["ETag"] == download(operator, backup_id).headers["ETag"]
    assert first.content == download(operator, backup_id).content


def test_consistency_stop_stops_the_container_for_the_backup_and_starts_it_again(
        operator, engine, unique, leftovers):
    run_container(engine, leftovers, unique,
                  ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.2; done"])
    started_before = engine.api.inspect_container(unique)["State"]["StartedAt"]
    job = back_up(operator, unique, consistency="stop")
    assert job["state"] == "succeeded", job
    assert job["result"]["consistency"] == "stop"
    state = engine.api.inspect_container(unique)["State"]
    assert state["Running"] and state["StartedAt"] != started_before


def test_include_binds_archives_binds_under_the_allowed_roots_only(
        admin, engine, unique, leftovers, bind_root, state_dir):
    # A bind outside the roots: only an admin may back such a container up at all.
    inside, outside = bind_root / unique, state_dir / f"outside-{unique}"
    inside.mkdir()
    outside.mkdir()
    (inside / "site.txt").write_text("inside\n")
    (outside / "secret.txt").write_text("outside\n")
    run_container(engine, leftovers, unique, ["sleep", "300"],
                  volumes={str(inside): {"bind": "/site", "mode": "rw"},
                           str(outside): {"bind": "/secret", "mode": "ro"}})
    without = back_up(admin, unique)["result"]
    assert [p["kind"] for p in without["parts"]] == ["config", "rootfs"]
    manifest = back_up(admin, unique, include_binds=True)["result"]
    binds = [p for p in manifest["parts"] if p["kind"] == "bind"]
    assert [(b["source"], b["target"]) for b in binds] == [(str(inside), "/site")]
    assert manifest["skipped_binds"] == [str(outside)]


@pytest.mark.remote
def test_restore_onto_another_host_over_mutual_tls(operator, admin, engine, unique, leftovers,
                                                   state_dir):
    from tests.support.remote_engine import RemoteEngine

    volume, port = f"{unique}-data", free_port()
    leftovers["volumes"].append(volume)
    container = run_container(engine, leftovers, unique, ["httpd", "-f", "-p", "8080", "-h", "/"],
                              ports={"8080/tcp": port},
                              volumes={volume: {"bind": "/data", "mode": "rw"}})
    container.exec_run(["sh", "-c", f"echo page of {unique} > /page.html"])
    container.exec_run(["sh", "-c", f"echo volume of {unique} > /data/v.txt"])
    job = back_up(operator, unique)
    assert job["state"] == "succeeded", job
    backup_id = job["id"]
    remote = RemoteEngine(f"bk{os.getpid() % 1000}", state_dir, subnet_index=6)
    remote.start()
    host = f"restore-{unique}"
    try:
        assert admin.post("/hosts", json={
            "name": host, "url": remote.url,
            "tls": {"ca_cert": remote.ca_pem, "client_cert": remote.client_cert_pem,
                    "client_key": remote.client_key_pem}}).status_code == 201
        restored = restore(operator, backup_id, host=host, name=f"{unique}-moved",
                           overrides={"ports": ["18082:8080"]})
        assert restored["state"] == "succeeded", restored
        assert restored["host"] == host
        assert fetch(f"http://{remote.address}:18082/page.html") == f"page of {unique}\n"
        moved = remote.client().containers.get(f"{unique}-moved")
        assert moved.exec_run(["cat", "/data/v.txt"]).output == f"volume of {unique}\n".encode()
        assert moved.attrs["Config"]["Cmd"] == ["httpd", "-f", "-p", "8080", "-h", "/"]
        # the source host is untouched
        assert engine.containers.get(unique).status == "running"
    finally:
        admin.delete(f"/hosts/{host}")
        remote.stop()
