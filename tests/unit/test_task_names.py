"""Task names live in app/core/task_names.py: every name sent is a registered task and vice versa."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from celery import Celery

from app.core import task_names

ROOT = Path(__file__).resolve().parents[2]
# Calls whose first argument (or ``name=``) is a task name.
SENDERS = {"send_task", "submit_job", "submit_fanout", "start_job", "run_query", "run_central_query",
           "open_stream", "engine_read", "container_read", "shared_task"}


@pytest.fixture(scope="module")
def registered() -> set[str]:
    """The task names the workers register: importing the tasks package is all a worker does."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("DOCKYARD_SECRET_KEY", "unit-test-secret")
        env.setenv("DOCKYARD_REDIS_URL", "redis://127.0.0.1:1/0")  # nothing listens there
        import tasks  # noqa: F401  (registers every @shared_task)

        # A private app: shared tasks attach to every app when it is finalized.
        probe = Celery("task-names-probe", set_as_current=False)
        probe.finalize()
        return {name for name in probe.tasks if not name.startswith("celery.")}


def test_every_name_the_api_can_send_is_a_registered_task(registered: set[str]) -> None:
    assert sorted(task_names.ALL - registered) == []


def test_every_registered_task_has_its_name_in_task_names(registered: set[str]) -> None:
    assert sorted(registered - task_names.ALL) == []


def test_task_names_are_unique_and_namespaced() -> None:
    constants = {key: value for key, value in vars(task_names).items()
                 if key.isupper() and isinstance(value, str)}
    assert len(set(constants.values())) == len(constants)
    for key, value in constants.items():
        assert key == value.upper().replace(".", "_"), key


def _modules() -> list[tuple[str, ast.AST]]:
    found = []
    for folder in ("api", "app", "tasks", "schemas"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path != ROOT / "app" / "core" / "task_names.py":
                found.append((str(path.relative_to(ROOT)), ast.parse(path.read_text(), str(path))))
    return found


def _task_name_argument(call: ast.Call) -> ast.expr | None:
    func = call.func
    called = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) \
        else None
    if called not in SENDERS:
        return None
    named = [keyword.value for keyword in call.keywords if keyword.arg in ("name", "kind")]
    return named[0] if named else call.args[0] if call.args else None


def test_no_module_spells_a_task_name_as_a_bare_string() -> None:
    """A name typed by hand at a call site or a registration would escape the checks above."""
    spelled = [f"{where}:{node.lineno} {node.value!r}" for where, tree in _modules()
               for node in ast.walk(tree)
               if isinstance(node, ast.Constant) and node.value in task_names.ALL]
    assert spelled == []


def test_every_send_and_registration_takes_its_name_from_task_names() -> None:
    """Even a misspelt name (one that is no task at all) is caught where it is written."""
    literal = [f"{where}:{node.lineno}" for where, tree in _modules()
               for node in ast.walk(tree) if isinstance(node, ast.Call)
               if isinstance(_task_name_argument(node), ast.Constant)]
    assert literal == []
