"""Start and stop a private Dockyard stack (API + workers) for the integration suite."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = ROOT / ".venv" / "bin"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Stack:
    """gunicorn + an ops worker + a query worker, on their own Redis database."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.procs: dict[str, subprocess.Popen] = {}

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 (lives with the process)
        proc = subprocess.Popen(
            args, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.procs[name] = proc
        return proc

    def start_worker(
        self, name: str, queues: str, pool: str, concurrency: int, extra_env: dict[str, str] | None = None
    ) -> subprocess.Popen:
        args = [  # what scripts/processes.sh runs
            str(VENV_BIN / "python"),
            "-m",
            "app.celery_cli",
            "-A",
            "app.celery_app:celery",
            "worker",
            "-Q",
            queues,
            "-n",
            f"{name}.{os.getpid()}@%h",
            "-P",
            pool,
            "-c",
            str(concurrency),
            "--prefetch-multiplier",
            "1",
            "-l",
            "INFO",
        ]
        if extra_env:
            saved, self.env = self.env, {**self.env, **extra_env}
            try:
                return self._spawn(name, args)
            finally:
                self.env = saved
        return self._spawn(name, args)

    def start(self, ops_concurrency: int = 2) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        registered = subprocess.run(
            [str(VENV_BIN / "dockyard-admin"), "register-local"],
            cwd=ROOT,
            env=self.env,
            check=False,
            capture_output=True,
            text=True,
        )
        if registered.returncode != 0:
            raise RuntimeError(f"dockyard-admin register-local failed: {registered.stderr[-2000:]}")
        self.start_worker("worker-ops", "engine.ops", "prefork", ops_concurrency)
        self.start_worker("worker-query", "engine.query", "threads", 8,
                          extra_env={"DOCKYARD_ENGINE_POOL_SIZE": "8"})
        self._spawn(
            "api",
            [
                str(VENV_BIN / "gunicorn"),
                "-c",
                str(ROOT / "gunicorn.conf.py"),
                "--bind",
                f"127.0.0.1:{self.port}",
                "--workers",
                "2",
                "wsgi:app",
            ],
        )
        self.wait_ready()

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"stack not ready; see {self.log_dir}")

    def stop_process(self, name: str, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def stop(self) -> None:
        for name in list(self.procs):
            self.stop_process(name)
