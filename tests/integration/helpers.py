"""Small helpers shared by integration tests."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Callable
from typing import Any

import docker

BUSYBOX = "dockyard-test/busybox:latest"
# Credentials of the htpasswd registry fixture (``auth_registry``).
REGISTRY_USER, REGISTRY_PASSWORD = "dockyard", "pw-" + uuid.uuid4().hex


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def eventually(check: Callable[[], Any], timeout: float = 20, interval: float = 0.1) -> Any:
    """Retry ``check`` until it returns something truthy; fail with its last value."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last value: {value!r})")


def containers_of_job(engine: docker.DockerClient, job_id: str) -> list:
    return engine.containers.list(all=True, filters={"label": f"dockyard.job={job_id}"})


def httpd_spec(name: str, port: int, root: str, **extra: Any) -> dict[str, Any]:
    spec = {"image": BUSYBOX, "name": name, "command": ["httpd", "-f", "-p", "8080", "-h", "/www"],
            "ports": [f"{port}:8080"], "volumes": [f"{root}:/www:ro"]}
    spec.update(extra)
    return spec


def job_keys(client, job_id: str) -> tuple[str, str]:
    """A job's record and events keys (under its host's prefix, as app.jobs.records names them)."""
    from app.jobs.records import HOST_INDEX, events_key, job_key

    host = client.hget(HOST_INDEX, job_id)
    return job_key(job_id, host), events_key(job_id, host)


def outcome(response) -> tuple[int, dict]:
    """The status and problem of a request, whether refused at once or by its job."""
    if response.status_code in (200, 202) and "state" in response.json():
        job = response.json()
        if job["state"] == "failed":
            return job["error"]["status"], job["error"]
        return 200, job
    return response.status_code, response.json()


def refused(response, rule: str, status: int = 403) -> dict:
    got, problem = outcome(response)
    assert got == status, problem
    assert problem.get("rule") == rule, problem
    return problem
