"""What the benchmarks share: settings from the environment, quiet-machine checks, statistics
and markdown tables.

Every benchmark talks only to loopback addresses: the API on 127.0.0.1, Redis on 127.0.0.1
and the engine through its unix socket.
"""

from __future__ import annotations

import math
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
API_URL = os.environ.get("DOCKYARD_BENCH_API", "http://127.0.0.1:8000")
TEST_IMAGE = os.environ.get("DOCKYARD_BENCH_IMAGE", "dockyard-test/busybox:latest")
# Not under dockyard.*: those labels are reserved for Dockyard itself (policy rule reserved-labels).
BENCH_LABEL = "bench.dockyard"
# A regex that matches "bin/pytest" but not its own text: two pgreps running at once (the
# overlap monitor's thread and a direct check) would otherwise each find the other.
PYTEST_PATTERN = "[b]in/pytest"


def admin_token() -> str:
    token = os.environ.get("DOCKYARD_ADMIN_TOKEN", "")
    if not token:
        sys.exit("DOCKYARD_ADMIN_TOKEN is not set: `source .state/run/env` first")
    return token


def docker_host() -> str:
    url = os.environ.get("DOCKER_HOST") or os.environ.get("DOCKYARD_LOCAL_ENGINE", "")
    if not url:
        sys.exit("DOCKER_HOST is not set: `source .state/run/env` first")
    return url


def assert_loopback(url: str) -> None:
    """Refuse to send load anywhere but this machine."""
    from urllib.parse import urlsplit

    host = urlsplit(url).hostname or ""
    if host not in ("127.0.0.1", "localhost", "::1") and not host.startswith("127."):
        sys.exit(f"refusing to benchmark {url}: only loopback targets are allowed")


# -- the other engineer's test suite shares the engine and the 2 cores ---------------------

def pytest_running() -> bool:
    found = subprocess.run(["pgrep", "-f", PYTEST_PATTERN], capture_output=True, check=False)
    return found.returncode == 0


QUIET_LIMIT = float(os.environ.get("DOCKYARD_BENCH_QUIET_LIMIT", "1800"))


def wait_quiet(limit: float | None = None, poll: float = 2.0) -> bool:
    """Block until no pytest process runs; False if it still runs after ``limit`` seconds.

    The default limit is ``DOCKYARD_BENCH_QUIET_LIMIT`` (1800 s): on a machine where other
    suites run all the time, a lower one lets the run finish, its overlaps reported.
    """
    deadline = time.monotonic() + (QUIET_LIMIT if limit is None else limit)
    announced = False
    while pytest_running():
        if not announced:
            print("  (waiting: a pytest run is in progress on this machine)", file=sys.stderr, flush=True)
            announced = True
        if time.monotonic() >= deadline:
            print("  (gave up waiting for pytest; this run will be marked as overlapped)",
                  file=sys.stderr, flush=True)
            return False
        time.sleep(poll)
    # Let the engine settle after the suite's clean-up.
    if announced:
        time.sleep(5)
    return True


class OverlapMonitor:
    """Polls for pytest processes while a timed run goes on and remembers if it saw one.

    ``reset()`` at the start of each timed section; ``seen`` then tells whether a pytest
    process ran at any poll since.
    """

    def __init__(self, poll: float = 1.0) -> None:
        self.poll = poll
        self.seen = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="overlap-monitor")

    def _run(self) -> None:
        while not self._stop.is_set():
            if pytest_running():
                self.seen = True
            self._stop.wait(self.poll)

    def reset(self) -> None:
        self.seen = pytest_running()

    def __enter__(self) -> OverlapMonitor:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


# -- statistics ------------------------------------------------------------------------------

def percentile(values: Sequence[float], pct: float) -> float:
    """Linear interpolation between closest ranks (numpy's default, 'linear')."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100.0
    low = math.floor(rank)
    high = math.ceil(rank)
    if low == high:
        return ordered[low]
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass
class Samples:
    """Latencies of one method, in seconds."""

    name: str
    values: list[float] = field(default_factory=list)

    def add(self, seconds: float) -> None:
        self.values.append(seconds)

    @property
    def median(self) -> float:
        return percentile(self.values, 50)

    def pct(self, pct: float) -> float:
        return percentile(self.values, pct)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines.extend("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows)
    return "\n".join(lines)


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def machine_summary() -> str:
    """One line about where the numbers come from."""
    mem_kb = 0
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    mem_kb = int(line.split()[1])
    except OSError:
        pass
    engine = "?"
    if shutil.which("docker"):
        out = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"],
                             capture_output=True, text=True, check=False)
        engine = out.stdout.strip() or "?"
    return (f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, nproc {os.cpu_count()}, "
            f"{mem_kb / 1048576:.1f} GiB RAM, dockerd {engine}, Python {platform.python_version()}")


# -- Redis clean-up of what a benchmark made through the API ---------------------------------

def redis_password() -> str:
    """The stack's Redis password (``DOCKYARD_REDIS_PASSWORD`` or its ``_FILE``), or ''."""
    from app.core.config import secret_from_env

    return secret_from_env("DOCKYARD_REDIS_PASSWORD")


def with_redis_password(url: str) -> str:
    """``url`` with the stack's Redis password added, as Dockyard's own processes add it."""
    from app.core.config import _with_password

    password = redis_password()
    return _with_password(url, password) if password else url


def redis_client():
    import redis

    return redis.Redis.from_url(with_redis_password(
        os.environ.get("DOCKYARD_REDIS_URL", "redis://127.0.0.1:6379/0")), decode_responses=True)


def forget_jobs(job_ids: Iterable[str]) -> int:
    """Delete job records (hash, event stream, index entries) that a benchmark created.

    A record lives under its host's prefix (``app.jobs.records.job_key``), found through
    the host index the job script writes.
    """
    from app.jobs.records import _INDEX, HOST_INDEX, events_key, job_key

    ids = list(job_ids)
    client = redis_client()
    for start in range(0, len(ids), 1000):
        chunk = ids[start:start + 1000]
        hosts = client.hmget(HOST_INDEX, chunk)
        pipe = client.pipeline(transaction=False)
        for job_id, host in zip(chunk, hosts, strict=True):
            pipe.delete(job_key(job_id, host or None), events_key(job_id, host or None))
        pipe.zrem(_INDEX, *chunk)
        pipe.hdel(HOST_INDEX, *chunk)
        pipe.execute()
    return len(ids)


@dataclass
class RoundLog:
    kept: int = 0
    discarded: int = 0
    polluted_kept: int = 0


def interleaved_rounds(rounds: int, keys: Sequence[str], one: Callable[[str, int], float],
                       samples: dict[str, Samples], max_discards: int | None = None) -> RoundLog:
    """Run ``rounds`` rounds, each timing every key once, in an order rotated per round.

    A round during which a pytest process ran is discarded and run again (at most
    ``max_discards`` times in all, default ``rounds``); after that, overlapped rounds are
    kept and counted in ``polluted_kept``.
    """
    log = RoundLog()
    budget = rounds if max_discards is None else max_discards
    keys = list(keys)
    attempt = 0
    with OverlapMonitor() as monitor:
        while log.kept < rounds:
            quiet = wait_quiet()
            monitor.reset()
            shift = attempt % len(keys)
            got = {key: one(key, attempt) for key in keys[shift:] + keys[:shift]}
            attempt += 1
            overlapped = not quiet or monitor.seen or pytest_running()
            if overlapped and log.discarded < budget:
                log.discarded += 1
                print("  round discarded: pytest ran during it", file=sys.stderr, flush=True)
                continue
            log.polluted_kept += overlapped
            for key, seconds in got.items():
                samples[key].add(seconds)
            log.kept += 1
            print(f"  round {log.kept}/{rounds}: " + ", ".join(
                f"{key} {ms(got[key])} ms" for key in keys), file=sys.stderr, flush=True)
    return log


def overlap_note(log: RoundLog) -> str:
    text = f"Rounds discarded because pytest ran during them: {log.discarded}"
    if log.polluted_kept:
        text += f"; rounds kept although pytest ran: {log.polluted_kept} (polluted)"
    return text + "."


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so ``finally`` clean-up runs when the runner is stopped."""
    import signal

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


def forget_audit(since: float, needles: Sequence[str]) -> int:
    """Delete the audit entries a benchmark caused: those written since ``since`` (epoch
    seconds) whose entry contains one of ``needles`` (the sink host's name, the bench label).
    Entries of anyone else are left alone."""
    client = redis_client()
    start = f"{int(since * 1000)}-0"
    removed = 0
    while True:
        batch = client.xrange("dy:audit", min=start, max="+", count=5000)
        if not batch:
            return removed
        mine = [entry_id for entry_id, fields in batch
                if any(needle in fields.get("entry", "") for needle in needles)]
        if mine:
            removed += client.xdel("dy:audit", *mine)
        last_ms, _, last_seq = batch[-1][0].partition("-")
        start = f"{last_ms}-{int(last_seq) + 1}"
