"""`make bench`'s last step: the issue-17 verdict table, printed and written into docs/benchmarks.md.

Reads the figures the benchmarks recorded (bench/figures.py) and the run's notes (machine,
load before and after, the full output), prints one table with a verdict per row, and
replaces the section between the markers in docs/benchmarks.md with this run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.common import ROOT, machine_summary, table
from bench.figures import Figure, load

ORDER = ("provision", "provision_no_bind", "submit_rate", "submit_cpu", "submit_p99", "list",
         "backup", "backup_fsync", "backup_rss", "pss")
BEGIN = "<!-- make-bench:begin (written by bench/summary.py; edit outside the markers) -->"
END = "<!-- make-bench:end -->"


def verdict_table(figures: list[Figure], expected: tuple[str, ...]) -> str:
    by_key = {f.key: f for f in figures}
    rows = []
    for key in ORDER:
        figure = by_key.get(key)
        if figure is None:
            if key in expected:
                rows.append([key, "not measured (the benchmark failed or was not run)", "", "MISSING"])
            continue
        ok = "" if figure.ok is None else ("met" if figure.ok else "MISSED")
        rows.append([figure.label, figure.shown, figure.target, ok])
    return table(["figure", "measured", "target", "verdict"], rows)


def section(figures: list[Figure], expected: tuple[str, ...], notes: str, output: str,
            command: str) -> str:
    return "\n".join([
        BEGIN,
        "## Latest `make bench` run",
        "",
        f"Command: `{command}`. Machine: {machine_summary()}.",
        "",
        verdict_table(figures, expected),
        "",
        "What else ran on the machine (load and the busiest processes, before and after):",
        "",
        "```",
        notes.strip(),
        "```",
        "",
        "<details><summary>Every benchmark's full output from this run</summary>",
        "",
        output.strip(),
        "",
        "</details>",
        END,
    ])


def write_doc(doc: Path, text: str) -> None:
    current = doc.read_text(encoding="utf-8")
    if BEGIN in current and END in current:
        head, rest = current.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        doc.write_text(head + text + tail, encoding="utf-8")
        return
    title, _, body = current.partition("\n")
    doc.write_text(f"{title}\n\n{text}\n{body}", encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--figures", type=Path, required=True)
    parser.add_argument("--notes", type=Path, required=True, help="uptime/top before and after")
    parser.add_argument("--output", type=Path, required=True, help="the benchmarks' markdown")
    parser.add_argument("--ran", default=",".join(ORDER), help="benchmarks run (comma-separated)")
    parser.add_argument("--command", default="make bench")
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--no-doc", action="store_true", help="print only")
    args = parser.parse_args()
    figures = load(args.figures)
    ran = set(args.ran.split(","))
    expected = tuple(k for k in ORDER if k.split("_")[0] in ran)
    print("### Issue 17 targets, this run\n")
    print(verdict_table(figures, expected))
    print()
    if not args.no_doc:
        write_doc(args.doc, section(figures, expected, args.notes.read_text(encoding="utf-8"),
                                    args.output.read_text(encoding="utf-8"), args.command))
        print(f"written to {args.doc}", file=sys.stderr)
    return 0 if all(f.ok is not False for f in figures) else 3


if __name__ == "__main__":
    sys.exit(main())
