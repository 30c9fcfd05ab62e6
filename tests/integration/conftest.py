"""Integration fixtures: a real API, real Celery workers, real Redis, engine and registry."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

import docker
import pytest
import redis
import requests

from app.core.config import Settings, secret_from_env
from app.engine import bind_check
from tests.integration.helpers import REGISTRY_PASSWORD, REGISTRY_USER, free_port
from tests.support.stack import ROOT, Stack

# The suite's Redis database: DOCKYARD_TEST_REDIS_URL, or database 15 of `make test`'s Redis.
# STACK_REDIS_URL is what the suite's processes get (they read the password from
# DOCKYARD_REDIS_PASSWORD_FILE like any Dockyard process); TEST_REDIS_URL carries the
# password for the suite's own clients.
STACK_REDIS_URL = os.environ.get("DOCKYARD_TEST_REDIS_URL") or re.sub(
    r"/\d*$", "/15", os.environ.get("DOCKYARD_REDIS_URL", "redis://127.0.0.1:6379/15"))
TEST_REDIS_URL = Settings(redis_url=STACK_REDIS_URL,
                          redis_password=secret_from_env("DOCKYARD_REDIS_PASSWORD")).redis_url
ADMIN_TOKEN = "dy_test-admin-" + uuid.uuid4().hex
SECRET_KEY = "test-secret-" + uuid.uuid4().hex
BUSYBOX = "dockyard-test/busybox:latest"
WEBHOOK_SECRET = "test-webhook-" + uuid.uuid4().hex
SLACK_SIGNING_SECRET = "test-slack-" + uuid.uuid4().hex
MATTERMOST_TOKEN = "test-mattermost-" + uuid.uuid4().hex
STATE_DIR = Path(os.environ.get("DOCKYARD_TEST_STATE_DIR", str(ROOT / ".state" / "test")))
# Every response body the suite's Api clients saw, one JSON line each, and every secret
# they sent or were issued: test_zz_secrets searches the session's output for the latter.
EXCHANGE_LOG = STATE_DIR / "log" / "http-exchanges.jsonl"
SUITE_SECRETS: set[str] = {ADMIN_TOKEN, SECRET_KEY}
_SECRET_FIELDS = ("password", "client_key", "private_key", "passphrase")


@pytest.fixture(scope="session")
def state_dir() -> Path:
    # DOCKYARD_TEST_STATE_DIR (with DOCKYARD_TEST_REDIS_URL) lets two sessions run side by side;
    # the directory is wiped at session start, so sessions must not share it.
    path = STATE_DIR
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


@pytest.fixture(scope="session")
def bind_root(state_dir: Path) -> Iterator[Path]:
    root = state_dir / "binds"
    root.mkdir()
    yield root
    # The bind check keeps a helper per engine and set of roots; this root ends with the run.
    if "DOCKER_HOST" in os.environ:
        bind_check.remove_helpers(docker.DockerClient(base_url=os.environ["DOCKER_HOST"]), str(root))


@pytest.fixture(scope="session")
def stack_env(state_dir: Path, bind_root: Path) -> dict[str, str]:
    if "DOCKER_HOST" not in os.environ:
        pytest.fail("DOCKER_HOST is not set: run the suite with `make test`")
    return {
        **os.environ,
        "DOCKYARD_REDIS_URL": STACK_REDIS_URL,
        "DOCKYARD_STATE_DIR": str(state_dir),
        "DOCKYARD_SECRET_KEY": SECRET_KEY,
        "DOCKYARD_ADMIN_TOKEN": ADMIN_TOKEN,
        "DOCKYARD_BIND_ROOTS": str(bind_root),
        "DOCKYARD_LOCAL_ENGINE": os.environ["DOCKER_HOST"],
        "DOCKYARD_MAX_BODY_BYTES": str(256 * 1024),
        "DOCKYARD_MAX_UPLOAD_BYTES": str(8 * 1024 * 1024),
        "DOCKYARD_TOKEN_CACHE_SECONDS": "0",
        # Chat and webhooks: the suite's receivers listen on loopback; retries back off fast.
        "DOCKYARD_WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
        # Git build contexts: the suite's git daemon listens on loopback.
        "DOCKYARD_GIT_ALLOWED_HOSTS": "127.0.0.1",
        "DOCKYARD_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "DOCKYARD_WEBHOOK_RETRY_BASE_SECONDS": "0.5",
        "DOCKYARD_SLACK_SIGNING_SECRET": SLACK_SIGNING_SECRET,
        "DOCKYARD_MATTERMOST_TOKEN": MATTERMOST_TOKEN,
    }


@pytest.fixture(scope="session")
def test_redis() -> redis.Redis:
    client = redis.Redis.from_url(TEST_REDIS_URL, decode_responses=True)
    client.flushdb()
    return client


@pytest.fixture(scope="session")
def stack(stack_env: dict[str, str], state_dir: Path, test_redis: redis.Redis) -> Iterator[Stack]:
    running = Stack(stack_env, state_dir / "log")
    try:
        running.start()
        yield running
    finally:
        running.stop()


class Api:
    """A tiny HTTP client for the API under test."""

    def __init__(self, base: str, token: str | None) -> None:
        self.base = base + "/api/v1"
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def request(self, method: str, path: str, **kwargs) -> requests.Response:
        kwargs.setdefault("timeout", 120)
        response = self.session.request(method, self.base + path, **kwargs)
        record_exchange(method, path, kwargs, response)
        return response

    def get(self, path: str, **kwargs) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs) -> requests.Response:
        return self.request("POST", path, **kwargs)

    def patch(self, path: str, **kwargs) -> requests.Response:
        return self.request("PATCH", path, **kwargs)

    def put(self, path: str, **kwargs) -> requests.Response:
        return self.request("PUT", path, **kwargs)

    def delete(self, path: str, **kwargs) -> requests.Response:
        return self.request("DELETE", path, **kwargs)

    def wait_job(self, job_id: str, timeout: float = 60) -> dict:
        response = self.get(f"/jobs/{job_id}", params={"wait": timeout})
        assert response.status_code == 200, response.text
        return response.json()


def _collect_secrets(value: object) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            if key in _SECRET_FIELDS and isinstance(item, str) and len(item) >= 8:
                SUITE_SECRETS.add(item)
            else:
                _collect_secrets(item)
    elif isinstance(value, list):
        for item in value:
            _collect_secrets(item)


def record_exchange(method: str, path: str, kwargs: dict, response: requests.Response) -> None:
    """Remember what the suite sent as secrets and append the (textual) answer to the log."""
    _collect_secrets(kwargs.get("json"))
    body = None
    textual = response.headers.get("Content-Type", "").split(";")[0].strip()
    if not kwargs.get("stream") and (textual.endswith(("json", "text/plain"))
                                     or textual.startswith("text/")):
        body = response.text
        if method == "POST" and path == "/tokens" and response.status_code == 201:
            issued = response.json()  # the secret is shown once, by design; keep it to search for
            SUITE_SECRETS.add(issued["token"])
            body = json.dumps({**issued, "token": "<issued>"})
        elif method in ("POST", "PATCH") and path.startswith("/hosts") and response.ok:
            # An agent's login is shown once, by design, like a token: keep it to search for.
            answer = response.json()
            issued = answer.get("agent_credentials") if "agent_credentials" in answer else (
                answer if path.endswith("/agent-credentials") else None)
            if issued:
                password = unquote(urlsplit(issued["redis_url"]).password or "")
                SUITE_SECRETS.update({password, issued["agent_key"]})
                body = "<agent credentials issued>"
    EXCHANGE_LOG.parent.mkdir(parents=True, exist_ok=True)
    with EXCHANGE_LOG.open("a") as log:
        log.write(json.dumps({"method": method, "path": path, "status": response.status_code,
                              "body": body}) + "\n")


@pytest.fixture(scope="session")
def admin(stack: Stack) -> Api:
    return Api(stack.url, ADMIN_TOKEN)


@pytest.fixture(scope="session")
def make_token(admin: Api):
    def make(role: str, hosts: list[str] | None = None) -> Api:
        response = admin.post("/tokens", json={"name": f"t-{role}-{uuid.uuid4().hex[:6]}",
                                               "role": role, "hosts": hosts})
        assert response.status_code == 201, response.text
        return Api(admin.base.removesuffix("/api/v1"), response.json()["token"])

    return make


@pytest.fixture(scope="session")
def operator(make_token) -> Api:
    return make_token("operator")


@pytest.fixture(scope="session")
def viewer(make_token) -> Api:
    return make_token("viewer")


@pytest.fixture(scope="session")
def engine() -> docker.DockerClient:
    return docker.DockerClient(base_url=os.environ["DOCKER_HOST"])


@pytest.fixture
def unique() -> str:
    return "dyt-" + uuid.uuid4().hex[:10]


@pytest.fixture
def cleanup(engine: docker.DockerClient) -> Iterator[list[str]]:
    """Names or ids of containers a test made; removed (with volumes) afterwards."""
    made: list[str] = []
    yield made
    for ref in made:
        with contextlib.suppress(docker.errors.NotFound):
            engine.containers.get(ref).remove(force=True, v=True)


@pytest.fixture(scope="session")
def auth_registry(state_dir: Path) -> Iterator[str]:
    """A Distribution v2 registry on loopback with htpasswd basic auth; its ``host:port``.

    The credentials are ``helpers.REGISTRY_USER`` / ``helpers.REGISTRY_PASSWORD``.
    """
    folder = state_dir / f"authreg-{uuid.uuid4().hex[:6]}"
    folder.mkdir()
    htpasswd = subprocess.run(["htpasswd", "-Bbn", REGISTRY_USER, REGISTRY_PASSWORD], check=True,
                              capture_output=True, text=True).stdout
    (folder / "htpasswd").write_text(htpasswd)
    port = free_port()
    (folder / "config.yml").write_text(
        "version: 0.1\nlog: {level: warn}\n"
        f"storage: {{filesystem: {{rootdirectory: {folder}/data}}, delete: {{enabled: true}}}}\n"
        f"http: {{addr: 127.0.0.1:{port}}}\n"
        f"auth: {{htpasswd: {{realm: dockyard-test, path: {folder}/htpasswd}}}}\n")
    proc = subprocess.Popen(["docker-registry", "serve", str(folder / "config.yml")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"127.0.0.1:{port}"
    for _ in range(100):
        try:
            if requests.get(f"http://{address}/v2/", timeout=1).status_code == 401:
                break
        except requests.RequestException:
            time.sleep(0.1)
    yield address
    proc.terminate()
    proc.wait(10)
