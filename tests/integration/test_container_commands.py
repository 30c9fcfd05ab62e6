"""exec, top, stats, diff, port, wait, rename, update, prune and bulk rm agree with the docker CLI."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from tests.integration.helpers import BUSYBOX, eventually, free_port

BASE = "/hosts/local/containers"


def docker(*args: str, check: bool = True) -> str:
    """The docker CLI against the test engine (DOCKER_HOST from the environment)."""
    done = subprocess.run(["docker", *args], env=os.environ, capture_output=True, text=True,
                          timeout=60, check=False)
    if check:
        assert done.returncode == 0, done.stderr
    return done.stdout


def provision(api, name: str, case: str, **extra) -> dict:
    spec = {"image": BUSYBOX, "name": name, "labels": {"dyt.case": case},
            "command": ["sh", "-c", "exec sleep 300"], **extra}
    job = api.post(BASE, params={"wait": 60}, json=spec).json()
    assert job["state"] == "succeeded", job
    return job["result"]


def run_job(api, method: str, path: str, **kwargs) -> dict:
    response = api.request(method, BASE + path, params={"wait": 60, **kwargs.pop("params", {})},
                           **kwargs)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture
def running(operator, unique, cleanup):
    cleanup.append(unique)
    return provision(operator, unique, unique)


# -- exec ---------------------------------------------------------------------------------

def test_exec_answers_exit_code_and_output_of_both_streams(operator, running, unique):
    job = run_job(operator, "POST", f"/{unique}/exec",
                  json={"cmd": ["sh", "-c", "echo out1; echo out2; echo err >&2; exit 3"]})
    assert job["state"] == "succeeded", job
    result = job["result"]
    assert (result["exit_code"], result["truncated"]) == (3, False)
    # The engine reads stdout and stderr through separate pipes, so, as with `docker exec`,
    # only the order within one stream is certain.
    lines = result["output"].splitlines()
    assert sorted(lines) == ["err", "out1", "out2"]
    assert lines.index("out1") < lines.index("out2")


def test_exec_honours_env_workdir_and_user(operator, running, unique):
    job = run_job(operator, "POST", f"/{unique}/exec", json={
        "cmd": "sh -c 'echo $GREETING; pwd; id -u'", "env": {"GREETING": "hello"},
        "workdir": "/etc", "user": "1234"})
    assert job["result"]["output"] == "hello\n/etc\n1234\n"
    assert job["result"]["exit_code"] == 0


def test_exec_output_is_bounded_to_one_mebibyte(operator, running, unique):
    job = run_job(operator, "POST", f"/{unique}/exec",
                  json={"cmd": ["sh", "-c", "yes | head -c 3000000"]})
    result = job["result"]
    assert result["truncated"] is True and len(result["output"]) == 1 << 20
    assert result["output"].startswith("y\ny\n") and result["exit_code"] == 0


def test_exec_timeout_fails_504_and_kills_the_command(operator, running, unique):
    job = run_job(operator, "POST", f"/{unique}/exec",
                  json={"cmd": ["sh", "-c", "echo started; exec sleep 777"], "timeout": 1.5})
    assert job["state"] == "failed"
    assert job["error"]["status"] == 504 and job["error"]["detail"].endswith("it was killed")
    eventually(lambda: "sleep 777" not in docker("top", unique), timeout=10)


def test_cancelling_an_exec_kills_the_command(operator, running, unique):
    started = operator.post(f"{BASE}/{unique}/exec",
                            json={"cmd": ["sleep", "888"], "timeout": 120}).json()
    eventually(lambda: "sleep 888" in docker("top", unique))
    assert operator.post(f"/jobs/{started['id']}/cancel").status_code in (200, 202)
    assert operator.wait_job(started["id"])["state"] == "cancelled"
    eventually(lambda: "sleep 888" not in docker("top", unique), timeout=10)


def test_exec_replayed_with_an_idempotency_key_runs_once(operator, running, unique):
    headers = {"Idempotency-Key": f"exec-{unique}"}
    body = {"cmd": ["sh", "-c", "echo ran >> /count; cat /count"]}
    first = run_job(operator, "POST", f"/{unique}/exec", json=body, headers=headers)
    again = run_job(operator, "POST", f"/{unique}/exec", json=body, headers=headers)
    assert again["id"] == first["id"] and again["result"]["output"] == "ran\n"
    check = run_job(operator, "POST", f"/{unique}/exec", json={"cmd": ["cat", "/count"]})
    assert check["result"]["output"] == "ran\n"


def test_exec_refusals_are_problems(operator, viewer, unique, cleanup, running):
    stopped = f"{unique}-stopped"
    cleanup.append(stopped)
    provision(operator, stopped, unique, start=False)
    refused = operator.post(f"{BASE}/{stopped}/exec", json={"cmd": ["true"]})
    assert refused.status_code == 409, refused.text
    assert refused.headers["Content-Type"] == "application/problem+json"
    assert operator.post(f"{BASE}/no-such-container-xyz/exec",
                         json={"cmd": ["true"]}).status_code == 404
    privileged = operator.post(f"{BASE}/{unique}/exec", json={"cmd": ["true"], "privileged": True})
    assert privileged.status_code == 403 and privileged.json()["rule"] == "no-privileged"
    assert viewer.post(f"{BASE}/{unique}/exec", json={"cmd": ["true"]}).status_code == 403
    unknown = operator.post(f"{BASE}/{unique}/exec", json={"cmd": ["true"], "detach": True})
    assert unknown.status_code == 422 and "detach" in unknown.json()["errors"]


def test_interactive_exec_job_is_refused_pointing_to_sessions(operator, running, unique):
    for field, body in (("tty", {"cmd": ["sh"], "tty": True}),
                        ("interactive", {"cmd": ["sh"], "interactive": True})):
        answer = operator.post(f"{BASE}/{unique}/exec", json=body)
        assert answer.status_code == 422 and field in answer.json()["errors"]
        assert "/sessions" in answer.json()["detail"]
    assert operator.get(f"{BASE}/{unique}/attach").status_code in (404, 405)


# -- top / stats / diff / port ------------------------------------------------------------

def cli_table(text: str) -> tuple[list[str], list[list[str]]]:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[0].split(), [line.split() for line in lines[1:]]


def test_top_lists_the_same_pids_as_docker_top(operator, viewer, running, unique):
    run_job(operator, "POST", f"/{unique}/exec", json={"cmd": ["sh", "-c", "sleep 120 &"]})
    top = viewer.get(f"{BASE}/{unique}/top").json()
    pid = top["titles"].index("PID")
    titles, rows = cli_table(docker("top", unique))
    cli_pids = {row[titles.index("PID")] for row in rows}
    assert {row[pid] for row in top["processes"]} == cli_pids and len(cli_pids) == 2
    custom = viewer.get(f"{BASE}/{unique}/top", params={"ps_args": "-o pid,comm"}).json()
    assert custom["titles"] == ["PID", "COMMAND"]
    assert {row[0] for row in custom["processes"]} == cli_pids
    bad = viewer.get(f"{BASE}/{unique}/top", params={"ps_args": "-o pid; rm -rf /"})
    assert bad.status_code == 422


def test_top_of_a_stopped_container_is_409(operator, viewer, unique, cleanup):
    cleanup.append(unique)
    provision(operator, unique, unique, start=False)
    assert viewer.get(f"{BASE}/{unique}/top").status_code == 409


def test_stats_sample_matches_docker_stats_no_stream(operator, viewer, unique, cleanup):
    cleanup.append(unique)
    provision(operator, unique, unique, memory="64m")
    stats = viewer.get(f"{BASE}/{unique}/stats")
    assert stats.status_code == 200, stats.text
    sample = stats.json()
    assert sample["memory"]["limit"] == 64 << 20
    assert 0 < sample["memory"]["usage"] < 64 << 20
    assert sample["cpu_percent"] >= 0 and sample["online_cpus"] >= 1
    cli = docker("stats", "--no-stream", "--format", "{{.MemUsage}}|{{.PIDs}}", unique).strip()
    mem_usage, pids = cli.split("|")
    assert mem_usage.endswith("/ 64MiB")
    assert sample["pids"] == int(pids) == 1
    assert set(sample["network"]) == {"rx_bytes", "tx_bytes"}


def test_changes_list_the_file_the_test_created_like_docker_diff(operator, viewer, running,
                                                                 unique):
    run_job(operator, "POST", f"/{unique}/exec",
            json={"cmd": ["sh", "-c", "echo x > /created.txt; mkdir /made; rm /bin/yes"]})
    changes = viewer.get(f"{BASE}/{unique}/changes").json()
    assert {"path": "/created.txt", "kind": "A"} in changes
    assert {"path": "/bin/yes", "kind": "D"} in changes
    cli = {tuple(line.split(" ", 1)[::-1]) for line in docker("diff", unique).splitlines()}
    assert {(c["path"], c["kind"]) for c in changes} == cli


def test_port_equals_docker_port(operator, viewer, unique, cleanup):
    cleanup.append(unique)
    fixed = free_port()
    provision(operator, unique, unique, ports=[f"{fixed}:8080", "9090/udp", "7070"],
              publish_all=False)
    answer = viewer.get(f"{BASE}/{unique}/port").json()
    ours = set()
    for port in answer:
        ip = port["host_ip"]
        address = f"[{ip}]" if ":" in ip else ip
        ours.add(f"{port['container_port']}/{port['protocol']} -> {address}:{port['host_port']}")
    assert ours == set(docker("port", unique).splitlines())
    assert any(p["host_port"] == fixed and p["container_port"] == 8080 for p in answer)
    one = viewer.get(f"{BASE}/{unique}/port", params={"port": "9090/udp"}).json()
    cli_one = docker("port", unique, "9090/udp").split()
    assert sorted(f"{p['host_ip']}:{p['host_port']}".replace("::", "[::]") for p in one) == \
        sorted(cli_one)
    assert viewer.get(f"{BASE}/{unique}/port", params={"port": "http"}).status_code == 422


# -- wait / rename / update ---------------------------------------------------------------

def test_wait_returns_the_exit_code(operator, unique, cleanup):
    cleanup.append(unique)
    provision(operator, unique, unique, command=["sh", "-c", "sleep 1; exit 7"], wait_for="none")
    job = run_job(operator, "POST", f"/{unique}/wait", json={"condition": "not-running"})
    assert job["state"] == "succeeded", job
    assert job["result"]["status_code"] == 7
    assert docker("inspect", "-f", "{{.State.ExitCode}}", unique).strip() == "7"


def test_wait_next_exit_answers_when_the_container_is_killed(operator, running, unique):
    waiting = operator.post(f"{BASE}/{unique}/wait", json={"condition": "next-exit"}).json()
    eventually(lambda: operator.get(f"/jobs/{waiting['id']}").json()["state"] == "running")
    time.sleep(0.5)  # the job runs; give its engine call a moment to be registered
    run_job(operator, "POST", f"/{unique}/kill", json={"signal": "KILL"})
    finished = operator.wait_job(waiting["id"])
    assert finished["state"] == "succeeded", finished
    assert finished["result"]["status_code"] == 137


def test_wait_gives_up_with_504_after_its_timeout(operator, running, unique):
    job = run_job(operator, "POST", f"/{unique}/wait", json={"timeout": 1})
    assert job["state"] == "failed" and job["error"]["status"] == 504, job
    assert docker("inspect", "-f", "{{.State.Running}}", unique).strip() == "true"
    bad = operator.post(f"{BASE}/{unique}/wait", json={"condition": "healthy"})
    assert bad.status_code == 422


def test_rename_is_visible_in_docker_ps_and_refuses_a_taken_name(operator, running, unique,
                                                                 cleanup):
    new = f"{unique}-renamed"
    cleanup.append(new)
    job = run_job(operator, "POST", f"/{unique}/rename", json={"name": new})
    assert job["state"] == "succeeded", job
    assert docker("ps", "--filter", f"id={running['id']}", "--format", "{{.Names}}").strip() == new
    other = f"{unique}-other"
    cleanup.append(other)
    provision(operator, other, unique)
    taken = operator.post(f"{BASE}/{new}/rename", json={"name": other})
    assert taken.status_code == 409
    assert operator.post(f"{BASE}/{new}/rename", json={"name": "bad name"}).status_code == 422


def test_update_is_visible_in_docker_inspect(operator, unique, cleanup):
    cleanup.append(unique)
    provision(operator, unique, unique, memory="64m")
    job = run_job(operator, "POST", f"/{unique}/update", json={
        "memory": "96m", "cpus": 0.5,
        "restart_policy": {"name": "on-failure", "maximum_retry_count": 2}})
    assert job["state"] == "succeeded", job
    assert job["result"]["memory"] == 96 << 20 and job["result"]["cpus"] == 0.5
    shown = docker("inspect", "-f", "{{.HostConfig.Memory}} {{.HostConfig.NanoCpus}} "
                   "{{.HostConfig.RestartPolicy.Name}} {{.HostConfig.RestartPolicy.MaximumRetryCount}}",
                   unique).split()
    assert shown == [str(96 << 20), "500000000", "on-failure", "2"]
    for bad in ({}, {"memory": "lots"}, {"cpus": -1}, {"memory": "96m", "swap": "1g"}):
        assert operator.post(f"{BASE}/{unique}/update", json=bad).status_code == 422, bad


# -- prune and bulk removal (always filtered by this test's own label) -----------------------

def names_with_case(case: str) -> set[str]:
    return set(docker("ps", "-a", "--filter", f"label=dyt.case={case}",
                      "--format", "{{.Names}}").split())


def unmanaged(name: str, case: str, cleanup: list[str], *cmd: str) -> None:
    cleanup.append(name)
    docker("run", "-d", "--name", name, "--label", f"dyt.case={case}", BUSYBOX,
           *(cmd or ("true",)))


def test_prune_removes_only_stopped_managed_containers_matching_the_filter(
        operator, admin, unique, cleanup):
    for suffix in ("a", "b"):
        cleanup.append(f"{unique}-{suffix}")
        provision(operator, f"{unique}-{suffix}", unique, start=False)
    cleanup.append(f"{unique}-up")
    provision(operator, f"{unique}-up", unique)
    unmanaged(f"{unique}-cli", unique, cleanup)
    eventually(lambda: docker("inspect", "-f", "{{.State.Status}}", f"{unique}-cli").strip()
               == "exited")
    job = run_job(operator, "POST", "/prune", json={"filters": {"label": [f"dyt.case={unique}"]}})
    assert job["state"] == "succeeded", job
    assert len(job["result"]["deleted"]) == 2
    assert names_with_case(unique) == {f"{unique}-up", f"{unique}-cli"}
    refused = operator.post(f"{BASE}/prune", json={"filters": {"label": f"dyt.case={unique}"},
                                                   "managed_only": False})
    assert refused.status_code == 403
    cli_id = docker("inspect", "-f", "{{.Id}}", f"{unique}-cli").strip()
    job = run_job(admin, "POST", "/prune", json={"filters": {"label": f"dyt.case={unique}"},
                                                  "managed_only": False})
    assert job["result"]["deleted"] == [cli_id]
    assert names_with_case(unique) == {f"{unique}-up"}


def test_bulk_delete_removes_only_matches_and_reports_each_container(operator, admin, unique,
                                                                     cleanup):
    for suffix in ("a", "b"):
        cleanup.append(f"{unique}-{suffix}")
        provision(operator, f"{unique}-{suffix}", unique)
    unmanaged(f"{unique}-cli", unique, cleanup, "sleep", "300")
    label = {"label": f"dyt.case={unique}"}
    unforced = run_job(operator, "DELETE", "", params=label)
    outcomes = {c["name"]: c for c in unforced["result"]["containers"]}
    assert outcomes[f"{unique}-a"]["outcome"] == "failed"
    assert outcomes[f"{unique}-a"]["status"] == 409
    assert outcomes[f"{unique}-cli"]["outcome"] == "skipped"
    forced = run_job(operator, "DELETE", "", params={**label, "force": "true"})["result"]
    assert (forced["matched"], forced["removed"], forced["skipped"]) == (3, 2, 1)
    assert names_with_case(unique) == {f"{unique}-cli"}
    assert operator.delete(BASE, params={**label, "managed_only": "false"}).status_code == 403
    by_admin = run_job(admin, "DELETE", "", params={**label, "managed_only": "false",
                                                     "force": "true"})["result"]
    assert by_admin["removed"] == 1 and names_with_case(unique) == set()


def test_unfiltered_bulk_delete_is_refused(operator):
    for params in ({}, {"force": "true"}, {"managed_only": "false", "force": "true"}):
        refused = operator.delete(BASE, params=params)
        assert refused.status_code == 422, refused.text
        assert "all" in refused.json()["errors"]
