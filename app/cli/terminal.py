"""`dockyard exec -it` and `dockyard attach`: the local terminal on a session's WebSocket."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import signal
import sys
import termios
import threading
import tty
from collections.abc import Iterator
from typing import Any

import requests
from simple_websocket import Client as WebSocketClient
from simple_websocket import ConnectionClosed
from simple_websocket import ConnectionError as WebSocketRefused

# What the CLI exits with when the session ended without an exit code (like ssh's 255).
SESSION_LOST = 255
USAGE_ERROR = 125


class SessionArgs(argparse.ArgumentParser):
    """docker's own flags for exec and attach; errors raise instead of exiting."""

    def error(self, message: str) -> Any:
        raise ValueError(message)


def exec_parser() -> SessionArgs:
    parser = SessionArgs(prog="dockyard exec", add_help=False)
    parser.add_argument("-i", "--interactive", action="store_true")
    parser.add_argument("-t", "--tty", action="store_true")
    parser.add_argument("-u", "--user")
    parser.add_argument("-w", "--workdir")
    parser.add_argument("-e", "--env", action="append", default=[])
    parser.add_argument("host")
    parser.add_argument("container")
    parser.add_argument("cmd", nargs=argparse.REMAINDER)
    return parser


def session_body(argv: list[str]) -> tuple[str, str, dict[str, Any]]:
    """(host, container, POST body) for ``exec …`` or ``attach HOST CONTAINER``.

    Raises:
        ValueError: a command line docker would refuse too.
    """
    if argv[0] == "attach":
        if len(argv) != 3:
            raise ValueError('"attach" requires exactly 2 arguments: HOST CONTAINER')
        return argv[1], argv[2], {"attach": True}
    args = exec_parser().parse_args(argv[1:])
    if not args.cmd:
        raise ValueError('"exec" requires at least 3 arguments: HOST CONTAINER COMMAND [ARG...]')
    body: dict[str, Any] = {"cmd": args.cmd, "tty": args.tty, "user": args.user,
                            "workdir": args.workdir, "env": args.env}
    body["interactive"] = args.interactive or args.tty
    return args.host, args.container, body


def websocket_url(api_base: str, path: str) -> str:
    """The session's ``url`` (a path) on the API at ``api_base`` (http → ws, https → wss)."""
    origin = api_base.split("/api/v1")[0]
    return origin.replace("https://", "wss://", 1).replace("http://", "ws://", 1) + path


@contextlib.contextmanager
def raw_terminal(fd: int) -> Iterator[bool]:
    """The terminal on ``fd`` in raw mode (keys pass through as typed), restored on exit."""
    if not os.isatty(fd):
        yield False
        return
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield True
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def terminal_size(fd: int) -> list[int] | None:
    try:
        size = os.get_terminal_size(fd)
    except OSError:
        return None
    return [size.columns, size.lines]


class TerminalSession:
    """Keys from stdin to the session, the session's bytes to stdout, SIGWINCH as resize."""

    def __init__(self, ws: WebSocketClient, stdin: int, stdout: int) -> None:
        self.ws = ws
        self.stdin = stdin
        self.stdout = stdout
        self.done = threading.Event()
        self.exit_code: int | None = None
        self.close_code: int | None = None
        self.close_reason = ""

    def resize(self) -> None:
        size = terminal_size(self.stdout)
        if size and not self.done.is_set():
            with contextlib.suppress(ConnectionClosed):
                self.ws.send(json.dumps({"resize": size}))

    def _keys(self) -> None:
        while not self.done.is_set():
            ready, _, _ = select.select([self.stdin], [], [], 0.2)
            if not ready:
                continue
            data = os.read(self.stdin, 4096)
            if not data:
                return  # stdin closed: leave the session to end by itself
            try:
                self.ws.send(data)
            except ConnectionClosed:
                return

    def run(self) -> int:
        threading.Thread(target=self._keys, daemon=True, name="dockyard-keys").start()
        try:
            while True:
                message = self.ws.receive()
                if isinstance(message, bytes):
                    os.write(self.stdout, message)
                elif message is not None:
                    self.exit_code = json.loads(message).get("exit", self.exit_code)
        except ConnectionClosed as closed:
            self.close_code, self.close_reason = closed.reason, closed.message
        finally:
            self.done.set()
        if self.exit_code is not None:
            return int(self.exit_code)
        return SESSION_LOST


def run(session: requests.Session, api_base: str, argv: list[str]) -> int:
    """Create the session, then hold the terminal on it; answers the remote exit code."""
    try:
        host, container, body = session_body(argv)
    except ValueError as exc:
        print(f"dockyard: {exc}", file=sys.stderr)
        return USAGE_ERROR
    interactive = body.pop("interactive", True)
    body["size"] = terminal_size(sys.stdout.fileno())
    response = session.post(f"{api_base}/hosts/{host}/containers/{container}/sessions",
                            json=body, timeout=60)
    if response.status_code != 201:
        try:
            detail = response.json().get("detail") or response.text
        except ValueError:
            detail = response.text
        print(f"Error response from dockyard: {detail}", file=sys.stderr)
        return 1
    try:
        ws = WebSocketClient.connect(websocket_url(api_base, response.json()["url"]),
                                     receive_bytes=1 << 16)
    except WebSocketRefused as exc:
        print(f"dockyard: the session was refused ({exc})", file=sys.stderr)
        return 1
    stdin = sys.stdin.fileno() if interactive else os.open(os.devnull, os.O_RDONLY)
    terminal = TerminalSession(ws, stdin, sys.stdout.fileno())
    previous = signal.signal(signal.SIGWINCH, lambda *_: terminal.resize())
    try:
        with raw_terminal(stdin if body.get("tty", True) else -1):
            code = terminal.run()
    finally:
        signal.signal(signal.SIGWINCH, previous)
    if terminal.exit_code is None:
        print(f"dockyard: session ended: {terminal.close_reason or 'connection lost'} "
              f"(close {terminal.close_code})", file=sys.stderr)
    return code
