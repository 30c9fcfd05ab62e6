"""Containment holes: no token, chat user, job, bundle, delivery or upload reaches past its scope."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import tarfile
import time
import uuid

import docker
import pytest

from app.core.ids import new_id
from app.core.store import PREFIX
from tests.integration.conftest import ADMIN_TOKEN, Api
from tests.integration.helpers import BUSYBOX, eventually
from tests.integration.test_chatops import slack_request
from tests.integration.test_jobs import slow_spec
from tests.integration.test_webhooks import Receiver, signed_payload

GRANT_RULE = "grant-within-scope"


def _forbidden_by_grant_rule(response) -> None:
    assert response.status_code == 403, response.text
    assert response.headers["Content-Type"].startswith("application/problem+json")
    assert response.json()["rule"] == GRANT_RULE


@pytest.fixture(scope="module")
def scoped_admin(make_token) -> Api:
    return make_token("admin", hosts=["local"])


# -- 1. a host-scoped admin grants nothing wider than itself -----------------------------------


def test_scoped_admin_cannot_mint_an_unscoped_or_wider_token(admin, scoped_admin):
    names = [f"wide-{uuid.uuid4().hex[:6]}" for _ in range(2)]
    for name, hosts in zip(names, (None, ["local", "elsewhere"]), strict=True):
        response = scoped_admin.post("/tokens", json={"name": name, "role": "operator",
                                                      "hosts": hosts})
        _forbidden_by_grant_rule(response)
    assert not {t["name"] for t in admin.get("/tokens").json()} & set(names)
    inside = scoped_admin.post("/tokens", json={"name": f"in-{uuid.uuid4().hex[:6]}",
                                                "role": "operator", "hosts": ["local"]})
    assert inside.status_code == 201, inside.text


def test_scoped_admin_cannot_revoke_a_token_wider_than_itself(admin, scoped_admin):
    wide = admin.post("/tokens", json={"name": f"wide-{uuid.uuid4().hex[:6]}",
                                       "role": "viewer", "hosts": None}).json()
    _forbidden_by_grant_rule(scoped_admin.delete(f"/tokens/{wide['id']}"))
    assert wide["id"] in {t["id"] for t in admin.get("/tokens").json()}
    assert Api(admin.base.removesuffix("/api/v1"), wide["token"]).get("/hosts").status_code == 200
    assert all(t["hosts"] is not None and set(t["hosts"]) <= {"local"}
               for t in scoped_admin.get("/tokens").json())
    admin.delete(f"/tokens/{wide['id']}")


def test_scoped_admin_cannot_map_a_chat_user_wider_than_itself(admin, scoped_admin):
    wide_token = admin.post("/tokens", json={"name": f"wide-{uuid.uuid4().hex[:6]}",
                                             "role": "operator", "hosts": None}).json()
    user = "U" + uuid.uuid4().hex[:8].upper()
    for spec in ({"role": "operator", "hosts": None}, {"role": "operator", "hosts": ["other"]},
                 {"token_id": wide_token["id"]}):
        response = scoped_admin.post("/integrations/slack/users", json={"user_id": user, **spec})
        _forbidden_by_grant_rule(response)
    assert user not in {u["user_id"] for u in admin.get("/integrations/slack/users").json()}
    inside = scoped_admin.post("/integrations/slack/users",
                               json={"user_id": user, "role": "operator", "hosts": ["local"]})
    assert inside.status_code == 201, inside.text
    admin.delete(f"/integrations/slack/users/{user}")
    admin.delete(f"/tokens/{wide_token['id']}")


def test_scoped_admin_cannot_replace_or_unmap_a_wider_chat_user(admin, scoped_admin):
    user = "U" + uuid.uuid4().hex[:8].upper()
    assert admin.post("/integrations/mattermost/users",
                      json={"user_id": user, "role": "admin"}).status_code == 201
    before = [u for u in admin.get("/integrations/mattermost/users").json()
              if u["user_id"] == user]
    _forbidden_by_grant_rule(scoped_admin.post(
        "/integrations/mattermost/users",
        json={"user_id": user, "role": "viewer", "hosts": ["local"]}))
    _forbidden_by_grant_rule(scoped_admin.delete(f"/integrations/mattermost/users/{user}"))
    after = [u for u in admin.get("/integrations/mattermost/users").json()
             if u["user_id"] == user]
    assert after == before
    assert user not in {u["user_id"] for u in scoped_admin.get(
        "/integrations/mattermost/users").json()}
    admin.delete(f"/integrations/mattermost/users/{user}")


def test_scoped_admin_cannot_subscribe_a_webhook_to_every_host(admin, scoped_admin):
    before = admin.get("/webhooks").json()
    response = scoped_admin.post("/webhooks", json={
        "url": "http://127.0.0.1:9/hook", "events": ["*"], "secret": "s" * 16, "hosts": None})
    _forbidden_by_grant_rule(response)
    assert admin.get("/webhooks").json() == before


# -- 7. the bootstrap admin token is configuration ---------------------------------------------


def test_bootstrap_admin_token_cannot_be_deleted_and_stays_usable(admin):
    response = admin.delete("/tokens/bootstrap-admin")
    assert response.status_code == 409, response.text
    assert response.headers["Content-Type"].startswith("application/problem+json")
    assert "DOCKYARD_ADMIN_TOKEN" in response.json()["detail"]
    assert "bootstrap-admin" in {t["id"] for t in admin.get("/tokens").json()}
    assert Api(admin.base.removesuffix("/api/v1"), ADMIN_TOKEN).get("/tokens").status_code == 200


# -- 2. a job without a host is seen only by unscoped admins and its creator ---------------------


@pytest.fixture(scope="module")
def hostless_job(operator, engine):
    """A fan-out parent (``host: null``) over every host, run by ``operator``."""
    name = "dyt-fan-" + uuid.uuid4().hex[:8]
    response = operator.post("/hosts/auto/containers", params={"wait": 60}, json={
        "image": BUSYBOX, "name": name, "command": ["sleep", "60"],
        "placement": {"labels": {}, "mode": "all"}})
    assert response.status_code == 200, response.text
    yield response.json()
    engine.containers.get(name).remove(force=True)


def test_hostless_job_is_hidden_from_other_non_admin_tokens(hostless_job, operator, admin,
                                                           make_token):
    job_id = hostless_job["id"]
    assert hostless_job["host"] is None and hostless_job["children"]
    others = [make_token("operator"), make_token("operator", hosts=["local"]),
              make_token("admin", hosts=["local"])]
    for other in others:
        assert other.get(f"/jobs/{job_id}").status_code == 404
        assert other.get(f"/jobs/{job_id}/events").status_code == 404
        assert other.get(f"/jobs/{job_id}/deliveries").status_code == 404
        refused = other.post(f"/jobs/{job_id}/cancel")
        assert refused.status_code == 404, refused.text
        assert refused.headers["Content-Type"].startswith("application/problem+json")
        listed = other.get("/jobs", params={"kind": "containers.provision.fanout",
                                            "limit": 200}).json()["items"]
        assert job_id not in {j["id"] for j in listed}
    assert operator.get(f"/jobs/{job_id}").json() == hostless_job  # nothing changed
    assert admin.get(f"/jobs/{job_id}").status_code == 200
    assert job_id in {j["id"] for j in operator.get(
        "/jobs", params={"kind": "containers.provision.fanout", "limit": 200}).json()["items"]}


def test_job_with_a_host_stays_visible_to_tokens_scoped_to_it(hostless_job, make_token):
    scoped = make_token("viewer", hosts=["local"])
    child = hostless_job["children"][0]
    assert scoped.get(f"/jobs/{child}").json()["host"] == "local"
    assert child in {j["id"] for j in scoped.get(
        "/jobs", params={"kind": "containers.provision", "limit": 200}).json()["items"]}


# -- 3. a tampered bundle is read only inside its own folder -----------------------------------


def _tampered_copy(backups_dir, manifest: dict, rootfs_path: str) -> str:
    """A bundle copied in under a new id whose manifest names ``rootfs_path`` for the rootfs."""
    copy_id = new_id()
    shutil.copytree(backups_dir / manifest["id"], backups_dir / copy_id)
    written = json.loads((backups_dir / copy_id / "manifest.json").read_text())
    written["id"] = copy_id
    for part in written["parts"]:
        if part["kind"] == "rootfs":
            part["path"] = rootfs_path
    (backups_dir / copy_id / "manifest.json").write_text(json.dumps(written))
    return copy_id


@pytest.mark.parametrize("escape", ["absolute", "dotdot", "symlink"])
def test_bundle_whose_part_escapes_its_folder_is_refused_on_download_and_restore(
        operator, engine, unique, state_dir, escape):
    backups_dir = state_dir / "backups"
    # As if Dockyard had made it (the managed labels): operators back up only those.
    engine.containers.run(BUSYBOX, ["sleep", "300"], name=unique, detach=True,
                          labels={"dockyard.managed": "true", "dockyard.scope": "*"})
    try:
        job = operator.post(f"/hosts/local/containers/{unique}/backups", params={"wait": 120},
                            json={}).json()
        assert job["state"] == "succeeded", job
    finally:
        engine.containers.get(unique).remove(force=True)
    manifest = job["result"]
    rootfs = next(p["path"] for p in manifest["parts"] if p["kind"] == "rootfs")
    path = {"absolute": str(backups_dir / manifest["id"] / rootfs),
            "dotdot": f"../{manifest['id']}/{rootfs}", "symlink": "linked.tar"}[escape]
    copy_id = _tampered_copy(backups_dir, manifest, path)
    if escape == "symlink":
        (backups_dir / copy_id / "linked.tar").symlink_to(backups_dir / manifest["id"] / rootfs)

    download = operator.get(f"/backups/{copy_id}/content")
    assert download.status_code == 422, download.text
    assert download.headers["Content-Type"].startswith("application/problem+json")
    assert download.json()["part"] == path

    restored = operator.post(f"/backups/{copy_id}/restore", params={"wait": 120},
                             json={"name": f"{unique}-r"}).json()
    assert restored["state"] == "failed", restored
    assert restored["error"]["status"] == 422 and restored["error"]["part"] == path
    assert "escapes the bundle folder" in restored["error"]["detail"]
    assert engine.containers.list(all=True, filters={"name": f"^/{unique}-r$"}) == []
    with pytest.raises(docker.errors.ImageNotFound):
        engine.images.get(f"dockyard-restore/{unique}:backup-{copy_id.lower()}")


# -- 5. an upload never outlives the job it was spooled for ------------------------------------


def _tar(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _spooled(state_dir) -> set:
    folder = state_dir / "spool"
    return set(folder.iterdir()) if folder.is_dir() else set()


@pytest.fixture
def managed_box(operator, engine, unique):
    """A running container Dockyard made (so every role rule lets the operator use it)."""
    job = operator.post("/hosts/local/containers", params={"wait": 60}, json={
        "image": BUSYBOX, "name": unique, "command": ["sleep", "600"]}).json()
    assert job["state"] == "succeeded", job
    yield unique
    engine.containers.get(unique).remove(force=True)


def _absent_in(engine, box: str, path: str) -> bool:
    try:
        engine.containers.get(box).get_archive(path)
    except docker.errors.NotFound:
        return True
    return False


@pytest.mark.parametrize("route", ["archive", "load", "import"])
def test_upload_refused_after_spooling_leaves_nothing_in_the_spool(operator, managed_box,
                                                                   state_dir, engine, route):
    url = {"archive": f"/hosts/local/containers/{managed_box}/archive",
           "load": "/hosts/local/images/load", "import": "/hosts/local/images/import"}[route]
    before = _spooled(state_dir)
    send = operator.put if route == "archive" else operator.post
    response = send(url, params={"path": "/"} if route == "archive" else {},
                    data=_tar({"refused.txt": b"never lands\n"}),
                    headers={"Content-Type": "application/x-tar",
                             "Dockyard-Callback-URL": "http://10.9.8.7/hook"})
    assert response.status_code == 422, response.text
    assert "callback_url" in response.json()["errors"]
    assert _spooled(state_dir) <= before
    assert _absent_in(engine, managed_box, "/refused.txt")


def test_replayed_upload_is_not_kept_in_the_spool(operator, managed_box, state_dir, engine):
    before = _spooled(state_dir)
    headers = {"Content-Type": "application/x-tar", "Idempotency-Key": uuid.uuid4().hex}
    body = _tar({"once.txt": b"once\n"})
    url = f"/hosts/local/containers/{managed_box}/archive"
    first = operator.put(url, params={"path": "/", "wait": 30}, data=body, headers=headers)
    again = operator.put(url, params={"path": "/", "wait": 30}, data=body, headers=headers)
    assert first.json()["state"] == "succeeded", first.text
    assert again.json()["id"] == first.json()["id"]
    assert _spooled(state_dir) <= before


def test_upload_cancelled_while_queued_is_removed_from_the_spool(operator, managed_box,
                                                                 state_dir, engine, unique):
    # The ops lane has two worker processes: two slow jobs fill it, the upload waits.
    blockers = [f"{unique}-b{i}" for i in range(2)]
    blocking = [operator.post("/hosts/local/containers", json=slow_spec(n)).json()["id"]
                for n in blockers]
    try:
        eventually(lambda: all(operator.get(f"/jobs/{j}").json()["state"] == "running"
                               for j in blocking))
        before = _spooled(state_dir)
        queued = operator.put(f"/hosts/local/containers/{managed_box}/archive",
                              params={"path": "/"}, data=_tar({"late.txt": b"late\n"}),
                              headers={"Content-Type": "application/x-tar"}).json()
        assert queued["state"] == "queued"
        assert len(_spooled(state_dir) - before) == 1
        cancelled = operator.post(f"/jobs/{queued['id']}/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
        assert _spooled(state_dir) <= before
    finally:
        for job_id in blocking:
            operator.post(f"/jobs/{job_id}/cancel")
        for job_id in blocking:
            operator.wait_job(job_id)
        for name in blockers:
            with contextlib.suppress(docker.errors.NotFound):
                engine.containers.get(name).remove(force=True)
    assert operator.wait_job(queued["id"], timeout=5)["started_at"] is None
    assert _absent_in(engine, managed_box, "/late.txt")


# -- 4. a delivery connects to the address that was checked -------------------------------------


def test_callback_to_a_name_is_delivered_to_the_checked_address_with_its_host_header(
        operator, engine, unique):
    # The allow-list holds 127.0.0.1 only; `localhost` is allowed because it resolves there,
    # and the receiver, listening on 127.0.0.1 only, gets the POST addressed to the name.
    receiver = Receiver()
    port = receiver.url.rsplit(":", 1)[1]
    try:
        response = operator.post(
            "/hosts/local/containers",
            headers={"Dockyard-Callback-URL": f"http://localhost:{port}/pinned"},
            json={"image": BUSYBOX, "name": unique, "command": ["sleep", "60"]})
        assert response.status_code == 202, response.text
        eventually(lambda: receiver.to("/pinned"))
        delivery = receiver.to("/pinned")[0]
        assert delivery["headers"]["Host"] == f"localhost:{port}"
        assert signed_payload(delivery)["data"]["id"] == response.json()["id"]
        log = eventually(lambda: operator.get(f"/jobs/{response.json()['id']}/deliveries").json())
        assert log[0]["outcome"] == "delivered"
    finally:
        receiver.close()
        with contextlib.suppress(docker.errors.NotFound):
            engine.containers.get(unique).remove(force=True)


# -- 6. chat commands pass the same rate limits and audit as HTTP calls --------------------------


def _fill_rate_window(test_redis, token_id: str, route_class: str, count: int) -> None:
    """Use up a token's per-second budget for the next few windows, as a burst would."""
    now = int(time.time())
    for window in range(now - 1, now + 30):
        test_redis.set(f"{PREFIX}rl:{token_id}:{route_class}:{window}", count, ex=40)


@pytest.fixture
def chat_token_user(admin):
    """A Slack user mapped to an operator token with its own small ops limit."""
    token = admin.post("/tokens", json={"name": f"chat-{uuid.uuid4().hex[:6]}",
                                        "role": "operator", "rate_limit": {"ops": 3}}).json()
    user = "U" + uuid.uuid4().hex[:8].upper()
    assert admin.post("/integrations/slack/users", json={
        "user_id": user, "token_id": token["id"], "name": "limited"}).status_code == 201
    yield token, user
    admin.delete(f"/integrations/slack/users/{user}")
    admin.delete(f"/tokens/{token['id']}")


def test_chat_command_over_the_mapped_tokens_rate_limit_is_refused_in_chat_words_and_audited(
        stack, admin, engine, test_redis, chat_token_user, unique):
    token, user = chat_token_user
    _fill_rate_window(test_redis, token["id"], "ops", 3)
    reply = slack_request(stack, f"run local -d --name {unique} {BUSYBOX} sleep 60",
                          user_id=user)
    assert reply.status_code == 200
    text = reply.json()["text"]
    assert text.startswith("Slow down") and "did not run" in text and "try again in" in text
    assert engine.containers.list(all=True, filters={"name": f"^/{unique}$"}) == []
    entries = admin.get("/audit", params={"actor": "slack:limited", "limit": 20}).json()["items"]
    refused = next(e for e in entries if e["status"] == 429)
    assert refused["outcome"] == "denied" and refused["token_id"] == token["id"]
    assert refused["route"] == "/api/v1/hosts/<string:host>/containers"
    assert refused["chat"] == {"platform": "slack", "user_id": user, "user_name": "alice"}


def test_chat_command_writes_the_audit_record_an_http_call_writes(stack, admin, engine,
                                                                  chat_token_user, unique):
    token, user = chat_token_user
    try:
        reply = slack_request(stack, f"run local -d --name {unique} {BUSYBOX} sleep 60",
                              user_id=user)
        assert reply.status_code == 200 and "Slow down" not in reply.json()["text"]
        entries = admin.get("/audit", params={"actor": "slack:limited",
                                              "limit": 20}).json()["items"]
        made = next(e for e in entries if e["method"] == "POST" and e["status"] == 202)
        assert made["outcome"] == "ok" and made["host"] == "local" and made["job_id"]
        assert made["token_id"] == token["id"] and made["request_id"]
        assert made["chat"] == {"platform": "slack", "user_id": user, "user_name": "alice"}
        assert made["request"]["body"]["name"] == unique
        admin.wait_job(made["job_id"])
    finally:
        with contextlib.suppress(docker.errors.NotFound):
            engine.containers.get(unique).remove(force=True)
