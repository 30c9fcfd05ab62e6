"""`dockyard`: docker-CLI syntax over Dockyard's HTTP API (DOCKYARD_URL, DOCKYARD_TOKEN)."""

from __future__ import annotations

import importlib
import json
import os
import sys
from collections.abc import Iterator
from typing import Any, TextIO

import requests

from app.cli import terminal
from app.integrations.grammar import Command, GrammarError, describe_job, parse, render

USAGE_ERROR = 125  # what docker exits with when it cannot parse its command line
_FINAL = ("succeeded", "failed", "cancelled")
# The API's schema for a run spec, taken by import path (app/ never imports schemas/): a bad
# flag is then named before any request is sent, as chat does.
_RUN_SPEC_SCHEMA = ("schemas.containers", "ProvisionSpecSchema")


def _check_run_spec(spec: dict[str, Any]) -> Any:
    module, name = _RUN_SPEC_SCHEMA
    return getattr(importlib.import_module(module), name)().load(spec)


class Client:
    """A bearer-token session on one Dockyard API."""

    def __init__(self, url: str, token: str) -> None:
        self.base = url.rstrip("/") + "/api/v1"
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def send(self, command: Command) -> requests.Response:
        return self.session.request(command.method, self.base + command.path,
                                    params=command.query, json=command.body, timeout=120)

    def job(self, job_id: str) -> dict[str, Any]:
        response = self.session.get(f"{self.base}/jobs/{job_id}", timeout=30)
        response.raise_for_status()
        return response.json()

    def events(self, job_id: str) -> Iterator[tuple[str, str, dict[str, Any]]]:
        """The job's SSE events (id, type, data) until it ends, reconnecting with Last-Event-ID."""
        last_id = None
        for _ in range(20):
            headers = {"Last-Event-ID": last_id} if last_id else {}
            try:
                with self.session.get(f"{self.base}/jobs/{job_id}/events", headers=headers,
                                      stream=True, timeout=(10, 60)) as response:
                    response.raise_for_status()
                    for event_id, kind, data in _sse(response.iter_lines(decode_unicode=True)):
                        last_id = event_id or last_id
                        yield event_id, kind, data
                        if kind == "state" and data.get("state") in _FINAL:
                            return
                return
            except requests.ConnectionError:
                continue


def _sse(lines: Iterator[str]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    current: dict[str, str] = {}
    for line in lines:
        if not line:
            if "data" in current:
                try:
                    data = json.loads(current["data"])
                except ValueError:
                    data = {"message": current["data"]}
                yield current.get("id", ""), current.get("event", "message"), data
            current = {}
            continue
        field, _, value = line.partition(":")
        current[field] = value.removeprefix(" ")


def _progress_line(kind: str, data: dict[str, Any]) -> str | None:
    if kind == "progress":
        counted = f" {data['done']}/{data['total']} {data.get('unit') or ''}".rstrip() \
            if data.get("total") else ""
        return f"{data.get('message') or 'working'}{counted}"
    if kind == "log":
        return str(data.get("message", ""))
    if kind == "state":
        return f"state: {data.get('state')}"
    return None


def follow(client: Client, job: dict[str, Any], out: TextIO, err: TextIO) -> int:
    """Show a job's progress on stderr until it ends; its outcome on stdout. 0 if it succeeded."""
    print(f"job {job['id']} {job['kind']} queued", file=err)
    if job["state"] not in _FINAL:
        for _event_id, kind, data in client.events(job["id"]):
            line = _progress_line(kind, data)
            if line:
                print(line, file=err, flush=True)
    final = client.job(job["id"])
    result = final.get("result") or {}
    if final["state"] == "succeeded" and isinstance(result, dict) and result.get("id"):
        print(result["id"], file=out)  # like `docker run -d`: the container id
    else:
        print(describe_job(final), file=out if final["state"] == "succeeded" else err)
    return 0 if final["state"] == "succeeded" else 1


def _problem(response: requests.Response) -> str:
    try:
        problem = response.json()
    except ValueError:
        return f"HTTP {response.status_code}: {response.text[:200]}"
    text = problem.get("detail") or problem.get("title") or f"HTTP {response.status_code}"
    for field, errors in (problem.get("errors") or {}).items():
        text += f"\n  {field}: {errors}"
    return text


def main(argv: list[str] | None = None, out: TextIO | None = None,
         err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("exec", "attach"):
        # `exec [-i] [-t] [-u U] [-w D] [-e K=V] HOST CONTAINER CMD…`, `attach HOST CONTAINER`:
        # the local terminal on a session's WebSocket (app.cli.terminal), not a request and answer.
        client = Client(os.environ.get("DOCKYARD_URL", "http://127.0.0.1:8000"),
                        os.environ.get("DOCKYARD_TOKEN", ""))
        return terminal.run(client.session, client.base, argv)
    try:
        command = parse(argv, check_spec=_check_run_spec)
    except GrammarError as exc:
        print(f"dockyard: {exc}", file=err)
        return USAGE_ERROR
    if not command.method:
        print(command.text, file=out)
        return 0
    client = Client(os.environ.get("DOCKYARD_URL", "http://127.0.0.1:8000"),
                    os.environ.get("DOCKYARD_TOKEN", ""))
    try:
        response = client.send(command)
        if response.status_code >= 400:
            print(f"Error response from dockyard: {_problem(response)}", file=err)
            return 1
        payload = response.json() if "json" in response.headers.get("Content-Type", "") \
            else response.text
        if isinstance(payload, dict) and "kind" in payload and "links" in payload and \
                command.name not in ("job", "cancel"):
            return follow(client, payload, out, err)
        print(render(command, payload), file=out)
        return 0
    except requests.RequestException as exc:
        print(f"dockyard: cannot reach {client.base}: {type(exc).__name__}", file=err)
        return 1


if __name__ == "__main__":
    sys.exit(main())
