"""The engine's side of an interactive session: a hijacked exec or attach socket."""

from __future__ import annotations

import contextlib
import logging
import select
import socket
from typing import Any

import docker

from app.engine.execs import EXEC_MARKER_ENV, exec_exit_code, kill_marked

logger = logging.getLogger(__name__)

_READ_BYTES = 1 << 20
_COALESCE_BYTES = 1 << 20
_FRAME_HEADER = 8


class Demultiplexer:
    """Turns docker's multiplexed stream (non-tty) into the bytes a terminal would show."""

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, data: bytes) -> bytes:
        buffer = self._pending + data if self._pending else data
        out = []
        at = 0  # frames are read in place: re-slicing the rest per frame would be quadratic
        while len(buffer) - at >= _FRAME_HEADER:
            size = int.from_bytes(buffer[at + 4:at + _FRAME_HEADER], "big")
            if len(buffer) - at < _FRAME_HEADER + size:
                break
            out.append(buffer[at + _FRAME_HEADER:at + _FRAME_HEADER + size])
            at += _FRAME_HEADER + size
        self._pending = buffer[at:]
        return b"".join(out)


class EngineSession:
    """One hijacked engine connection: an exec's (``exec_id`` set) or an attach's.

    The socket is whatever the transport gives (a unix or TCP socket, a TLS socket, an SSH
    channel); one thread reads it while another writes, and ``close`` ends both.
    """

    def __init__(self, client: docker.DockerClient, container_id: str, sock: Any,
                 exec_id: str | None, marker: str | None, tty: bool) -> None:
        self.client = client
        self.container_id = container_id
        self.exec_id = exec_id
        self.marker = marker
        self.sock = getattr(sock, "_sock", sock)  # SocketIO wraps the socket on unix/tcp
        self.sock.settimeout(None)  # a session may be quiet for as long as its idle limit
        self._demux = None if tty else Demultiplexer()

    def read(self) -> bytes:
        """The next bytes the process wrote (b"" once its stream ended).

        Blocks for the first bytes, then takes whatever else is already waiting (up to
        ``_COALESCE_BYTES``): a keystroke's echo is not delayed, and a bulk stream
        (``cat`` of a large file) travels in fewer, larger chunks.
        """
        first = b""
        while not first:
            try:
                data = self.sock.recv(_READ_BYTES)
            except OSError:
                return b""
            if not data:
                return b""
            first = data if self._demux is None else self._demux.feed(data)
        parts, size = [first], len(first)
        while size < _COALESCE_BYTES and self._has_more():
            try:
                data = self.sock.recv(_READ_BYTES)
            except OSError:
                break
            if not data:
                break  # the end: the next read answers b""
            shown = data if self._demux is None else self._demux.feed(data)
            parts.append(shown)
            size += len(shown)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _has_more(self) -> bool:
        try:
            ready, _, _ = select.select([self.sock], [], [], 0)
        except (OSError, ValueError, TypeError):  # a transport select cannot watch
            return False
        pending = getattr(self.sock, "pending", None)  # TLS bytes already decrypted
        return bool(ready) or bool(pending and pending())

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def resize(self, cols: int, rows: int) -> None:
        try:
            if self.exec_id is not None:
                self.client.api.exec_resize(self.exec_id, height=rows, width=cols)
            else:
                self.client.api.resize(self.container_id, rows, cols)
        except docker.errors.APIError as exc:
            # The process may have just exited, or (non-tty) have no terminal to size.
            logger.info("session resize refused by the engine: %s", exc.explanation)

    def exit_code(self) -> int | None:
        """The exec's exit code, or the container's once it stopped (attach)."""
        if self.exec_id is not None:
            return exec_exit_code(self.client, self.exec_id)
        state = self.client.api.inspect_container(self.container_id)["State"]
        return None if state.get("Running") else state.get("ExitCode")

    def container_running(self) -> bool:
        try:
            state = self.client.api.inspect_container(self.container_id)["State"]
        except docker.errors.NotFound:
            return False
        return bool(state.get("Running"))

    def kill(self) -> None:
        """End the process (an exec): the engine cannot, so a second exec kills it by marker.

        An attach leaves the container running, like detaching from ``docker attach``.
        """
        if self.exec_id is not None and self.marker is not None and self.container_running():
            kill_marked(self.client, self.container_id, self.marker)

    def close(self) -> None:
        # Shutdown first: it wakes the thread blocked in recv (close alone may not).
        with contextlib.suppress(OSError, AttributeError):  # closed, or a channel without it
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.sock.close()


def open_exec(client: docker.DockerClient, container_id: str, spec: dict[str, Any],
              marker: str) -> EngineSession:
    """``docker exec -i [-t]``: start ``spec['cmd']`` with stdin and hijack its stream.

    The process carries ``marker`` in its environment so that it can be killed when the
    session ends before it does (see ``kill_marked``).
    """
    tty = bool(spec.get("tty", True))
    env = {**(spec.get("env") or {}), EXEC_MARKER_ENV: marker}
    created = client.api.exec_create(container_id, spec["cmd"], stdin=True, stdout=True,
                                     stderr=True, tty=tty, environment=env,
                                     workdir=spec.get("workdir"), user=spec.get("user") or "",
                                     privileged=bool(spec.get("privileged")))
    sock = client.api.exec_start(created["Id"], tty=tty, socket=True)
    session = EngineSession(client, container_id, sock, created["Id"], marker, tty)
    if tty and spec.get("size"):
        # At once, as docker's CLI does: before the shell reads the terminal's size.
        session.resize(*spec["size"])
    return session


def open_attach(client: docker.DockerClient, info: dict[str, Any],
                size: list[int] | None = None) -> EngineSession:
    """``docker attach``: the container's own stdin/stdout/stderr."""
    sock = client.api.attach_socket(info["Id"], params={"stdin": 1, "stdout": 1, "stderr": 1,
                                                        "stream": 1})
    tty = bool((info.get("Config") or {}).get("Tty"))
    session = EngineSession(client, info["Id"], sock, None, None, tty)
    if tty and size:
        session.resize(*size)
    return session
