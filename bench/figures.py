"""The issue-17 figures each benchmark reports, collected into one verdict table by bench.summary.

A benchmark calls ``record`` for each figure it measured; when ``DOCKYARD_BENCH_FIGURES``
names a file (``make bench`` sets it), the figure is appended to it as one JSON line.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

FIGURES_ENV = "DOCKYARD_BENCH_FIGURES"


@dataclass(frozen=True)
class Figure:
    key: str
    label: str
    value: float
    shown: str
    target: str
    ok: bool | None  # None: reported, no target
    bench: str


def record(key: str, label: str, value: float, shown: str, target: str = "",
           ok: bool | None = None, bench: str = "") -> None:
    """Append one figure to the run's figures file (nothing when the variable is unset)."""
    path = os.environ.get(FIGURES_ENV)
    if not path:
        return
    figure = Figure(key, label, float(value), shown, target, ok, bench)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(asdict(figure)) + "\n")


def load(path: Path) -> list[Figure]:
    """Every figure in ``path``; a key recorded twice keeps its last value."""
    found: dict[str, Figure] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                figure = Figure(**json.loads(line))
                found[figure.key] = figure
    return list(found.values())
