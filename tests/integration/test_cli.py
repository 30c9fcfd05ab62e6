"""The `dockyard` console script end to end: docker syntax over HTTP, job progress, exit codes."""

from __future__ import annotations

import subprocess

import requests

from tests.integration.helpers import BUSYBOX, free_port
from tests.support.stack import VENV_BIN


def dockyard(stack, api, *args: str) -> subprocess.CompletedProcess:
    token = api.session.headers["Authorization"].removeprefix("Bearer ")
    return subprocess.run([str(VENV_BIN / "dockyard"), *args], capture_output=True, text=True,
                          timeout=120, env={"DOCKYARD_URL": stack.url, "DOCKYARD_TOKEN": token,
                                            "PATH": "/usr/bin:/bin"})


def test_cli_runs_lists_and_reads_logs(stack, operator, engine, bind_root, unique, cleanup):
    cleanup.append(unique)
    www = bind_root / unique
    www.mkdir()
    (www / "index.html").write_text("from the cli\n")
    port = free_port()
    run = dockyard(stack, operator, "run", "local", "-d", "-p", f"{port}:8080", "-v",
                   f"{www}:/www:ro", "--name", unique, BUSYBOX, "sh", "-c",
                   "echo one; echo two; exec httpd -f -p 8080 -h /www")
    assert run.returncode == 0, run.stderr
    container = engine.containers.get(unique)
    assert run.stdout.strip() == container.id
    assert "state: succeeded" in run.stderr and "queued" in run.stderr  # progress from SSE
    assert requests.get(f"http://127.0.0.1:{port}/index.html", timeout=5).text == "from the cli\n"
    ps = dockyard(stack, operator, "ps", "local", "-a")
    assert ps.returncode == 0
    line = next(row for row in ps.stdout.splitlines() if row.endswith(unique))
    assert container.id[:12] in line and f"0.0.0.0:{port}->8080/tcp" in line
    logs = dockyard(stack, operator, "logs", "local", unique, "--tail", "1")
    assert logs.returncode == 0 and logs.stdout.strip() == "two"
    stop = dockyard(stack, operator, "stop", "local", unique)
    assert stop.returncode == 0, stop.stderr
    engine_state = engine.containers.get(unique).status
    assert engine_state == "exited"


def test_cli_failed_job_exits_non_zero(stack, operator, unique):
    run = dockyard(stack, operator, "run", "local", "--name", unique,
                   "dockyard-test/no-such-image:0", "true")
    assert run.returncode == 1
    assert "failed" in run.stderr


def test_cli_usage_errors_exit_125_like_docker(stack, operator):
    result = dockyard(stack, operator, "run", "local", "--nope", BUSYBOX)
    assert result.returncode == 125
    assert "unknown flag: --nope" in result.stderr


def test_cli_api_errors_are_reported(stack, viewer, unique):
    result = dockyard(stack, viewer, "run", "local", "--name", unique, BUSYBOX, "true")
    assert result.returncode == 1
    assert result.stderr.startswith("Error response from dockyard:") and "operator" in result.stderr


def test_cli_shows_a_job(stack, operator, unique, cleanup):
    cleanup.append(unique)
    job = operator.post("/hosts/local/containers", params={"wait": 30},
                        json={"image": BUSYBOX, "name": unique, "command": ["sleep", "60"]}).json()
    shown = dockyard(stack, operator, "job", job["id"])
    assert shown.returncode == 0
    assert shown.stdout.startswith(f"job {job['id']} containers.provision {unique} on local: "
                                   "succeeded")

