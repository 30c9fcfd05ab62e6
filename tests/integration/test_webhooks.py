"""Outbound webhooks (signed, retried, logged, allow-listed) and the live /events stream."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from app.integrations.webhooks import verify
from tests.integration.conftest import WEBHOOK_SECRET
from tests.integration.helpers import BUSYBOX, eventually


class Receiver:
    """An HTTP server on 127.0.0.1 recording every POST; answers scripted per path."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.scripts: dict[str, list[tuple[int, dict[str, str]]]] = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                script = receiver.scripts.get(self.path) or []
                status, headers = script.pop(0) if script else (200, {})
                receiver.requests.append({"path": self.path, "headers": dict(self.headers),
                                          "body": body, "status": status})
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def to(self, path: str) -> list[dict]:
        return [r for r in self.requests if r["path"] == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


def signed_payload(request: dict, secret: str = WEBHOOK_SECRET) -> dict:
    """The delivery's JSON after checking its Dockyard-Signature like a receiver must."""
    assert verify(secret, request["body"], request["headers"]["Dockyard-Signature"]), request
    return json.loads(request["body"])


@pytest.fixture
def subscribe(admin):
    made: list[str] = []

    def create(url: str, events: list[str], secret: str, hosts: list[str] | None = None) -> dict:
        response = admin.post("/webhooks", json={"url": url, "events": events, "secret": secret,
                                                 "hosts": hosts})
        assert response.status_code == 201, response.text
        made.append(response.json()["id"])
        return response.json()

    yield create
    for sub_id in made:
        admin.delete(f"/webhooks/{sub_id}")


def test_callback_url_off_the_allow_list_is_refused_and_nothing_runs(operator, engine, unique):
    for url in ("http://10.9.8.7/hook", "http://169.254.169.254/latest", "file:///etc/passwd",
                "http://user:pw@127.0.0.1:9/x"):
        response = operator.post("/hosts/local/containers", headers={"Dockyard-Callback-URL": url},
                                 json={"image": BUSYBOX, "name": unique, "command": ["sleep", "9"]})
        assert response.status_code == 422, response.text
        assert "callback_url" in response.json()["errors"]
    assert engine.containers.list(all=True, filters={"name": f"^/{unique}$"}) == []
    jobs = operator.get("/jobs", params={"kind": "containers.provision", "limit": 50}).json()
    assert unique not in {j["target"] for j in jobs["items"]}


def test_callback_url_receives_the_signed_versioned_job_outcome(operator, receiver, unique,
                                                                 cleanup):
    cleanup.append(unique)
    response = operator.post("/hosts/local/containers",
                             headers={"Dockyard-Callback-URL": receiver.url + "/done"},
                             json={"image": BUSYBOX, "name": unique, "command": ["sleep", "60"]})
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    eventually(lambda: receiver.to("/done"))
    delivery = receiver.to("/done")[0]
    payload = signed_payload(delivery)
    assert payload["version"] == 1 and payload["type"] == "job.succeeded"
    assert payload["data"]["id"] == job_id and payload["data"]["result"]["name"] == unique
    assert delivery["headers"]["Dockyard-Event"] == "job.succeeded"
    log = eventually(lambda: operator.get(f"/jobs/{job_id}/deliveries").json())
    assert log[0]["outcome"] == "delivered" and log[0]["status"] == 200
    assert log[0]["delivery"] == delivery["headers"]["Dockyard-Delivery"]


def test_target_failing_twice_gets_exactly_one_accepted_delivery_after_retries(
        operator, admin, receiver, subscribe, unique, cleanup):
    receiver.scripts["/flaky"] = [(500, {}), (500, {})]
    sub = subscribe(receiver.url + "/flaky", ["job.succeeded"], "flaky-secret-0123456789")
    cleanup.append(unique)
    job = operator.post("/hosts/local/containers", params={"wait": 30},
                        json={"image": BUSYBOX, "name": unique, "command": ["sleep", "60"]}).json()

    def ours() -> list[dict]:
        return [r for r in receiver.to("/flaky")
                if json.loads(r["body"])["data"]["id"] == job["id"]]

    eventually(lambda: any(r["status"] == 200 for r in ours()), timeout=30)
    time.sleep(2)  # a spurious extra attempt would arrive within the backoff
    attempts = ours()
    assert [r["status"] for r in attempts] == [500, 500, 200]
    assert len({r["headers"]["Dockyard-Delivery"] for r in attempts}) == 1
    for attempt in attempts:
        assert signed_payload(attempt, "flaky-secret-0123456789")["data"]["state"] == "succeeded"
    log = [e for e in admin.get(f"/webhooks/{sub['id']}/deliveries").json()
           if e["delivery"] == attempts[0]["headers"]["Dockyard-Delivery"]]
    assert [(e["attempt"], e["status"], e["outcome"]) for e in reversed(log)] == [
        (1, 500, "retrying"), (2, 500, "retrying"), (3, 200, "delivered")]


def test_redirects_are_not_followed(operator, admin, receiver, subscribe, unique, cleanup):
    receiver.scripts["/moved"] = [(302, {"Location": receiver.url + "/elsewhere"})]
    sub = subscribe(receiver.url + "/moved", ["job.succeeded"], "moved-secret-0123456789")
    cleanup.append(unique)
    operator.post("/hosts/local/containers", params={"wait": 30},
                  json={"image": BUSYBOX, "name": unique, "command": ["sleep", "60"]})
    log = eventually(lambda: admin.get(f"/webhooks/{sub['id']}/deliveries").json())
    assert log[-1]["status"] == 302 and log[-1]["error"] == "redirect not followed"
    assert log[-1]["outcome"] == "retrying"
    assert receiver.to("/elsewhere") == []


def test_subscriptions_are_admin_only_and_allow_listed(admin, operator):
    spec = {"url": "http://127.0.0.1:9/x", "events": ["job.failed"], "secret": "s" * 16}
    assert operator.post("/webhooks", json=spec).status_code == 403
    assert admin.post("/webhooks", json={**spec, "url": "http://10.1.1.1/x"}).status_code == 422
    assert admin.post("/webhooks", json={**spec, "events": ["everything"]}).status_code == 422
    created = admin.post("/webhooks", json=spec)
    assert created.status_code == 201 and "secret" not in created.json()
    assert admin.delete(f"/webhooks/{created.json()['id']}").status_code == 204


def test_payload_schema_is_in_the_openapi_spec(admin):
    spec = requests.get(admin.base + "/openapi.json", timeout=10).json()
    payload = spec["components"]["schemas"]["WebhookPayload"]
    assert set(payload["required"]) == {"version", "type", "created_at", "data"}


def test_engine_events_fan_out_to_subscriptions(operator, receiver, subscribe, unique, cleanup):
    subscribe(receiver.url + "/engine", ["engine.container.start"], "engine-secret-0123456789",
              hosts=["local"])
    cleanup.append(unique)
    operator.post("/hosts/local/containers", params={"wait": 30},
                  json={"image": BUSYBOX, "name": unique, "command": ["sleep", "60"]})

    def started() -> list[dict]:
        return [p for p in (json.loads(r["body"]) for r in receiver.to("/engine"))
                if p["data"]["actor"]["attributes"].get("name") == unique]

    payload = eventually(started, timeout=30)[0]
    assert payload["type"] == "engine.container.start" and payload["data"]["host"] == "local"


# -- /events --------------------------------------------------------------------------------


def read_events(api, until, last_event_id: str | None = None, timeout: float = 30) -> list[dict]:
    """Read /events until ``until(events)`` holds; the connection is then dropped."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    events: list[dict] = []
    current: dict = {}
    deadline = time.monotonic() + timeout
    with api.get("/events", params={"host": "local", "type": "container"}, headers=headers,
                 stream=True, timeout=(5, 15)) as response:
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        for line in response.iter_lines(decode_unicode=True):
            if line:
                field, _, value = line.partition(": ")
                current[field] = value
                continue
            if "data" in current:
                events.append({**current, "data": json.loads(current["data"])})
                if until(events):
                    return events
            current = {}
            assert time.monotonic() < deadline, f"no matching event in {timeout}s: {events}"
    raise AssertionError("the stream ended")


def _started(events: list[dict], name: str) -> bool:
    return any(e["event"] == "engine.container.start"
               and e["data"]["actor"]["attributes"].get("name") == name for e in events)


def test_events_stream_resumes_with_last_event_id_without_missing_any(
        viewer, operator, test_redis, unique, cleanup):
    first, second, third = (f"{unique}-{n}" for n in ("a", "b", "c"))
    cleanup.extend([first, second, third])
    spec = {"image": BUSYBOX, "command": ["sleep", "60"]}
    done = threading.Event()

    def start_first() -> None:
        time.sleep(1)
        operator.post("/hosts/local/containers", params={"wait": 30}, json={**spec, "name": first})
        done.set()

    threading.Thread(target=start_first, daemon=True).start()
    before = read_events(viewer, lambda seen: _started(seen, first))
    done.wait(30)
    last_id = before[-1]["id"]
    # Disconnected: these events happen while no client listens.
    for name in (second, third):
        operator.post("/hosts/local/containers", params={"wait": 30}, json={**spec, "name": name})
    after = read_events(viewer, lambda seen: _started(seen, third), last_event_id=last_id)
    assert _started(after, second)
    stored = [event_id for event_id, fields in
              test_redis.xrange("dy:events", min=f"({last_id}", max=after[-1]["id"])
              if fields["host"] == "local" and fields["type"] == "container"]
    assert [e["id"] for e in after] == stored
    assert all(e["data"]["host"] == "local" and e["data"]["type"] == "container" for e in after)


def test_events_stream_names_its_hosts_within_the_token_scope(viewer, make_token):
    assert viewer.get("/events").status_code == 422
    assert viewer.get("/events", params={"host": "no-such-host"}).status_code == 404
    scoped = make_token("viewer", hosts=["elsewhere"])
    assert scoped.get("/events", params={"host": "local"}).status_code == 403
    bad_resume = viewer.get("/events", params={"host": "local"},
                            headers={"Last-Event-ID": "yesterday"})
    assert bad_resume.status_code == 422


def test_callback_url_in_the_body_works_like_the_header(operator, receiver, unique, cleanup):
    cleanup.append(unique)
    response = operator.post("/hosts/local/containers", json={
        "image": BUSYBOX, "name": unique, "command": ["sleep", "60"],
        "callback_url": receiver.url + "/body-done"})
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    eventually(lambda: receiver.to("/body-done"))
    payload = signed_payload(receiver.to("/body-done")[0])
    assert payload["data"]["id"] == job_id and payload["type"] == "job.succeeded"
    refused = operator.post("/hosts/local/containers", json={
        "image": BUSYBOX, "name": f"{unique}-x", "callback_url": "http://10.9.8.7/hook"})
    assert refused.status_code == 422 and "callback_url" in refused.json()["errors"]
