"""No module over 400 lines unless its docstring says why it is kept whole.

A newcomer reads a module in one sitting; past ~400 lines it usually holds two things. Split
it, or write at its top (in the module docstring) a paragraph starting "Kept whole:" that
says why it is one thing.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LIMIT = 400
FOLDERS = ("app", "api", "tasks", "schemas")


def oversized_without_reason() -> list[str]:
    found = []
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            source = path.read_text()
            lines = source.count("\n")
            if lines <= LIMIT:
                continue
            docstring = ast.get_docstring(ast.parse(source, str(path))) or ""
            if "Kept whole:" not in docstring:
                found.append(f"{path.relative_to(ROOT)}: {lines} lines")
    return found


def test_no_module_is_oversized_without_a_reason() -> None:
    found = oversized_without_reason()
    assert not found, ("split these, or say at their top why they are kept whole "
                       "(\"Kept whole: …\" in the module docstring):\n" + "\n".join(found))


def test_the_rule_sees_a_long_module(tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / "app"
    folder.mkdir()
    (folder / "long.py").write_text('"""A long module."""\n' + "x = 1\n" * LIMIT)
    (folder / "kept.py").write_text('"""A long module.\n\nKept whole: one thing."""\n'
                                    + "x = 1\n" * LIMIT)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert oversized_without_reason() == [f"app/long.py: {LIMIT + 1} lines"]
