"""Imports flow one way: api -> schemas, app; tasks -> app; schemas -> app.core.names only.

Every import is read from the source (module level and inside functions alike), so an arrow
that runs the wrong way fails here before anything is run. docs/development.md has the map.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIRST_PARTY = {"app", "api", "tasks", "schemas", "wsgi", "tests", "bench", "gunicorn"}
# Which first-party top-level packages each layer may import.
MAY_IMPORT = {
    "api": {"api", "schemas", "app"},
    "tasks": {"tasks", "app"},
    "app": {"app"},
    "schemas": {"schemas"},  # and app.core.names, checked on its own
}
SHARED_NAMES = "app.core.names"
NEVER_IN_API = {"docker", "paramiko"}
STDLIB = set(sys.stdlib_module_names)


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every import in ``path``; ``from a import b`` also yields ``a.b``."""
    tree = ast.parse(path.read_text(), str(path))
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names
                      if alias.name != "*"]
    return found


def _sources(*folders: str) -> list[Path]:
    return [path for folder in folders for path in sorted((ROOT / folder).rglob("*.py"))]


def _is_blueprint(path: Path) -> bool:
    """An api/ view module: it defines a flask-smorest ``blp`` at module level."""
    tree = ast.parse(path.read_text(), str(path))
    return any(isinstance(node, ast.Assign) and any(
        isinstance(target, ast.Name) and target.id == "blp" for target in node.targets)
        for node in tree.body)


def wrong_way_arrows() -> list[str]:
    """Every import that breaks a rule, as ``file:line layer -> module (why)``."""
    blueprints = {_module_name(path) for path in _sources("api") if _is_blueprint(path)}
    wrong, flagged = [], set()
    for path in _sources("app", "api", "tasks", "schemas"):
        where = f"{path.relative_to(ROOT)}"
        layer, me = where.split("/")[0], _module_name(path)
        every = set(_imports(path))
        for line, module in sorted(every):
            top = module.split(".")[0]
            why = None
            if layer == "schemas":
                if module == SHARED_NAMES or module.startswith(SHARED_NAMES + "."):
                    continue
                if module in ("app", "app.core") and (line, SHARED_NAMES) in every:
                    continue
                allowed = top == "schemas" or (top not in FIRST_PARTY
                                                and (top in STDLIB or top == "marshmallow"))
                if not allowed:
                    why = "schemas import only marshmallow and app.core.names"
            elif top in FIRST_PARTY and top not in MAY_IMPORT[layer]:
                why = f"{layer} may import only {', '.join(sorted(MAY_IMPORT[layer]))}"
            elif layer == "api" and top in NEVER_IN_API:
                why = "api never imports docker-py or paramiko"
            elif layer == "app" and me.startswith("app.core") and module.startswith("app.") \
                    and not module.startswith("app.core") and module != "app.__version__":
                why = "app.core imports no other part of app"
            elif (me in blueprints and module != me
                  and (module in blueprints or module.rpartition(".")[0] in blueprints)):
                why = "a blueprint never imports another (shared helpers live in api/common.py)"
            if why and (where, line) not in flagged:  # `from a import b` once, as a
                flagged.add((where, line))
                wrong.append(f"{where}:{line} {me} -> {module} ({why})")
    return wrong


def test_imports_flow_one_way() -> None:
    wrong = wrong_way_arrows()
    assert not wrong, "imports against the direction:\n" + "\n".join(wrong)


def test_the_rules_see_every_layer() -> None:
    """The walk finds what it must judge: the blueprints and imports inside functions."""
    blueprints = [path.stem for path in _sources("api") if _is_blueprint(path)]
    assert {"containers", "hosts", "images", "jobs"} <= set(blueprints)
    assert "common" not in blueprints
    inner = [module for line, module in _imports(ROOT / "app" / "request_accounting.py")]
    assert "app.factory" in inner  # imported inside settle_rate


def test_building_the_api_loads_no_engine_library_nor_task(tmp_path: Path) -> None:
    """In a fresh interpreter, building the API app imports neither docker-py, paramiko nor
    the task modules (they are for workers)."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("DOCKYARD_")}
    env.update(DOCKYARD_STATE_DIR=str(tmp_path), DOCKYARD_SECRET_KEY="unit-test-secret-key",
               DOCKYARD_REDIS_URL="redis://127.0.0.1:1/0", DOCKYARD_DEV_OPEN_REDIS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]))
    probe = ("import sys\nfrom app.factory import create_app\ncreate_app()\n"
             "print(','.join(m for m in ('docker', 'paramiko', 'tasks', 'schemas', 'api')"
             " if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    loaded = set(filter(None, done.stdout.strip().splitlines()[-1].split(",")))
    # The factory registers the blueprints (api, schemas) by import path; nothing of the workers.
    assert loaded == {"schemas", "api"}
