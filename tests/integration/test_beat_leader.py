"""Several beats may run: only the one holding the Redis lease sends scheduled tasks."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import redis

from app.ops.beat import Lease
from tests.integration.conftest import TEST_REDIS_URL
from tests.integration.helpers import eventually
from tests.support.stack import ROOT, VENV_BIN


def test_one_owner_holds_the_lease_and_another_takes_it_when_it_stops_renewing():
    client = redis.Redis.from_url(TEST_REDIS_URL, decode_responses=True)
    key = f"dyt:lease:{time.time_ns()}"
    first, second = Lease(client, key, seconds=1), Lease(client, key, seconds=1)
    assert first.hold() and first.hold()  # takes it, then renews it
    assert not second.hold()
    time.sleep(1.2)  # the first stops renewing: the lease runs out
    assert second.hold() and not first.hold()
    second.release()
    assert first.hold()
    first.release()
    assert client.get(key) is None


def test_of_two_beat_processes_one_leads_and_the_other_takes_over_when_it_dies(
        stack_env: dict[str, str], state_dir: Path):
    folder = state_dir / f"beats-{time.time_ns()}"
    folder.mkdir()
    beats = []
    for name in ("a", "b"):
        log = open(folder / f"beat-{name}.log", "ab")  # noqa: SIM115 (lives with the process)
        beats.append(subprocess.Popen(
            [str(VENV_BIN / "celery"), "-A", "app.celery_app:celery", "beat", "-s",
             str(folder / f"schedule-{name}"), "-l", "INFO"], cwd=ROOT, env=stack_env,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
    try:
        def leading() -> list[str]:
            return [name for name in ("a", "b")
                    if "beat: leading" in (folder / f"beat-{name}.log").read_text()]

        def standing_by() -> list[str]:
            return [name for name in ("a", "b")
                    if "beat: standing by" in (folder / f"beat-{name}.log").read_text()]

        first = eventually(lambda: len(leading()) == 1 and len(standing_by()) == 1 and leading(),
                           timeout=60)
        os.killpg(beats[("a", "b").index(first[0])].pid, signal.SIGKILL)
        started = time.monotonic()
        eventually(lambda: len(leading()) == 2, timeout=40)
        # The survivor took over once the lease ran out (15 s), not before.
        assert time.monotonic() - started < 40
    finally:
        for proc in beats:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(20)
