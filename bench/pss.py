"""Idle memory of the `make run` stack: the sum of PSS over the processes it started.

The processes are those named by the pidfiles `scripts/processes.sh` writes under the run
folder (api, worker-ops, worker-query, and beat when it runs on its own) and all their
descendants (gunicorn workers, Celery pool processes, the beat embedded in the ops worker).
PSS (proportional set size, from /proc/PID/smaps_rollup) charges a page shared by N processes
1/N to each, so the sum is the stack's real footprint: pages a preloading parent shares
copy-on-write with its children count once.

The stack counts as idle once its processes used less than 2% of one CPU over 2 s.

Run: `source .state/run/env && .venv/bin/python -m bench.pss` (`--run-dir` for another stack).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from bench.common import machine_summary, table, verdict
from bench.figures import record

NAMES = ("api", "worker-ops", "worker-query", "beat")
TARGET_MIB = 260.0
_TICK = os.sysconf("SC_CLK_TCK")


def _children_map() -> dict[int, list[int]]:
    found: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        found.setdefault(ppid, []).append(int(entry.name))
    return found


def process_tree(pid: int) -> list[int]:
    """``pid`` and every live descendant."""
    children = _children_map()
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def pss_kib(pid: int) -> int:
    """PSS of one process in KiB (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_ticks(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total


def _embeds_beat(pid: int | None) -> bool:
    """Whether the worker ``pid`` runs beat as its child (``celery worker -B``)."""
    try:
        return pid is not None and b"-B" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False


def started_pids(run_dir: Path) -> dict[str, int]:
    found = {}
    for name in NAMES:
        try:
            pid = int((run_dir / f"{name}.pid").read_text().strip())
            os.kill(pid, 0)
        except (OSError, ValueError):
            continue
        found[name] = pid
    return found


def wait_idle(pids: list[int], limit: float = 120.0, window: float = 2.0) -> bool:
    """Wait until the processes use < 2% of one CPU over ``window`` seconds."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        before = cpu_ticks(pids)
        time.sleep(window)
        if (cpu_ticks(pids) - before) / _TICK < 0.02 * window:
            return True
    return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    state = Path(os.environ.get("DOCKYARD_STATE_DIR") or Path(__file__).resolve().parent.parent / ".state")
    parser.add_argument("--run-dir", type=Path, default=state / "run",
                        help="where scripts/processes.sh wrote the pidfiles")
    args = parser.parse_args()
    roots = started_pids(args.run_dir)
    if not roots:
        print(f"no live process from {args.run_dir}/{{{','.join(NAMES)}}}.pid: start the stack "
              "(`make run`) first", file=sys.stderr)
        return 1
    trees = {name: process_tree(pid) for name, pid in roots.items()}
    idle = wait_idle([pid for tree in trees.values() for pid in tree])
    trees = {name: process_tree(pid) for name, pid in roots.items()}
    rows, total = [], 0
    for name, tree in trees.items():
        kib = sum(pss_kib(pid) for pid in tree)
        total += kib
        rows.append([name, len(tree), f"{kib / 1024:.1f}"])
    mib = total / 1024
    rows.append(["**total**", sum(len(t) for t in trees.values()), f"**{mib:.1f}**"])
    missing = [name for name in NAMES if name not in roots
               and not (name == "beat" and _embeds_beat(roots.get("worker-ops")))]
    print("### Idle stack memory (sum of PSS)\n")
    embedded = "beat" not in roots and _embeds_beat(roots.get("worker-ops"))
    print(f"Machine: {machine_summary()}. Run folder {args.run_dir}"
          + ("; beat runs inside worker-ops (`-B`), counted there" if embedded else "")
          + ("" if idle else "; the stack did not go idle within 120 s (measured anyway)")
          + (f"; not running: {', '.join(missing)}" if missing else "") + ".\n")
    print(table(["processes", "count", "PSS MiB"], rows))
    print()
    print(table(["check", "value", "target", "verdict"],
                [["idle stack PSS", f"{mib:.0f} MiB", f"≤ {TARGET_MIB:.0f} MiB",
                  verdict(mib <= TARGET_MIB)]]))
    print()
    record("pss", "idle stack PSS", mib, f"{mib:.0f} MiB", f"≤ {TARGET_MIB:.0f} MiB",
           mib <= TARGET_MIB, "bench/pss.py")
    return 0


if __name__ == "__main__":
    sys.exit(main())
