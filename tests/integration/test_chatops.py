"""Slack and Mattermost slash commands: signed requests, chat users, real containers."""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from collections.abc import Iterator
from urllib.parse import urlencode

import pytest
import requests

from tests.integration.conftest import MATTERMOST_TOKEN, SLACK_SIGNING_SECRET
from tests.integration.helpers import BUSYBOX, eventually, free_port
from tests.integration.test_webhooks import Receiver, signed_payload

OPERATOR_ID = "U" + uuid.uuid4().hex[:8].upper()
VIEWER_ID = "U" + uuid.uuid4().hex[:8].upper()


def slack_request(stack, text: str, user_id: str = OPERATOR_ID, response_url: str = "",
                  timestamp: int | None = None, tamper: str | None = None) -> requests.Response:
    """POST a slash command signed exactly as Slack signs it (v0, HMAC-SHA256)."""
    body = urlencode({"token": "legacy", "team_id": "T1", "team_domain": "acme",
                      "channel_id": "C1", "channel_name": "ops", "user_id": user_id,
                      "user_name": "alice", "command": "/dockyard", "text": text,
                      "response_url": response_url, "trigger_id": "1.2.3"}).encode()
    timestamp = int(time.time()) if timestamp is None else timestamp
    base = f"v0:{timestamp}:".encode() + body
    signature = "v0=" + hmac.new(SLACK_SIGNING_SECRET.encode(), base, hashlib.sha256).hexdigest()
    if tamper:
        body = urlencode({"user_id": user_id, "text": tamper, "response_url": response_url}).encode()
    return requests.post(f"{stack.url}/api/v1/integrations/slack/commands", data=body, timeout=30,
                         headers={"Content-Type": "application/x-www-form-urlencoded",
                                  "X-Slack-Request-Timestamp": str(timestamp),
                                  "X-Slack-Signature": signature})


def mattermost_request(stack, text: str, token: str = MATTERMOST_TOKEN,
                       user_id: str = OPERATOR_ID) -> requests.Response:
    return requests.post(f"{stack.url}/api/v1/integrations/mattermost/commands", timeout=30,
                         data={"token": token, "user_id": user_id, "user_name": "alice",
                               "command": "/dockyard", "text": text, "channel_id": "c",
                               "team_id": "t", "response_url": ""})


@pytest.fixture(scope="module", autouse=True)
def chat_users(admin):
    for platform in ("slack", "mattermost"):
        for user_id, role in ((OPERATOR_ID, "operator"), (VIEWER_ID, "viewer")):
            response = admin.post(f"/integrations/{platform}/users",
                                  json={"user_id": user_id, "role": role, "name": role})
            assert response.status_code == 201, response.text


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


@pytest.fixture
def www(bind_root, unique):
    folder = bind_root / unique
    folder.mkdir()
    (folder / "index.html").write_text(f"hello from {unique}\n")
    return folder


def test_run_from_slack_creates_the_container_and_posts_the_outcome(
        stack, engine, receiver, www, unique, cleanup):
    cleanup.append(unique)
    port = free_port()
    started = time.monotonic()
    response = slack_request(stack, f"run local -d -p {port}:8080 -v {www}:/www:ro "
                                    f"--name {unique} {BUSYBOX} httpd -f -p 8080 -h /www",
                             response_url=receiver.url + "/slack-reply")
    assert time.monotonic() - started < 3
    assert response.status_code == 200, response.text
    ack = response.json()
    assert ack["response_type"] == "ephemeral"
    assert "containers.provision" in ack["text"] and "job " in ack["text"]
    eventually(lambda: receiver.to("/slack-reply"), timeout=60)
    reply = signed_payload(receiver.to("/slack-reply")[0])
    assert reply["response_type"] == "ephemeral"
    assert "succeeded" in reply["text"] and unique in reply["text"]
    container = engine.containers.get(unique)
    assert container.status == "running"
    assert container.attrs["HostConfig"]["PortBindings"]["8080/tcp"][0]["HostPort"] == str(port)
    mount = container.attrs["Mounts"][0]
    assert (mount["Source"], mount["Destination"], mount["RW"]) == (str(www), "/www", False)
    assert container.labels["dockyard.managed"] == "true"
    body = requests.get(f"http://127.0.0.1:{port}/index.html", timeout=5).text
    assert body == f"hello from {unique}\n"


@pytest.mark.parametrize("case", ["tampered", "stale"])
def test_tampered_or_stale_slack_request_is_refused_and_nothing_runs(stack, engine, case,
                                                                     unique, cleanup):
    cleanup.append(unique)
    if case == "tampered":
        response = slack_request(stack, "ps local",
                                 tamper=f"run local --name {unique} {BUSYBOX} sleep 60")
    else:
        response = slack_request(stack, f"run local --name {unique} {BUSYBOX} sleep 60",
                                 timestamp=int(time.time()) - 6 * 60)
    assert response.status_code == 401
    assert response.headers["Content-Type"] == "application/problem+json"
    time.sleep(1)
    assert engine.containers.list(all=True, filters={"name": f"^/{unique}$"}) == []


def test_unknown_chat_user_is_refused(stack, engine, unique, cleanup):
    cleanup.append(unique)
    response = slack_request(stack, f"run local --name {unique} {BUSYBOX} sleep 60",
                             user_id="UNOBODY")
    assert response.status_code == 200
    assert "not a Dockyard user" in response.json()["text"]
    time.sleep(1)
    assert engine.containers.list(all=True, filters={"name": f"^/{unique}$"}) == []


def test_chat_users_get_their_role_and_the_same_policy(stack, engine, unique, cleanup):
    cleanup.append(unique)
    denied = slack_request(stack, f"run local --name {unique} {BUSYBOX} sleep 60",
                           user_id=VIEWER_ID).json()["text"]
    assert "operator" in denied
    policy = slack_request(stack, f"run local -v /etc:/host-etc --name {unique} {BUSYBOX}"
                                  " sleep 60").json()["text"]
    assert policy.startswith("Error:") and "/etc" in policy
    time.sleep(1)
    assert engine.containers.list(all=True, filters={"name": f"^/{unique}$"}) == []


def test_grammar_errors_read_like_docker(stack):
    text = slack_request(stack, f"run local --nope {BUSYBOX}").json()["text"]
    assert "unknown flag: --nope" in text
    assert '"run" requires at least 2 arguments' in slack_request(stack, "run local").json()["text"]
    assert "run HOST" in slack_request(stack, "help").json()["text"]


def test_rm_needs_yes(stack, operator, engine, unique, cleanup):
    cleanup.append(unique)
    job = operator.post("/hosts/local/containers", params={"wait": 30},
                        json={"image": BUSYBOX, "name": unique, "command": ["sleep", "60"]}).json()
    assert job["state"] == "succeeded"
    refused = slack_request(stack, f"rm local {unique} -f").json()["text"]
    assert "--yes" in refused
    time.sleep(1)
    assert engine.containers.get(unique).status == "running"
    accepted = slack_request(stack, f"rm local {unique} -f --yes").json()["text"]
    assert "containers.remove" in accepted
    eventually(lambda: not engine.containers.list(all=True, filters={"name": f"^/{unique}$"}))


def test_mattermost_commands_with_the_token(stack, operator, unique, cleanup):
    cleanup.append(unique)
    operator.post("/hosts/local/containers", params={"wait": 30},
                  json={"image": BUSYBOX, "name": unique, "command": ["sleep", "60"]})
    answer = mattermost_request(stack, "ps local -a")
    assert answer.status_code == 200
    assert answer.json()["response_type"] == "ephemeral" and unique in answer.json()["text"]
    assert mattermost_request(stack, "ps local", token="wrong").status_code == 401


def test_chat_users_are_managed_by_admins(admin, operator):
    assert operator.get("/integrations/slack/users").status_code == 403
    users = admin.get("/integrations/slack/users").json()
    assert {(u["user_id"], u["role"]) for u in users} >= {(OPERATOR_ID, "operator")}
    admin.post("/integrations/slack/users", json={"user_id": "UGONE", "role": "viewer"})
    assert admin.delete("/integrations/slack/users/UGONE").status_code == 204
    assert admin.delete("/integrations/slack/users/UGONE").status_code == 404


def test_chat_user_mapped_to_a_token_loses_access_when_the_token_is_revoked(stack, admin):
    token = admin.post("/tokens", json={"name": "chat-linked", "role": "viewer",
                                        "hosts": ["local"]}).json()
    user_id = "U" + uuid.uuid4().hex[:8].upper()
    assert admin.post("/integrations/slack/users", json={
        "user_id": user_id, "token_id": token["id"], "role": "admin"}).status_code == 422
    mapped = admin.post("/integrations/slack/users",
                        json={"user_id": user_id, "token_id": token["id"]})
    assert mapped.status_code == 201 and mapped.json()["role"] == "viewer"
    assert "CONTAINER ID" in slack_request(stack, "ps local", user_id=user_id).json()["text"]
    assert "operator" in slack_request(stack, f"run local {BUSYBOX}",
                                       user_id=user_id).json()["text"]
    assert admin.delete(f"/tokens/{token['id']}").status_code == 204
    refused = slack_request(stack, "ps local", user_id=user_id).json()["text"]
    assert "not a Dockyard user" in refused


def test_a_chat_command_is_limited_and_audited_like_its_http_call(stack, admin, engine,
                                                                    test_redis, unique, cleanup):
    """A chat user mapped to a token spends the token's rate limit and is audited as its HTTP
    call: the same record apart from what belongs to one request (time, request id, job id)
    and to its sender (the actor's name, the chat user)."""
    cleanup.append(unique)
    created = admin.post("/tokens", json={"name": f"rl-{unique}", "role": "operator",
                                          "rate_limit": {"ops": 5}}).json()
    from tests.integration.conftest import Api

    http = Api(admin.base.removesuffix("/api/v1"), created["token"])
    user_id = "U" + uuid.uuid4().hex[:8].upper()
    assert admin.post("/integrations/slack/users",
                      json={"user_id": user_id, "token_id": created["id"]}).status_code == 201
    job = http.post("/hosts/local/containers", params={"wait": 30},
                    json={"image": BUSYBOX, "name": unique, "command": ["sleep", "300"]}).json()
    assert job["state"] == "succeeded", job

    # Spend the token's ops budget for the next two minutes, in the limiter's own counters
    # (one per token, class and second), so both refusals below cannot depend on the clock.
    now = int(time.time())
    spent = [f"dy:rl:{created['id']}:ops:{window}" for window in range(now - 1, now + 120)]
    with test_redis.pipeline() as pipe:
        for key in spent:
            pipe.set(key, 5, ex=180)
        pipe.execute()
    refused_http = http.post(f"/hosts/local/containers/{unique}/stop", json={"timeout": 1})
    assert refused_http.status_code == 429
    refused_chat = slack_request(stack, f"stop local {unique} -t 1", user_id=user_id).json()
    assert refused_chat["text"].startswith("Slow down") and "did not run" in refused_chat["text"]
    time.sleep(1)
    assert engine.containers.get(unique).status == "running"  # neither stop ran

    test_redis.delete(*spent)
    accepted_http = http.post(f"/hosts/local/containers/{unique}/stop", json={"timeout": 1})
    assert accepted_http.status_code == 202, accepted_http.text
    accepted_chat = slack_request(stack, f"stop local {unique} -t 1", user_id=user_id).json()
    assert "containers.action" in accepted_chat["text"], accepted_chat

    records = [e for e in admin.get("/audit", params={"limit": 200}).json()["items"]
               if e["token_id"] == created["id"] and e["route"].endswith("/stop")]
    by_origin = {(e["chat"] is not None, e["status"]): e for e in records}
    assert sorted(by_origin) == [(False, 202), (False, 429), (True, 202), (True, 429)], records
    personal = ("id", "ts", "request_id", "job_id", "actor", "chat")

    def shared(entry: dict) -> dict:
        return {key: value for key, value in entry.items() if key not in personal}

    for status in (202, 429):
        chat, plain = by_origin[(True, status)], by_origin[(False, status)]
        assert shared(chat) == shared(plain)
        assert chat["chat"] == {"platform": "slack", "user_id": user_id, "user_name": "alice"}
        assert plain["chat"] is None and chat["actor"].startswith("slack:")
    assert shared(by_origin[(True, 429)])["outcome"] == "denied"
    assert by_origin[(True, 202)]["job_id"] and by_origin[(False, 202)]["job_id"]
