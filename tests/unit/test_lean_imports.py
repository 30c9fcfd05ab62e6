"""The API and beat load no engine library: docker-py and paramiko are for workers only."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WORKER_ONLY = ("docker", "paramiko", "tasks")


def _loaded_after(code: str, tmp_path: Path) -> set[str]:
    """The worker-only modules a fresh interpreter holds after running ``code``."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("DOCKYARD_")}
    env.update(DOCKYARD_STATE_DIR=str(tmp_path), DOCKYARD_SECRET_KEY="unit-test-secret-key",
               # Nothing may connect while the app is built: this port answers nobody.
               DOCKYARD_REDIS_URL="redis://127.0.0.1:1/0", DOCKYARD_DEV_OPEN_REDIS="1")
    probe = (f"import sys\n{code}\n"
             f"print(','.join(m for m in {WORKER_ONLY!r} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return {name for name in done.stdout.strip().split(",") if name}


def test_api_app_imports_neither_docker_py_nor_paramiko(tmp_path: Path) -> None:
    assert _loaded_after("from wsgi import app", tmp_path) == set()


def test_beat_loads_no_task_module_nor_engine_library(tmp_path: Path) -> None:
    # What `celery -A app.celery_app:celery beat` runs before scheduling (Beat.init_loader).
    code = "from app.celery_app import celery\ncelery.loader.init_worker()\ncelery.finalize()"
    assert _loaded_after(code, tmp_path) == set()


def test_worker_start_up_registers_the_tasks(tmp_path: Path) -> None:
    code = ("from celery import signals\nfrom app.celery_app import celery\n"
            "signals.celeryd_init.send(sender='unit', instance=None, conf=celery.conf, options={})\n"
            "assert 'containers.provision' in celery.tasks, sorted(celery.tasks)")
    assert _loaded_after(code, tmp_path) >= {"docker", "tasks"}


def test_beat_loads_no_http_client(tmp_path: Path) -> None:
    # requests (~5 MiB) is for workers talking to registries and for the CLI, not beat.
    code = ("from app.celery_app import celery\ncelery.loader.init_worker()\ncelery.finalize()\n"
            "import sys\nassert 'requests' not in sys.modules, 'beat loaded requests'")
    assert _loaded_after(code, tmp_path) == set()


def test_workers_and_beat_load_no_web_framework(tmp_path: Path) -> None:
    # Flask (~6 MiB per process) is the API's: a worker registering its tasks and logging
    # a line, or beat, must not load it (app.ops.metrics and app.core.logs import it lazily).
    code = ("import logging, sys\nfrom celery import signals\nfrom app.celery_app import celery\n"
            "from app.core import logs\n"
            "signals.celeryd_init.send(sender='unit', instance=None, conf=celery.conf, options={})\n"
            "import app.ops.beat\nassert logs.current_request_id() is None\n"
            "logging.getLogger('unit').warning('a line')\n"
            "assert 'flask' not in sys.modules, 'a worker loaded flask'")
    assert _loaded_after(code, tmp_path) >= {"tasks"}
