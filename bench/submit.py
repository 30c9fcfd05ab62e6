"""Job submission throughput and acceptance latency: Dockyard vs a bare reference endpoint.

(a) Dockyard: ``POST /api/v1/hosts/bench-sink/containers/x/start`` (a cheap job, no
    Idempotency-Key) on a host registered only for this benchmark with route "agent", so
    its jobs go to ``host.bench-sink.ops``, which no worker consumes: the engine is never
    touched. The API refuses to enqueue on a lane without a live worker, so a fake
    heartbeat is written into ``dy:lane:host.bench-sink.ops`` for the run and removed after.
(b) The reference: bench/reference_app.py (Flask + one Redis write + Celery send_task),
    served by gunicorn with Dockyard's gunicorn.conf.py and the running API's worker and
    thread counts, on another loopback port.

Closed loop: 32 clients for 30 s (hey -c 32 -z 30s). Open loop: a constant 500 req/s for
25 s, with bench/loadgen.py (requests evenly spaced on a clock, latency from the scheduled
send) and with hey (-c 10 -q 50: 10 workers each ticking at 50/s; the workers tick in step,
so hey offers bursts of 10 every 20 ms, and measures latency from the actual send).
Between runs and at the end the queues are deleted and every job record the run made is
removed; the host, the fake heartbeat and the reference server go too.

    python -m bench.submit [--duration 30] [--clients 32] [--rate 500] [--open-duration 25]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import functools
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import requests

from bench.common import (
    API_URL,
    ROOT,
    OverlapMonitor,
    admin_token,
    assert_loopback,
    docker_host,
    exit_on_sigterm,
    forget_audit,
    forget_jobs,
    machine_summary,
    percentile,
    pytest_running,
    redis_client,
    table,
    verdict,
    wait_quiet,
)
from bench.figures import record
from bench.loadgen import LoadResult, closed_loop, open_loop

SINK = os.environ.get("DOCKYARD_BENCH_SINK", "bench-sink")
SINK_QUEUES = (f"host.{SINK}.ops", f"host.{SINK}.query")
FAKE_WORKER = "bench-fake-heartbeat"
REF_QUEUE = "bench.reference"
REF_KEY_PREFIX = "bench:ref:"
PROC_DIR = Path(os.environ.get("PROC_DIR") or ROOT / ".state" / "run")
# kombu's Redis transport keeps a queue's messages in a list named after the queue (plus
# one list per priority step) and its exchange binding in a set.
KOMBU_PRIORITY_SEP = "\x06\x16"


def queue_keys(queue: str) -> list[str]:
    return [queue, *(f"{queue}{KOMBU_PRIORITY_SEP}{step}" for step in (3, 6, 9)),
            f"_kombu.binding.{queue}"]


# -- CPU accounting from /proc, so a result says where the time went ------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime
    return total


def own_cpu_seconds() -> float:
    """CPU of this process and its waited-for children (hey; also the pgrep polls, ~1 ms/s)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def machine_busy_seconds() -> float:
    with open("/proc/stat") as handle:
        parts = [int(v) for v in handle.readline().split()[1:]]
    idle = parts[3] + parts[4]  # idle + iowait
    return (sum(parts[:8]) - idle) / _TICK


def children(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return [int(p) for p in found.stdout.split()]


def api_master_pid() -> int | None:
    try:
        pid = int((PROC_DIR / "api.pid").read_text().strip())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def process_env(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(): v.decode(errors="replace") for k, v in pairs}


# -- the sink host, its fake heartbeat and clean-up ------------------------------------------

class Sink:
    def __init__(self, http: requests.Session, api_url: str = API_URL) -> None:
        self.http = http
        self.api_url = api_url
        self.redis = redis_client()
        self.started = time.time()

    def setup(self) -> None:
        self.started = time.time()
        body = {"name": SINK, "url": docker_host(), "route": "agent",
                "labels": {"purpose": "benchmark"}}
        reply = self.http.post(f"{self.api_url}/api/v1/hosts", json=body, timeout=10)
        if reply.status_code == 409:  # left over from an interrupted run
            self.http.delete(f"{self.api_url}/api/v1/hosts/{SINK}", timeout=10)
            reply = self.http.post(f"{self.api_url}/api/v1/hosts", json=body, timeout=10)
        if reply.status_code != 201:
            raise RuntimeError(f"could not register {SINK}: {reply.status_code} {reply.text[:300]}")
        self.redis.zadd(f"dy:lane:{SINK_QUEUES[0]}", {FAKE_WORKER: time.time() + 3600})

    def drain(self) -> int:
        """Delete the sink's queued messages and the job records behind them."""
        job_ids = []
        for raw in self.redis.lrange(SINK_QUEUES[0], 0, -1):
            with contextlib.suppress(ValueError, KeyError, TypeError):
                job_ids.append(json.loads(raw)["headers"]["id"])
        self.redis.delete(*queue_keys(SINK_QUEUES[0]))
        forget_jobs(job_ids)
        return len(job_ids)

    def teardown(self) -> None:
        self.redis.zrem(f"dy:lane:{SINK_QUEUES[0]}", FAKE_WORKER)
        self.drain()
        for queue in SINK_QUEUES:
            self.redis.delete(*queue_keys(queue))
        try:
            reply = self.http.delete(f"{self.api_url}/api/v1/hosts/{SINK}", timeout=10)
            gone = reply.status_code in (204, 404)
        except requests.RequestException:
            gone = False
        if not gone:  # the API went away (restarted by someone): forget the host directly
            self.redis.hdel("dy:hosts", SINK)
            self.redis.hdel("dy:hosts:status", SINK)
        # Belt and braces: any record of the sink host not found through the queue.
        from app.jobs.records import HOST_INDEX

        stray = [job_id for job_id, host in self.redis.hscan_iter(HOST_INDEX, count=5000)
                 if host == SINK]
        if stray:
            forget_jobs(stray)
            print(f"removed {len(stray)} stray {SINK} job record(s)", file=sys.stderr)
        # The audit log records every submission; the benchmark's entries go with it.
        removed = forget_audit(self.started - 5, [f'"{SINK}"', f"/hosts/{SINK}"])
        if removed:
            print(f"removed {removed} audit entries of {SINK}", file=sys.stderr)


# -- the reference server ----------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A gunicorn started by the benchmark with Dockyard's gunicorn.conf.py on a free port.

    ``settings_env`` gives the gunicorn knobs (workers, threads, logging) to use, so a
    server started here runs with exactly the settings of the one it is compared with.
    """

    def __init__(self, app: str, settings_env: dict[str, str], log_name: str,
                 config: Path | None = None) -> None:
        self.app = app
        self.config = config or ROOT / "gunicorn.conf.py"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ)
        for name in ("DOCKYARD_API_WORKERS", "DOCKYARD_API_THREADS", "DOCKYARD_ACCESS_LOG",
                     "DOCKYARD_LOG_LEVEL"):
            env.pop(name, None)
            if name in settings_env:
                env[name] = settings_env[name]
        env["DOCKYARD_BIND"] = f"127.0.0.1:{self.port}"
        env["DOCKYARD_BENCH_REF_QUEUE"] = REF_QUEUE
        self.env = env
        self.proc: subprocess.Popen | None = None
        log_dir = ROOT / ".state" / "log"
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{log_name}.log"

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [str(ROOT / ".venv" / "bin" / "gunicorn"), "-c", str(self.config), self.app],
                cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise RuntimeError(f"{self.app} did not start; see {self.log_path}")

    def workers(self) -> list[int]:
        return children(self.proc.pid) if self.proc else []

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(40)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)



class Reference(Server):
    def __init__(self, settings_env: dict[str, str]) -> None:
        super().__init__("bench.reference_app:app", settings_env, "bench-reference")

    def drain(self) -> int:
        client = redis_client()
        count = client.llen(REF_QUEUE)
        client.delete(*queue_keys(REF_QUEUE))
        keys = list(client.scan_iter(match=f"{REF_KEY_PREFIX}*", count=5000))
        for start in range(0, len(keys), 5000):
            client.delete(*keys[start:start + 5000])
        return count


# -- running load --------------------------------------------------------------------------------

def hey(url: str, headers: dict[str, str], clients: int, duration: float,
        qps_per_worker: float | None = None) -> LoadResult:
    """Run hey and read its per-request CSV (connection errors are not in it)."""
    argv = ["hey", "-z", f"{duration:g}s", "-c", str(clients), "-m", "POST", "-t", "10",
            "-o", "csv"]
    if qps_per_worker:
        argv += ["-q", f"{qps_per_worker:g}"]
    for name, value in headers.items():
        argv += ["-H", f"{name}: {value}"]
    argv.append(url)
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    result = LoadResult()
    end = 0.0
    for row in csv.DictReader(io.StringIO(done.stdout)):
        status = int(row["status-code"])
        latency = float(row["response-time"])
        result.statuses[status] = result.statuses.get(status, 0) + 1
        if status == 202:
            result.latencies.append(latency)
        end = max(end, float(row["offset"]) + latency)
    result.elapsed = end or duration
    return result


@dataclass
class Run:
    target: str
    mode: str
    tool: str
    result: LoadResult
    server_cpu: float  # CPU seconds of the target's gunicorn workers
    redis_cpu: float
    machine_busy: float  # busy CPU seconds of the whole machine (both cores)
    client_cpu: float  # CPU seconds of the load generator (hey, or this process for loadgen)
    overlapped: bool
    restarted: bool = False

    @property
    def rate(self) -> float:
        return self.result.accepted / self.result.elapsed if self.result.elapsed else 0.0

    @property
    def sent(self) -> int:
        return sum(self.result.statuses.values()) + self.result.errors

    def pct_ms(self, pct: float) -> str:
        return f"{percentile(self.result.latencies, pct) * 1000:.1f}"

    def non_accepted(self) -> str:
        other = {k: v for k, v in self.result.statuses.items() if k != 202}
        parts = [f"{v}x{k}" for k, v in sorted(other.items())]
        if self.result.errors:
            parts.append(f"{self.result.errors} errors")
        return ", ".join(parts) or "0"

    def per_job_ms(self, seconds: float) -> str:
        n = self.result.accepted
        return f"{seconds / n * 1000:.2f}" if n else "n/a"

    def cpu_ms_per_job(self) -> str:
        return self.per_job_ms(self.server_cpu)

    def ceiling(self) -> str:
        """Jobs/s that 2 cores allow at this run's CPU cost (server + Redis + generator)."""
        n = self.result.accepted
        spent = self.server_cpu + self.redis_cpu + self.client_cpu
        return f"{2 * n / spent:.0f}" if n and spent else "n/a"


def measured(target: str, mode: str, tool: str, workers_of: Callable[[], list[int]],
             redis_pid: int | None, fn: Callable[[], LoadResult], retries: int = 4,
             wait: bool = True) -> Run:
    """Run ``fn`` once pytest is quiet; run it again (``retries`` times at most) if pytest
    overlapped it or the target's gunicorn workers changed (the API restarted) during it."""
    for attempt in range(retries + 1):
        if wait:
            wait_quiet()
        workers = workers_of()
        with OverlapMonitor() as monitor:
            monitor.reset()
            server0 = cpu_seconds(workers)
            redis0 = cpu_seconds([redis_pid] if redis_pid else [])
            busy0 = machine_busy_seconds()
            client0 = own_cpu_seconds()
            result = fn()
            run = Run(target, mode, tool, result, cpu_seconds(workers) - server0,
                      cpu_seconds([redis_pid] if redis_pid else []) - redis0,
                      machine_busy_seconds() - busy0, own_cpu_seconds() - client0,
                      monitor.seen or pytest_running())
        restarted = sorted(workers_of()) != sorted(workers) or not workers
        print(f"  {target} {mode} ({tool}): {run.rate:.0f} accepted/s, p50 {run.pct_ms(50)} ms, "
              f"p99 {run.pct_ms(99)} ms, non-202 {run.non_accepted()}"
              + (" [pytest overlapped]" if run.overlapped else "")
              + (" [server restarted]" if restarted else ""), file=sys.stderr, flush=True)
        if not (run.overlapped or restarted) or attempt == retries:
            run.restarted = restarted
            return run
        print("  run discarded; running it again", file=sys.stderr)
        time.sleep(1)
    raise AssertionError("unreachable")


def load(args: argparse.Namespace, mode: str, tool: str, url: str,
         headers: dict[str, str]) -> LoadResult:
    if mode == "closed" and tool == "hey":
        return hey(url, headers, args.clients, args.duration)
    if mode == "closed":
        return closed_loop("POST", url, headers, args.clients, args.duration)
    if tool == "hey":
        return hey(url, headers, args.open_clients, args.open_duration,
                   args.rate / args.open_clients)
    return open_loop("POST", url, headers, args.rate, args.open_duration)


def run(args: argparse.Namespace) -> int:
    assert_loopback(API_URL)
    use_hey = args.tool in ("auto", "hey") and shutil.which("hey") is not None
    if args.tool == "hey" and not use_hey:
        sys.exit("hey is not installed (apt-get install hey)")
    token = admin_token()
    http = requests.Session()
    http.headers["Authorization"] = f"Bearer {token}"
    own_api = Server(args.api_app, dict(os.environ), "bench-dockyard",
                     args.api_config) if args.own_api else None
    master = api_master_pid()
    api_env = dict(os.environ) if own_api else (process_env(master) if master else {})

    def api_workers() -> list[int]:
        if own_api:
            return own_api.workers()
        pid = api_master_pid()
        return children(pid) if pid else []

    redis_pid = int(redis_client().info("server").get("process_id") or 0) or None

    api_url = own_api.url if own_api else API_URL
    sink = Sink(http, api_url)
    reference = Reference(api_env)
    headers = {"Authorization": f"Bearer {token}"}
    dy_url = f"{api_url}/api/v1/hosts/{SINK}/containers/x/start"
    runs: list[Run] = []
    counts = (0, 0)
    try:
        if own_api:
            own_api.start()
        sink.setup()
        reference.start()
        ref_url = f"{reference.url}/submit"
        targets = [("Dockyard", dy_url, headers, api_workers, sink.drain),
                   ("reference", ref_url, {}, reference.workers, reference.drain)]
        # Warm-up: threads, connection pools and the token cache, untimed.
        for _name, url, hdrs, _workers, drain in targets:
            closed_loop("POST", url, hdrs, clients=8, duration=2)
            drain()
        counts = (len(api_workers()), len(reference.workers()))

        plan = [("closed", "hey" if use_hey else "loadgen")] if "closed" in args.plan else []
        if use_hey and "open-hey" in args.plan:
            plan.append(("open", "hey"))
        if "open-loadgen" in args.plan:
            plan.append(("open", "loadgen"))
        for mode, tool in plan:
            for name, url, hdrs, workers, drain in targets:
                runs.append(measured(name, mode, tool, workers, redis_pid,
                                     functools.partial(load, args, mode, tool, url, hdrs),
                                     args.retries, not args.no_wait))
                drain()
                time.sleep(2)
    finally:
        try:
            reference.stop()
            reference.drain()
            sink.teardown()
        finally:
            if own_api:
                own_api.stop()

    report(runs, args, api_env, *counts, api_url=api_url)
    return 0


def report(runs: list[Run], args: argparse.Namespace, api_env: dict[str, str], api_workers: int,
           ref_workers: int, api_url: str) -> None:
    threads = api_env.get("DOCKYARD_API_THREADS", "16 (default)")
    print("### Job submission: Dockyard vs bare Flask + Redis + Celery reference\n")
    print(f"Dockyard at {api_url}" + (f" (a private gunicorn started by the benchmark: {args.api_app}"
                                      f", config {args.api_config or 'gunicorn.conf.py'}, "
                                      f"experiments {os.environ.get('DOCKYARD_BENCH_EXPERIMENTS', '-')})"
                                      if args.own_api else " (the running API)") + ".\n")
    print(f"Machine: {machine_summary()}. Both servers: gunicorn.conf.py (gthread), "
          f"{api_workers} / {ref_workers} workers x {threads} threads (Dockyard / reference). "
          f"Load generator on the same 2 cores.\n")
    closed = [r for r in runs if r.mode == "closed"]
    if closed:
        report_closed(closed, args)
    opened = [r for r in runs if r.mode == "open"]
    if opened:
        report_open(opened, args)
    overlapped = [f"{r.target} {r.mode} ({r.tool})" for r in runs if r.overlapped]
    restarted = [f"{r.target} {r.mode} ({r.tool})" for r in runs if r.restarted]
    print("\npytest overlapped: " + (", ".join(overlapped) if overlapped else "no run") + ". "
          "Server restarted during: " + (", ".join(restarted) if restarted else "no run") + ".\n")


def report_closed(closed: list[Run], args: argparse.Namespace) -> None:
    print(f"Closed loop: {args.clients} clients, {args.duration:g} s ({closed[0].tool}).\n")
    print(table(["target", "accepted jobs", "accepted jobs/s", "p50 ms", "p99 ms", "non-202",
                 "server CPU ms/job", "Redis CPU ms/job", "generator CPU ms/job",
                 "2-core ceiling jobs/s", "machine CPU busy"], [
        [r.target, r.result.accepted, f"{r.rate:.0f}", r.pct_ms(50), r.pct_ms(99), r.non_accepted(),
         r.cpu_ms_per_job(), r.per_job_ms(r.redis_cpu), r.per_job_ms(r.client_cpu), r.ceiling(),
         f"{r.machine_busy / r.result.elapsed / 2 * 100:.0f}%"] for r in closed]))
    dy = next(r for r in closed if r.target == "Dockyard")
    ref = next(r for r in closed if r.target == "reference")
    rel = dy.rate / ref.rate if ref.rate else 0.0
    per_job = [r.server_cpu / r.result.accepted if r.result.accepted else 0.0 for r in (dy, ref)]
    cpu_rel = per_job[0] / per_job[1] if per_job[1] else float("inf")
    print()
    print(table(["closed-loop check", "value", "target", "verdict"], [
        ["Dockyard accepted jobs/s", f"{dy.rate:.0f}", "≥ 1000", verdict(dy.rate >= 1000)],
        ["Dockyard / reference", f"{rel:.2f}x", "≥ 0.80x", verdict(rel >= 0.8)],
        ["server CPU per job / reference's", f"{cpu_rel:.2f}x", "≤ 1.30x", verdict(cpu_rel <= 1.3)],
    ]))
    record("submit_rate", "accepted jobs/s closed loop / bare reference", rel,
           f"{rel:.2f}x ({dy.rate:.0f} / {ref.rate:.0f})", "≥ 0.80x", rel >= 0.8, "bench/submit.py")
    record("submit_cpu", "server CPU per job / reference's", cpu_rel,
           f"{cpu_rel:.2f}x ({dy.cpu_ms_per_job()} / {ref.cpu_ms_per_job()} ms)", "≤ 1.30x",
           cpu_rel <= 1.3, "bench/submit.py")
    print()


def report_open(opened: list[Run], args: argparse.Namespace) -> None:
    print(f"Open loop: {args.rate:g} req/s offered for {args.open_duration:g} s. loadgen: evenly "
          "spaced requests, latency from the scheduled send time. hey: "
          f"-c {args.open_clients} -q {args.rate / args.open_clients:g} (its workers tick in step: "
          f"bursts of {args.open_clients} every {args.open_clients / args.rate * 1000:g} ms; latency "
          "from the actual send; a worker that falls behind skips ticks, so 'achieved' shows it).\n")
    print(table(["target", "tool", "offered/s", "achieved/s", "accepted", "p50 ms", "p90 ms",
                 "p99 ms", "max ms", "non-202", "server CPU ms/job"], [
        [r.target, r.tool, f"{args.rate:g}", f"{r.sent / r.result.elapsed:.0f}", r.result.accepted,
         r.pct_ms(50), r.pct_ms(90), r.pct_ms(99), r.pct_ms(100), r.non_accepted(), r.cpu_ms_per_job()]
        for r in opened]))
    print()
    checks = []
    for r in opened:
        if r.target == "Dockyard":
            p99 = percentile(r.result.latencies, 99) * 1000
            checks.append([f"Dockyard p99 at {args.rate:g}/s ({r.tool})", f"{p99:.1f} ms",
                           "≤ 25 ms", verdict(p99 <= 25)])
            if r.tool == "loadgen":
                ref = next((o for o in opened if o.target == "reference" and o.tool == r.tool), None)
                shown = f"{p99:.1f} ms" + (f" (reference {ref.pct_ms(99)} ms)" if ref else "")
                record("submit_p99", f"p99 at a constant {args.rate:g} jobs/s (loadgen)", p99, shown,
                       "≤ 25 ms", p99 <= 25, "bench/submit.py")
    print(table(["open-loop check", "value", "target", "verdict"], checks))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=30, help="closed-loop seconds")
    parser.add_argument("--clients", type=int, default=32, help="closed-loop clients")
    parser.add_argument("--rate", type=float, default=500, help="open-loop requests/s")
    parser.add_argument("--open-duration", type=float, default=25, help="open-loop seconds")
    parser.add_argument("--open-clients", type=int, default=10,
                        help="hey workers in the open loop (each at rate/N per s)")
    parser.add_argument("--plan", type=lambda v: set(v.split(",")),
                        default={"closed", "open-loadgen", "open-hey"},
                        help="comma-separated runs: closed, open-loadgen, open-hey (default: all)")
    parser.add_argument("--retries", type=int, default=4,
                        help="re-runs of a run that pytest or an API restart overlapped")
    parser.add_argument("--no-wait", action="store_true",
                        help="do not wait for pytest to finish (overlap is still reported)")
    parser.add_argument("--own-api", action="store_true",
                        help="start a private Dockyard gunicorn (this environment's "
                             "DOCKYARD_API_WORKERS/THREADS) instead of using the running API")
    parser.add_argument("--api-config", type=Path, default=None,
                        help="with --own-api: a gunicorn config to use instead of gunicorn.conf.py")
    parser.add_argument("--api-app", default="wsgi:app",
                        help="with --own-api: the WSGI app to serve (e.g. bench.experiment_app:app)")
    parser.add_argument("--tool", choices=("auto", "hey", "python"), default="auto")
    args = parser.parse_args()
    exit_on_sigterm()
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
