"""``docker exec`` on one engine: run a command in a container and collect its output, find
an exec's exit code, kill what a closed session left running."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import docker

from app.core.errors import QueryTimeoutError
from app.engine.containers import require_running

logger = logging.getLogger(__name__)


EXEC_OUTPUT_LIMIT = 1 << 20


EXEC_MARKER_ENV = "DOCKYARD_EXEC_ID"


_FRAME_HEADER = 8


_POLL_SECONDS = 0.25


class ExecTimeoutError(QueryTimeoutError):
    """An exec did not finish within its time limit."""

    slug, title = "exec-timeout", "The command did not finish in time"


class ExecOutput:
    """Output of a non-tty exec: docker's multiplexed frames, kept up to ``limit`` bytes.

    Each frame is an 8-byte header (stream, 0, 0, 0, big-endian length) and a payload;
    stdout and stderr payloads are kept interleaved, as a terminal would show them.
    """

    def __init__(self, limit: int = EXEC_OUTPUT_LIMIT) -> None:
        self.limit = limit
        self.truncated = False
        self._pending = b""
        self._kept = bytearray()

    def feed(self, data: bytes) -> None:
        self._pending += data
        while len(self._pending) >= _FRAME_HEADER:
            size = int.from_bytes(self._pending[4:_FRAME_HEADER], "big")
            if len(self._pending) < _FRAME_HEADER + size:
                return
            self._keep(self._pending[_FRAME_HEADER:_FRAME_HEADER + size])
            self._pending = self._pending[_FRAME_HEADER + size:]

    def _keep(self, payload: bytes) -> None:
        room = self.limit - len(self._kept)
        if len(payload) > room:
            self.truncated = True
            payload = payload[:max(room, 0)]
        self._kept += payload

    @property
    def text(self) -> str:
        return self._kept.decode("utf-8", errors="replace")


def exec_in_container(client: docker.DockerClient, ref: str, spec: dict[str, Any], marker: str,
                      checkpoint: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """``docker exec`` (non-interactive): run ``spec['cmd']``, bounded in time and output.

    The engine has no API to kill an exec, so the process carries ``marker`` in its
    environment and, on timeout or cancel, a second exec kills every process that has it
    (which needs a POSIX ``sh`` in the image; otherwise the process is left running and the
    error says so).

    Raises:
        NotFoundError: no such container.
        ConflictError: the container is not running (or is paused).
        ExecTimeoutError: the command outlived ``spec['timeout']``; carries the output so far.
    """
    info = require_running(client, ref, "exec in")
    env = {**(spec.get("env") or {}), EXEC_MARKER_ENV: marker}
    created = client.api.exec_create(info["Id"], spec["cmd"], stdout=True, stderr=True,
                                     environment=env, workdir=spec.get("workdir"),
                                     user=spec.get("user") or "",
                                     privileged=bool(spec.get("privileged")))
    output = ExecOutput()
    sock = client.api.exec_start(created["Id"], socket=True)
    raw = getattr(sock, "_sock", sock)  # SocketIO is unusable after a timeout; its socket is not
    try:
        finished = _drain_exec(raw, output, time.monotonic() + spec["timeout"], checkpoint)
    except BaseException:  # cancelled, or the task's time limit
        kill_marked(client, info["Id"], marker)
        raise
    finally:
        raw.close()
    if not finished:
        kill_marked(client, info["Id"], marker)
        killed = exec_exit_code(client, created["Id"]) is not None
        raise ExecTimeoutError(
            f"the command did not finish within {spec['timeout']:g}s; "
            + ("it was killed" if killed else "it could not be killed and was left running"),
            killed=killed, output=output.text, truncated=output.truncated)
    return {"exit_code": exec_exit_code(client, created["Id"]), "output": output.text,
            "truncated": output.truncated}


def _drain_exec(raw: Any, output: ExecOutput, deadline: float,
                checkpoint: Callable[[], None]) -> bool:
    """Read an exec's stream into ``output``: True when it ended, False at ``deadline``."""
    raw.settimeout(_POLL_SECONDS)
    next_checkpoint = time.monotonic() + 1
    while True:
        try:
            data = raw.recv(1 << 16)
        except TimeoutError:
            data = None
        if data == b"":
            return True
        if data:
            output.feed(data)
        now = time.monotonic()
        if now >= deadline:
            return False
        if now >= next_checkpoint:
            next_checkpoint = now + 1
            checkpoint()


def exec_exit_code(client: docker.DockerClient, exec_id: str) -> int | None:
    """The exec's exit code, or None if it is still running a second later."""
    # The stream can end a moment before the engine records the exit code.
    for _ in range(20):
        state = client.api.exec_inspect(exec_id)
        if not state.get("Running"):
            return state.get("ExitCode")
        time.sleep(0.05)
    return None


def kill_marked(client: docker.DockerClient, container_id: str, marker: str) -> None:
    """Kill every process in the container whose environment carries ``marker`` (best effort)."""
    script = ('for d in /proc/[0-9]*; do '
              'if grep -q "$1" "$d/environ" 2>/dev/null; then kill -9 "${d#/proc/}"; fi; done')
    try:
        killer = client.api.exec_create(container_id, ["sh", "-c", script, "sh",
                                                        f"{EXEC_MARKER_ENV}={marker}"],
                                        stdout=True, stderr=True, user="0")
        client.api.exec_start(killer["Id"])
    except docker.errors.APIError:
        logger.warning("could not kill exec %s in %s", marker, container_id[:12], exc_info=True)
