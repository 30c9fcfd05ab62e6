"""GET /hosts/{host}/events agrees with `docker events --since --until` on the same engine."""

from __future__ import annotations

import os
import subprocess
import time

from tests.integration.helpers import BUSYBOX


def docker(*args: str) -> str:
    done = subprocess.run(["docker", *args], env=os.environ, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_events_include_the_start_and_die_of_a_container_the_test_ran(viewer, unique, cleanup):
    since = f"{time.time() - 1:.3f}"
    cleanup.append(unique)
    docker("run", "--name", unique, "--label", f"dyt.case={unique}", BUSYBOX, "true")
    until = f"{time.time() + 1:.3f}"
    time.sleep(1.2)  # until must be in the past for the CLI to return
    answer = viewer.get("/hosts/local/events", params={
        "since": since, "until": until, "type": "container", "container": unique})
    assert answer.status_code == 200, answer.text
    events = answer.json()
    actions = [e["action"] for e in events]
    assert "start" in actions and "die" in actions
    assert actions.index("start") < actions.index("die")
    die = next(e for e in events if e["action"] == "die")
    assert die["actor"]["attributes"]["exitCode"] == "0"
    assert die["actor"]["attributes"]["name"] == unique
    cli = docker("events", "--since", since, "--until", until, "--filter", "type=container",
                 "--filter", f"container={unique}", "--format", "{{.Action}}").split()
    assert actions == cli
    by_label = viewer.get("/hosts/local/events", params={
        "since": since, "until": until, "label": f"dyt.case={unique}", "event": "die"}).json()
    assert [e["action"] for e in by_label] == ["die"]


def test_events_are_capped_by_limit_and_say_so(viewer, unique, cleanup):
    cleanup.append(unique)
    docker("run", "--name", unique, BUSYBOX, "true")
    answer = viewer.get("/hosts/local/events", params={"since": "1m", "container": unique,
                                                       "limit": 1})
    assert answer.status_code == 200
    assert len(answer.json()) == 1
    assert answer.headers.get("X-Dockyard-Truncated") == "true"


def test_events_window_is_bounded_and_times_are_checked(viewer):
    now = time.time()
    for params, field in (({"since": "yesterday"}, "since"),
                          ({"since": f"{now}", "until": f"{now - 60}"}, "since"),
                          ({"since": "48h"}, "since"),
                          ({"type": "spaceship"}, "type"),
                          ({"limit": 10_001}, "limit")):
        refused = viewer.get("/hosts/local/events", params=params)
        assert refused.status_code == 422, (params, refused.text)
        assert field in refused.json()["errors"]
    assert viewer.get("/hosts/local/events").status_code == 200
