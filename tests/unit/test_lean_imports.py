"""The API and beat load no engine library: docker-py and paramiko are for workers only."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WORKER_ONLY = ("docker", "paramiko", "tasks")


def _unit_env(tmp_path: Path) -> dict[str, str]:
    # Nothing may connect while the app is built: this port answers nobody.
    return {"DOCKYARD_STATE_DIR": str(tmp_path), "DOCKYARD_SECRET_KEY": "unit-test-secret-key",
            "DOCKYARD_REDIS_URL": "redis://127.0.0.1:1/0", "DOCKYARD_DEV_OPEN_REDIS": "1"}


def _loaded_after(code: str, tmp_path: Path) -> set[str]:
    """The worker-only modules a fresh interpreter holds after running ``code``."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("DOCKYARD_")}
    env.update(_unit_env(tmp_path))
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


def test_worker_start_up_registers_the_tasks_without_paramiko(tmp_path: Path) -> None:
    # paramiko (with invoke, PyNaCl, bcrypt: ~7 MiB per process) loads only for ssh:// hosts.
    code = ("from celery import signals\nfrom app.celery_app import celery\n"
            "signals.celeryd_init.send(sender='unit', instance=None, conf=celery.conf, options={})\n"
            "assert 'containers.provision' in celery.tasks, sorted(celery.tasks)\n"
            # Nor what only a registration parses (certificates) or the API validates with.
            "assert 'cryptography.x509' not in sys.modules and 'marshmallow' not in sys.modules")
    assert _loaded_after(code, tmp_path) == {"docker", "tasks"}


def test_a_worker_talks_to_socket_and_tcp_engines_without_paramiko(tmp_path: Path) -> None:
    # Building clients and classifying their failures (a refused connection is a 503).
    code = ("import tasks, docker\nfrom app.engine.errors import translate_engine_error\n"
            "docker.DockerClient(base_url='unix:///nonexistent.sock', version='1.41')\n"
            "docker.DockerClient(base_url='tcp://127.0.0.1:1', version='1.41')\n"
            "error = translate_engine_error(ConnectionRefusedError('refused'), 'h')\n"
            "assert error.status == 503, error")
    assert _loaded_after(code, tmp_path) == {"docker", "tasks"}


def test_docker_py_builds_ssh_clients_once_its_transport_is_loaded_on_demand(
        tmp_path: Path) -> None:
    # Dockyard's own ssh clients (app.engine.ssh) and docker-py's: the transport, real, on demand.
    code = ("import app\nimport docker, docker.api.client, docker.transport\n"
            "from app.engine import ssh_transport\n"
            "assert ssh_transport.deferred() and 'paramiko' not in sys.modules\n"
            "client = docker.DockerClient(base_url='ssh://root@127.0.0.1:1', version='1.41',\n"
            "                             use_ssh_client=True)\n"
            "from docker.transport import sshconn\n"
            "assert not ssh_transport.deferred()\n"
            "assert type(client.api._custom_adapter) is sshconn.SSHHTTPAdapter\n"
            "assert docker.transport.SSHHTTPAdapter is sshconn.SSHHTTPAdapter\n"
            "assert docker.api.client.SSHHTTPAdapter is sshconn.SSHHTTPAdapter\n"
            "from app.engine.ssh import StoredKeySSHAdapter\n"
            "assert issubclass(StoredKeySSHAdapter, sshconn.SSHHTTPAdapter)")
    assert _loaded_after(code, tmp_path) == {"docker", "paramiko"}


def test_naming_anything_else_of_the_deferred_transport_loads_it(tmp_path: Path) -> None:
    code = ("import app\nimport docker\nfrom app.engine import ssh_transport\n"
            "assert ssh_transport.deferred() and 'paramiko' not in sys.modules\n"
            "from docker.transport.sshconn import SSHConnectionPool\n"
            "assert not ssh_transport.deferred()\n"
            "assert SSHConnectionPool is sys.modules['docker.transport.sshconn'].SSHConnectionPool")
    assert _loaded_after(code, tmp_path) == {"docker", "paramiko"}


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


def test_a_prefork_worker_builds_what_each_child_would_before_it_forks(tmp_path: Path) -> None:
    # billiard's set_pdeathsig declares prctl through cffi in every pool child; the C parser
    # it needs is built once in the parent (shared) and not at all in a thread-pool worker.
    code = ("from app.jobs.celery import _freeze_heap\n"
            "class Worker:\n    pool_cls = 'threads'\n"
            "_freeze_heap(sender=Worker())\nassert 'pycparser' not in sys.modules\n"
            "Worker.pool_cls = 'prefork'\n_freeze_heap(sender=Worker())\n"
            "from cffi import cparser\nassert cparser._parser_cache is not None\n"
            "before = set(sys.modules)\nfrom billiard import util\nutil.set_pdeathsig(0)\n"
            "assert set(sys.modules) == before, set(sys.modules) - before")
    assert _loaded_after(code, tmp_path) == set()


def test_the_worker_command_line_is_celerys_without_its_repl(tmp_path: Path) -> None:
    # What scripts/processes.sh and compose run: every celery subcommand, no prompt_toolkit.
    code = ("from app.celery_cli import _without_repl\n_without_repl()\n"
            "from celery.bin.celery import celery as group\n"
            "assert {'worker', 'beat', 'amqp', 'inspect'} <= set(group.commands), group.commands\n"
            "assert 'repl' not in group.commands['amqp'].commands\n"
            "assert not any(m.split('.')[0] == 'prompt_toolkit' for m in sys.modules)")
    assert _loaded_after(code, tmp_path) == set()
    env = {name: value for name, value in os.environ.items() if not name.startswith("DOCKYARD_")}
    done = subprocess.run([sys.executable, "-m", "app.celery_cli", "-A", "app.celery_app:celery",
                           "worker", "--help"], cwd=ROOT, env={**env, **_unit_env(tmp_path)},
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "--concurrency" in done.stdout and "--beat" in done.stdout
