"""Several beats may run: only the one holding the Redis lease sends scheduled tasks."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import redis

from app.ops.beat import LEASE_KEY, Lease
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


def test_a_beat_embedded_in_a_worker_leads_and_stops_with_it_releasing_the_lease(
        stack_env: dict[str, str], state_dir: Path):
    # `make run` runs beat inside the ops worker (`celery worker -B`, scripts/processes.sh).
    # This worker consumes a queue of its own, so it takes none of the suite's jobs.
    client = redis.Redis.from_url(TEST_REDIS_URL, decode_responses=True)
    folder = state_dir / f"embedded-beat-{time.time_ns()}"
    folder.mkdir()
    log_path = folder / "worker.log"
    log = open(log_path, "ab")  # noqa: SIM115 (lives with the process)
    worker = subprocess.Popen(
        [str(VENV_BIN / "celery"), "-A", "app.celery_app:celery", "worker", "-Q",
         f"dyt.embedded-beat.{time.time_ns()}", "-n", f"embedded-beat.{time.time_ns()}@%h",
         "-P", "prefork", "-c", "1", "-B", "-s", str(folder / "schedule"), "-l", "INFO"],
        cwd=ROOT, env=stack_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # The lease may still be held by a beat of an earlier test until it expires (15 s).
        # "ready." once every step started: the pool process exists as well as beat.
        eventually(lambda: "beat: leading" in (text := log_path.read_text())
                   and " ready." in text, timeout=60)
        owner = client.get(LEASE_KEY)
        assert owner is not None
        children = [int(pid) for pid in subprocess.run(
            ["pgrep", "-P", str(worker.pid)], capture_output=True, text=True,
            check=False).stdout.split()]  # its pool process and its beat
        assert len(children) >= 2, children

        os.kill(worker.pid, signal.SIGKILL)  # the worker alone: nothing stops its children
        worker.wait(10)

        def ended(pid: int) -> bool:  # gone, or a zombie its new parent has not reaped yet
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                return True
            return stat.rsplit(")", 1)[1].split()[0] == "Z"

        # The orphaned beat notices at its next tick (≤ 5 s), releases the lease and exits.
        eventually(lambda: all(ended(pid) for pid in children), timeout=30)
        assert "the worker it was embedded in is gone" in log_path.read_text()
        assert client.get(LEASE_KEY) != owner
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(10)
