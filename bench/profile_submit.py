"""Profile job submission: py-spy samples the gunicorn workers while hey loads them.

Sets up the same sink host and fake heartbeat as bench/submit.py (or starts the reference
server), runs a closed loop with hey, records the workers with ``py-spy record
--subprocesses --format raw`` and prints where the samples went: the busiest leaf
functions (self) and the heaviest call paths of our own code (inclusive). Needs py-spy
(``.venv/bin/pip install py-spy``) and hey.

    python -m bench.profile_submit [--target dockyard|reference] [--duration 20] [--clients 32]
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import requests

from bench.common import API_URL, ROOT, admin_token, exit_on_sigterm, wait_quiet
from bench.submit import SINK, Reference, Server, Sink, api_master_pid, hey, process_env

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]+)(?::\d+)?\)$")


def frame_name(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    path = match.group("file")
    for marker in ("site-packages/", str(ROOT) + "/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{match.group('func')} ({path})"


def summarize(raw_path: Path, top: int) -> str:
    self_time: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw_path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [frame_name(f) for f in stack.split(";")
                  if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        self_time[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    lines = [f"{total} samples\n", "| self % | leaf function |", "|---|---|"]
    lines += [f"| {n / total * 100:.1f} | `{name}` |" for name, n in self_time.most_common(top)]
    lines += ["", "| inclusive % | function (our code, flask, werkzeug, marshmallow, celery, kombu, "
              "redis) |", "|---|---|"]
    wanted = ("app/", "api/", "schemas/", "flask", "werkzeug", "marshmallow", "webargs",
              "apispec", "celery/", "kombu/", "redis/", "gunicorn/", "json")
    shown = 0
    for name, n in inclusive.most_common():
        if any(w in name for w in wanted):
            lines.append(f"| {n / total * 100:.1f} | `{name}` |")
            shown += 1
            if shown >= top * 2:
                break
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", choices=("dockyard", "reference"), default="dockyard")
    parser.add_argument("--own-api", action="store_true",
                        help="profile a private Dockyard gunicorn running the current code")
    parser.add_argument("--duration", type=float, default=20)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--gil", action="store_true",
                        help="only samples holding the GIL (CPU), not threads waiting on Redis")
    parser.add_argument("--out", type=Path, default=ROOT / ".state" / "bench" / "profile.raw")
    args = parser.parse_args()
    exit_on_sigterm()
    spy = shutil.which("py-spy") or str(ROOT / ".venv" / "bin" / "py-spy")
    if not Path(spy).exists():
        sys.exit("py-spy is not installed: .venv/bin/pip install py-spy")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    token = admin_token()
    http = requests.Session()
    http.headers["Authorization"] = f"Bearer {token}"
    master = api_master_pid()
    reference = Reference(process_env(master) if master else {})
    own = Server("wsgi:app", dict(os.environ), "bench-dockyard") if args.own_api else None
    sink = Sink(http, own.url if own else API_URL)
    try:
        if args.target == "dockyard":
            base = API_URL
            if own:
                own.start()
                base, master = own.url, own.proc.pid
            sink.setup()
            url, headers, pid = (f"{base}/api/v1/hosts/{SINK}/containers/x/start",
                                 {"Authorization": f"Bearer {token}"}, master)
        else:
            reference.start()
            url, headers, pid = f"{reference.url}/submit", {}, reference.proc.pid
        if pid is None:
            sys.exit("no API master pid found")
        hey(url, headers, 8, 2)  # warm-up
        wait_quiet()
        recorder = subprocess.Popen(
            [spy, "record", "--pid", str(pid), "--subprocesses", "--nonblocking", "--format", "raw",
             "--rate", str(args.rate), "--duration", f"{args.duration:g}", "--output", str(args.out),
             *(["--gil"] if args.gil else [])],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(1)
        result = hey(url, headers, args.clients, args.duration)
        recorder.wait(60)
        print(f"### Profile of {args.target}: {args.clients} clients, {args.duration:g} s, "
              f"{result.accepted / result.elapsed:.0f} accepted/s under py-spy"
              f"{', GIL-holding samples only' if args.gil else ', all non-idle samples'}\n")
        print(summarize(args.out, args.top))
    finally:
        try:
            if args.target == "dockyard":
                sink.teardown()
            else:
                reference.stop()
                reference.drain()
        finally:
            if own:
                own.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
