"""Interactive sessions on the worker: the engine socket pumped to and from the API's pipes.

``sessions.run`` arrives on the host's query lane (a thread pool), opens the exec or attach
on the engine and hands it to a ``SessionPump`` of two threads of its own, then returns: a
session lasts minutes or hours, and holding a query slot (or a prefork ops process) for it
would starve reads and jobs. A worker restart ends its sessions with close 1012; a worker
killed outright stops refreshing their heartbeats and the API closes them with 1011.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

import docker
from celery import Task, shared_task
from celery.signals import worker_shutting_down

from app.core.store import get_redis
from app.core.task_names import SESSIONS_CHECK, SESSIONS_REAP, SESSIONS_RUN
from app.engine.containers import require_running
from app.engine.execs import kill_marked
from app.engine.sessions import EngineSession, open_attach, open_exec
from app.jobs.pipes import CONTROL, DATA, END, PipeClosedError, PipeReader, PipeWriter
from app.runtime import runtime
from app.security.policy import policy_from_settings
from app.sessions.relay import (
    CLOSE_CONTAINER_STOPPED,
    CLOSE_IDLE,
    CLOSE_MAX_DURATION,
    CLOSE_WORKER_RESTART,
    HEARTBEAT_SECONDS,
    HEARTBEAT_TTL_SECONDS,
    client_beat_key,
    input_pipe,
    output_pipe,
    worker_beat_key,
)
from tasks.base import client_for, engine_clients, to_problem
from tasks.containers import accessible, container_read

logger = logging.getLogger(__name__)

_pumps: set[SessionPump] = set()
_pumps_lock = threading.Lock()


class SessionPump:
    """Moves one session's bytes both ways and decides how it ends.

    The output thread copies the engine's stream into the output pipe (blocking on the
    API's credits when the client reads slowly); the control thread takes the client's
    bytes and resizes from the input pipe, keeps the heartbeat, and enforces the idle and
    maximum durations. Whatever ends the session, a process still running is killed.
    """

    def __init__(self, session_id: str, host: str, engine: EngineSession, idle_seconds: float,
                 max_seconds: float) -> None:
        self.session_id = session_id
        self.host = host
        self.engine = engine
        self.idle_seconds = idle_seconds
        self.max_seconds = max_seconds
        self.writer = PipeWriter(output_pipe(session_id, host), stall_seconds=idle_seconds)
        self.reader = PipeReader(input_pipe(session_id, host))
        self.redis = get_redis()
        self.eof = threading.Event()
        self.client_gone = threading.Event()
        self.shutting_down = threading.Event()
        self.last_activity = time.monotonic()
        self.started = time.monotonic()
        self._output = threading.Thread(target=self._pump_output, daemon=True,
                                        name=f"session-{session_id[:8]}-out")
        self._control = threading.Thread(target=self._pump_control, daemon=True,
                                         name=f"session-{session_id[:8]}-ctl")

    def start(self) -> None:
        self._beat()
        self.writer.header({"session": self.session_id})
        with _pumps_lock:
            _pumps.add(self)
        self._output.start()
        self._control.start()

    def join(self, timeout: float) -> None:
        self._control.join(timeout)

    def _beat(self) -> None:
        self.redis.set(worker_beat_key(self.session_id, self.host), "1", ex=HEARTBEAT_TTL_SECONDS)

    def _pump_output(self) -> None:
        try:
            while True:
                data = self.engine.read()
                if not data:
                    break
                self.writer.write(data)
                self.last_activity = time.monotonic()
        except PipeClosedError:
            self.client_gone.set()  # the API left, or its client stopped reading too long
        except Exception:
            logger.warning("session %s: output pump failed host=%s", self.session_id,
                           self.host, exc_info=True)
        finally:
            self.eof.set()

    def _pump_control(self) -> None:
        try:
            ending = self._relay_input()
            self._finish(ending)
        except Exception:
            logger.exception("session %s failed host=%s", self.session_id, self.host)
            self._finish({"close": 1011, "reason": "the session failed on the worker"})
        finally:
            with _pumps_lock:
                _pumps.discard(self)

    def _relay_input(self) -> dict[str, Any] | None:
        """Relay until the session must end; answers the control message that ends it."""
        next_beat = 0.0
        while True:
            now = time.monotonic()
            if now >= next_beat:
                self._beat()
                next_beat = now + HEARTBEAT_SECONDS
                if not self.redis.exists(client_beat_key(self.session_id, self.host)):
                    return None  # the API holding the client is gone
            if self.eof.is_set():
                return None if self.client_gone.is_set() else self._ended_by_process()
            if self.shutting_down.is_set():
                return {"close": CLOSE_WORKER_RESTART,
                        "reason": "the worker holding the session is restarting"}
            if now - self.last_activity > self.idle_seconds:
                return {"close": CLOSE_IDLE,
                        "reason": f"idle for {self.idle_seconds:g}s"}
            if now - self.started > self.max_seconds:
                return {"close": CLOSE_MAX_DURATION,
                        "reason": f"the maximum session duration ({self.max_seconds:g}s) "
                                  "was reached"}
            item = self.reader.poll(0.2)
            if item is None:
                continue
            kind, payload = item
            if kind == DATA:
                self.engine.send(payload)
                self.last_activity = time.monotonic()
            elif kind == CONTROL:
                cols, rows = json.loads(payload)["resize"]
                self.engine.resize(cols, rows)
                self.last_activity = time.monotonic()
            elif kind == END:
                return None  # the client left

    def _ended_by_process(self) -> dict[str, Any]:
        """The stream ended: the process exited, or the container stopped under it."""
        if self.engine.exec_id is not None and not self.engine.container_running():
            return {"close": CLOSE_CONTAINER_STOPPED, "reason": "the container stopped"}
        return {"exit": self.engine.exit_code()}

    def _finish(self, ending: dict[str, Any] | None) -> None:
        """Kill what still runs, tell the API how it ended (unless it left), clean up."""
        if ending is None or "close" in ending:
            self.engine.kill()
        self.engine.close()
        self._output.join(timeout=5)
        try:
            if ending is not None:
                self.writer.control(ending)
            self.writer.end()
        finally:
            self.reader.close()
            self.redis.delete(worker_beat_key(self.session_id, self.host))
        logger.info("session %s ended host=%s how=%s", self.session_id, self.host,
                    ending or "client left")


@shared_task(bind=True, name=SESSIONS_RUN, acks_late=False)
def run(self: Task, session_id: str, host: str, revision: int, caller: dict[str, Any],
        container_id: str, spec: dict[str, Any], limits: dict[str, float]) -> None:
    """Open the session on the engine and start its pump; refusals go to the API as errors.

    Access and the policy are checked again here, where the engine is: the container may
    have changed since the session was created.
    """
    writer = PipeWriter(output_pipe(session_id, host))
    try:
        client = client_for(host, revision)
        info = accessible(client, host, caller, container_id, "session", revision)
        policy_from_settings(runtime().settings).enforce_exec(spec, caller["role"] == "admin")
        require_running(client, info["Id"], "open a session in")
        engine = open_attach(client, info, spec.get("size")) if spec.get("attach") else \
            open_exec(client, info["Id"], spec, marker=session_id)
    except Exception as exc:
        if isinstance(exc, docker.errors.DockerException | OSError):
            engine_clients().forget(host)
        writer.fail(to_problem(exc, host))
        return
    SessionPump(session_id, host, engine, limits["idle_seconds"], limits["max_seconds"]).start()


@shared_task(bind=True, name=SESSIONS_REAP, acks_late=False)
def reap(self: Task, session_id: str, host: str, revision: int, container_id: str) -> None:
    """Kill the process of a session whose worker died (it carries the session's marker)."""
    kill_marked(client_for(host, revision), container_id, session_id)  # best effort
    logger.info("session %s: reaped its process host=%s", session_id, host)


@worker_shutting_down.connect
def end_sessions_on_shutdown(**_: object) -> None:
    """A worker going away ends its sessions cleanly (close 1012), killing their processes."""
    with _pumps_lock:
        pumps = list(_pumps)
    for pump in pumps:
        pump.shutting_down.set()
    for pump in pumps:
        pump.join(timeout=5)


# The precheck at creation: the caller may open a session in this running container.
check = container_read(
    SESSIONS_CHECK, "session",
    lambda client, info: require_running(client, info["Id"], "open a session in")["Id"])
