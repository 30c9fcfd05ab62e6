"""A real `dockyard-agent` process holding only what the API handed out for its host.

Its own Redis login, its own sealing key and the public verify key: no DOCKYARD_SECRET_KEY,
no data password, no admin token (the suite's environment minus those).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.support.stack import VENV_BIN

_WITHHELD = ("DOCKYARD_SECRET_KEY", "DOCKYARD_SECRET_KEY_FILE", "DOCKYARD_REDIS_PASSWORD",
             "DOCKYARD_REDIS_PASSWORD_FILE", "DOCKYARD_ADMIN_TOKEN")


class AgentProcess:
    def __init__(self, stack_env: dict[str, str], host: str, credentials: dict[str, str],
                 log_dir: Path, *, engine: str, redis_url: str | None = None,
                 prefix: tuple[str, ...] = ()) -> None:
        """``prefix`` runs the agent under another command (``nsenter --net=…``)."""
        self.env = {key: value for key, value in stack_env.items() if key not in _WITHHELD}
        self.env.update({"DOCKYARD_REDIS_URL": redis_url or credentials["redis_url"],
                         "DOCKYARD_TASK_VERIFY_KEY": credentials["task_verify_key"],
                         "DOCKYARD_AGENT_KEY": credentials["agent_key"]})
        self.args = [*prefix, str(VENV_BIN / "dockyard-agent"), "--host", host,
                     "--engine", engine, "--ops-concurrency", "1", "--query-concurrency", "2"]
        self.log = log_dir / f"agent-{host}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.args, env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)  # the whole group: its workers too
                self.proc.wait(10)

    def refusal(self, task_id: str) -> str | None:
        """The log line of a refused task message for ``task_id``, if any."""
        text = self.log.read_text(errors="replace")
        return next((row for row in text.splitlines()
                     if "refused task message" in row and f"id={task_id}" in row), None)
