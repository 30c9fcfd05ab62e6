"""Interactive sessions (exec -it, attach) over WebSocket, through the real API, Redis and worker."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import re
import select
import signal
import socket
import struct
import subprocess
import termios
import time
from urllib.parse import urlsplit

import docker
import pytest
import requests
from simple_websocket import Client, ConnectionClosed
from simple_websocket import ConnectionError as WebSocketRefused

from tests.integration.conftest import Api
from tests.integration.helpers import BUSYBOX, eventually
from tests.support.forward import Forwarder
from tests.support.remote_engine import start_on_a_free_subnet
from tests.support.ssh_engine import SSHEngine
from tests.support.stack import ROOT, VENV_BIN, Stack

BASE = "/hosts/local/containers"


def provision(api, name: str, command: list[str] | None = None, **extra) -> dict:
    spec = {"image": BUSYBOX, "name": name, "labels": {"dyt.case": name},
            "command": command or ["sh", "-c", "exec sleep 600"], **extra}
    job = api.post(BASE, params={"wait": 60}, json=spec).json()
    assert job["state"] == "succeeded", job
    return job["result"]


@pytest.fixture
def running(operator, unique, cleanup):
    cleanup.append(unique)
    return provision(operator, unique)


def ws_url(api, url: str) -> str:
    return api.base.removesuffix("/api/v1").replace("http://", "ws://") + url


class Terminal:
    """A WebSocket client that collects what the session shows and how it ended."""

    def __init__(self, api, session: dict) -> None:
        self.ws = Client.connect(ws_url(api, session["url"]))
        self.shown = b""
        self.controls: list[dict] = []
        self.close_code: int | None = None
        self.close_reason = ""

    def send(self, data: bytes | str) -> None:
        self.ws.send(data)

    def resize(self, cols: int, rows: int) -> None:
        self.ws.send(json.dumps({"resize": [cols, rows]}))

    def pump(self, timeout: float = 0.5) -> bool:
        """Read what arrived within ``timeout``; False once the server closed."""
        try:
            message = self.ws.receive(timeout=timeout)
        except ConnectionClosed as closed:
            self.close_code, self.close_reason = closed.reason, closed.message
            return False
        if isinstance(message, bytes):
            self.shown += message
        elif message is not None:
            self.controls.append(json.loads(message))
        return True

    def wait_for(self, text: bytes, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.shown:
            assert time.monotonic() < deadline, f"{text!r} never shown; got {self.shown[-500:]!r}"
            assert self.pump(), f"closed {self.close_code} {self.close_reason} before {text!r}"

    def wait_closed(self, timeout: float = 30) -> tuple[int | None, str]:
        deadline = time.monotonic() + timeout
        while self.pump():
            assert time.monotonic() < deadline, "the session never closed"
        return self.close_code, self.close_reason

    def abandon(self) -> None:
        """Drop the connection without a close frame, as a crashed client would."""
        self.ws.sock.shutdown(socket.SHUT_RDWR)
        self.ws.sock.close()


def open_session(api, ref: str, **body) -> dict:
    response = api.post(f"{BASE}/{ref}/sessions", json=body or {"cmd": ["sh"]})
    assert response.status_code == 201, response.text
    return response.json()


def processes(engine, ref: str) -> str:
    return "\n".join(" ".join(row) for row in engine.api.top(ref)["Processes"])


def exec_ids(engine, ref: str) -> list:
    return engine.api.inspect_container(ref)["ExecIDs"] or []


# -- the protocol --------------------------------------------------------------------------

def test_exec_session_runs_a_shell_with_resize_and_ends_with_its_exit_code(operator, running,
                                                                          unique):
    session = open_session(operator, unique, cmd=["sh"], tty=True, size=[100, 30])
    assert session["url"].startswith(f"/api/v1/sessions/{session['id']}/socket?ticket=")
    term = Terminal(operator, session)
    term.send(b"stty size\n")
    term.wait_for(b"30 100")
    term.send(b"echo $((6*7))\n")
    term.wait_for(b"42")
    term.resize(120, 40)
    term.send(b"stty size; exit 7\n")
    code, _ = term.wait_closed()
    assert b"40 120" in term.shown
    assert term.controls == [{"exit": 7}]
    assert code == 1000


def test_session_is_audited_with_counts_and_never_its_content(operator, admin, running, unique):
    session = open_session(operator, unique, cmd=["sh"])
    term = Terminal(operator, session)
    term.send(b"echo typed-$((40+2))-secret; exit 3\n")
    term.wait_for(b"typed-42-secret")
    assert term.wait_closed()[0] == 1000

    def audited() -> dict:
        entries = admin.get("/audit", params={"host": "local", "limit": 50}).json()["items"]
        return next((e for e in entries if (e.get("session") or {}).get("id") == session["id"]),
                    None)

    entry = eventually(audited)
    assert entry["method"] == "SESSION" and entry["target"] == unique
    assert entry["actor"].startswith("t-operator-")
    assert entry["request"]["body"]["cmd"] == ["sh"]
    record = entry["session"]
    assert record["exit_code"] == 3 and record["close_code"] == 1000
    assert record["bytes_in"] == len(b"echo typed-$((40+2))-secret; exit 3\n")
    assert record["bytes_out"] >= len(b"typed-42-secret")
    assert record["started_at"] <= record["ended_at"]
    assert "typed" not in json.dumps(entry)


def test_attach_shows_the_container_output_and_detaches_without_stopping_it(
        operator, engine, unique, cleanup):
    cleanup.append(unique)
    provision(operator, unique, ["sh", "-c", "i=0; while true; do echo tick-$i; i=$((i+1)); "
                                             "sleep 0.2; done"])
    term = Terminal(operator, open_session(operator, unique, attach=True))
    term.wait_for(b"tick-")
    term.ws.close()
    assert engine.api.inspect_container(unique)["State"]["Running"]
    term = Terminal(operator, open_session(operator, unique, attach=True))
    term.wait_for(b"tick-")
    engine.api.kill(unique, "SIGKILL")
    code, _ = term.wait_closed()
    assert (code, term.controls) == (1000, [{"exit": 137}])


# -- the ticket ----------------------------------------------------------------------------

def test_ticket_works_once_and_a_wrong_one_is_refused_before_the_upgrade(operator, running,
                                                                       unique):
    session = open_session(operator, unique, cmd=["sh"])
    wrong = session["url"].split("?")[0] + "?ticket=not-the-ticket"
    refused = requests.get(ws_url(operator, wrong).replace("ws://", "http://"),
                           headers=UPGRADE, timeout=10)
    assert refused.status_code == 401
    assert refused.headers["Content-Type"] == "application/problem+json"
    term = Terminal(operator, session)  # the wrong ticket did not spend the right one
    term.send(b"exit 0\n")
    assert term.wait_closed()[0] == 1000
    again = requests.get(ws_url(operator, session["url"]).replace("ws://", "http://"),
                         headers=UPGRADE, timeout=10)
    assert again.status_code == 401
    with pytest.raises(WebSocketRefused):
        Client.connect(ws_url(operator, session["url"]))


UPGRADE = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
           "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}


# -- refusals: before any ticket, nothing run ----------------------------------------------

def test_refusals_come_before_any_ticket_and_run_nothing(operator, viewer, make_token, engine,
                                                          running, unique, cleanup):
    base = f"{BASE}/{unique}/sessions"
    assert viewer.post(base, json={"cmd": ["sh"]}).status_code == 403
    elsewhere = make_token("operator", hosts=["some-other-host"])
    assert elsewhere.post(base, json={"cmd": ["sh"]}).status_code == 403
    privileged = operator.post(base, json={"cmd": ["sh"], "privileged": True})
    assert privileged.status_code == 403 and privileged.json()["rule"] == "no-privileged"
    bad = operator.post(base, json={"attach": True, "cmd": ["sh"]})
    assert bad.status_code == 422 and "cmd" in bad.json()["errors"]
    assert operator.post(base, json={}).status_code == 422
    assert exec_ids(engine, unique) == []

    unmanaged = unique + "-raw"
    cleanup.append(unmanaged)
    engine.containers.run(BUSYBOX, ["sleep", "600"], name=unmanaged, detach=True)
    refused = operator.post(f"{BASE}/{unmanaged}/sessions", json={"cmd": ["sh"]})
    assert refused.status_code == 403 and refused.json()["rule"] == "managed-only"
    assert exec_ids(engine, unmanaged) == []

    engine.api.stop(unique, timeout=0)
    stopped = operator.post(base, json={"cmd": ["sh"]})
    assert stopped.status_code == 409
    assert operator.post(base, json={"attach": True}).status_code == 409
    assert exec_ids(engine, unique) == []


def test_dockyard_own_containers_are_refused_even_to_admins(admin, engine, unique, cleanup):
    cleanup.append(unique)
    engine.containers.run(BUSYBOX, ["sleep", "600"], name=unique, detach=True,
                          labels={"dockyard.system": "true"})
    for body in ({"cmd": ["sh"]}, {"attach": True}):
        refused = admin.post(f"{BASE}/{unique}/sessions", json=body)
        assert refused.status_code == 403 and refused.json()["rule"] == "dockyard-system"
    assert exec_ids(engine, unique) == []


def test_a_container_changed_after_creation_is_refused_on_the_worker(operator, engine, running,
                                                                     unique):
    session = open_session(operator, unique, cmd=["sh"])
    engine.api.stop(unique, timeout=0)
    term = Terminal(operator, session)
    code, reason = term.wait_closed()
    assert code == 4409 and "not running" in reason
    assert exec_ids(engine, unique) == []


# -- endings: nothing left running -----------------------------------------------------------

def test_revoking_the_token_ends_its_open_sessions(admin, stack, engine, running, unique):
    made = admin.post("/tokens", json={"name": f"t-revoke-{unique}", "role": "operator"}).json()
    holder = Api(stack.url, made["token"])
    term = Terminal(holder, open_session(holder, unique, cmd=["sh"]))
    term.send(b"sleep 4328\n")
    eventually(lambda: "4328" in processes(engine, unique) or None)
    assert admin.delete(f"/tokens/{made['id']}").status_code == 204
    code, reason = term.wait_closed()
    assert code == 4401 and "revoked" in reason
    eventually(lambda: "4328" not in processes(engine, unique) or None, timeout=30)


def test_a_client_that_disconnects_leaves_no_process_behind(operator, engine, running, unique):
    term = Terminal(operator, open_session(operator, unique, cmd=["sh"]))
    term.send(b"sleep 4321\n")
    eventually(lambda: "4321" in processes(engine, unique) or None)
    term.abandon()
    eventually(lambda: "4321" not in processes(engine, unique) or None, timeout=30)
    assert "sh" not in processes(engine, unique).replace("sleep 600", "").split()


def test_the_session_ends_when_its_container_stops(operator, engine, running, unique):
    term = Terminal(operator, open_session(operator, unique, cmd=["sh"]))
    term.send(b"echo ready\n")
    term.wait_for(b"ready")
    engine.api.kill(unique, "SIGKILL")
    code, reason = term.wait_closed()
    assert (code, reason) == (4409, "the container stopped")


def test_a_bad_control_message_closes_with_1007_and_kills_the_process(operator, engine, running,
                                                                       unique):
    term = Terminal(operator, open_session(operator, unique, cmd=["sh"]))
    term.send(b"sleep 4322\n")
    eventually(lambda: "4322" in processes(engine, unique) or None)
    term.send(json.dumps({"resize": "big"}))
    assert term.wait_closed()[0] == 1007
    eventually(lambda: "4322" not in processes(engine, unique) or None, timeout=30)


def raw_upgrade(api, url: str) -> socket.socket:
    """A WebSocket opened by hand that will never read again (a stuck client)."""
    address = api.base.removeprefix("http://").split("/")[0]
    host, port = address.split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    headers = "".join(f"{k}: {v}\r\n" for k, v in UPGRADE.items())
    sock.sendall(f"GET {url} HTTP/1.1\r\nHost: {address}\r\n{headers}\r\n".encode())
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += sock.recv(1)
    assert answer.startswith(b"HTTP/1.1 101"), answer
    return sock


def test_a_client_that_stops_reading_gets_backpressure_not_unbounded_memory(
        operator, engine, test_redis, running, unique):
    session = open_session(operator, unique, cmd=["sh", "-c", "exec yes session-flood"])
    sock = raw_upgrade(operator, session["url"])
    pipe = f"dy:h:local:pipe:session-{session['id']}-out"
    eventually(lambda: test_redis.llen(pipe) >= 8 or None)
    # The worker stops at the credit limit (8 chunks queued in Redis) while nobody reads.
    samples = []
    for _ in range(20):
        samples.append(test_redis.llen(pipe))
        time.sleep(0.1)
    assert max(samples) <= 8 + 1
    assert "yes" in processes(engine, unique)
    sock.close()
    eventually(lambda: "yes" not in processes(engine, unique) or None, timeout=60)


# -- limits: a second API on the same Redis and workers, with short limits -----------------

@pytest.fixture(scope="module")
def short_limits(stack, stack_env, state_dir, operator):
    """``operator``'s token on an API whose sessions idle out after 3 s and last at most 8 s,
    with tickets good for 1 s (the limits travel in the task, so the workers are shared)."""
    env = {**stack_env, "DOCKYARD_SESSION_IDLE_SECONDS": "3",
           "DOCKYARD_SESSION_MAX_SECONDS": "8", "DOCKYARD_SESSION_TICKET_SECONDS": "1"}
    api = Stack(env, state_dir / "log")
    proc = subprocess.Popen(
        [str(VENV_BIN / "gunicorn"), "-c", str(ROOT / "gunicorn.conf.py"), "--bind",
         f"127.0.0.1:{api.port}", "--workers", "1", "wsgi:app"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    try:
        api.wait_ready()
        yield Api(api.url, operator.session.headers["Authorization"].removeprefix("Bearer "))
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


def test_a_client_that_never_sends_is_closed_at_the_idle_timeout(short_limits, engine, running,
                                                                  unique):
    term = Terminal(short_limits, open_session(short_limits, unique, cmd=["sleep", "4323"]))
    eventually(lambda: "4323" in processes(engine, unique) or None)
    code, reason = term.wait_closed()
    assert (code, reason) == (4408, "idle for 3s")
    eventually(lambda: "4323" not in processes(engine, unique) or None, timeout=30)


def test_a_busy_session_is_closed_at_the_maximum_duration(short_limits, engine, running, unique):
    term = Terminal(short_limits, open_session(
        short_limits, unique, cmd=["sh", "-c", "while true; do echo busy-4324; sleep 0.5; done"]))
    code, reason = term.wait_closed()
    assert code == 4410 and "maximum session duration" in reason
    assert term.shown.count(b"busy-4324") >= 8  # it was never idle
    eventually(lambda: "busy-4324" not in processes(engine, unique) or None, timeout=30)


def test_an_expired_ticket_is_refused_before_the_upgrade(short_limits, engine, running, unique):
    session = open_session(short_limits, unique, cmd=["sh"])
    time.sleep(1.5)  # the ticket lives 1 s
    refused = requests.get(ws_url(short_limits, session["url"]).replace("ws://", "http://"),
                           headers=UPGRADE, timeout=10)
    assert refused.status_code == 401
    assert exec_ids(engine, unique) == []


# -- the worker holding the session goes away (last: they restart the query worker) --------

def restart_query_worker(stack, sig: int) -> None:
    stack.stop_process("worker-query", sig)
    stack.start_worker("worker-query", "engine.query", "threads", 8,
                       extra_env={"DOCKYARD_ENGINE_POOL_SIZE": "8"})


def test_a_worker_restart_closes_the_session_with_1012_and_kills_the_process(
        stack, operator, engine, running, unique):
    term = Terminal(operator, open_session(operator, unique, cmd=["sleep", "4325"]))
    eventually(lambda: "4325" in processes(engine, unique) or None)
    restart_query_worker(stack, signal.SIGTERM)
    code, reason = term.wait_closed()
    assert code == 1012 and "restarting" in reason
    eventually(lambda: "4325" not in processes(engine, unique) or None, timeout=30)
    stack.wait_ready()


def test_a_lost_worker_closes_the_session_with_1011_never_a_hang(stack, operator, engine,
                                                                  running, unique):
    stack.wait_ready()
    term = Terminal(operator, open_session(operator, unique, cmd=["sh"]))
    term.send(b"sleep 4326\n")
    eventually(lambda: "4326" in processes(engine, unique) or None)
    restart_query_worker(stack, signal.SIGKILL)
    code, reason = term.wait_closed()
    assert code == 1011 and "lost" in reason
    # The restarted worker kills what the lost one left running.
    eventually(lambda: "4326" not in processes(engine, unique) or None, timeout=60)
    stack.wait_ready()


# -- the CLI under a pseudo-terminal ---------------------------------------------------------

def read_some(fd: int, seen: bytearray) -> None:
    """Read what the pty shows into ``seen`` (for half a second at most)."""
    ready, _, _ = select.select([fd], [], [], 0.5)
    if ready:
        with contextlib.suppress(OSError):  # EIO: the child side closed
            seen += os.read(fd, 4096)


def read_until(fd: int, text: bytes, seen: bytearray, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while text not in seen:
        assert time.monotonic() < deadline, f"{text!r} never shown; got {bytes(seen[-400:])!r}"
        read_some(fd, seen)


# busybox's line editor ends its prompt with a cursor-position query (ESC[6n). The test
# leaves it unanswered, as busybox allows: answered at once, it races the shell's redraw on
# SIGWINCH and busybox drops the next keys.
PROMPT = b"# \x1b[6n"


def wait_prompt(fd: int, seen: bytearray, shown: int) -> int:
    """Wait for the shell's next prompt; answers how many prompts have been shown."""
    deadline = time.monotonic() + 20
    while seen.count(PROMPT) <= shown:
        assert time.monotonic() < deadline, f"no prompt; got {bytes(seen[-400:])!r}"
        read_some(fd, seen)
    return seen.count(PROMPT)


def set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def test_cli_exec_it_gives_a_raw_terminal_with_resize_and_the_remote_exit_code(
        stack, operator, running, unique):
    env = {**os.environ, "DOCKYARD_URL": stack.url,
           "DOCKYARD_TOKEN": operator.session.headers["Authorization"].removeprefix("Bearer ")}
    script = (f"{VENV_BIN / 'dockyard'} exec -it local {unique} sh; rc=$?; "
              "echo; echo LOCAL-AFTER; stty -a; exit $rc")
    pid, fd = pty.fork()
    if pid == 0:  # the child: a shell on the pty, as a user would type it
        os.execve("/bin/sh", ["sh", "-c", script], env)  # noqa: S606 (the pty child, a fixed shell)
    try:
        set_size(fd, 24, 80)
        seen = bytearray()
        prompts = wait_prompt(fd, seen, 0)  # the remote shell's prompt
        lflag = termios.tcgetattr(fd)[3]
        assert not lflag & termios.ICANON and not lflag & termios.ECHO  # raw mode locally
        os.write(fd, b"stty size\r")
        prompts = wait_prompt(fd, seen, prompts)
        assert b"24 80" in seen
        set_size(fd, 33, 111)  # the kernel sends SIGWINCH to the CLI
        deadline = time.monotonic() + 20
        while b"33 111" not in seen:  # the resize travels asynchronously; ask until it landed
            assert time.monotonic() < deadline, bytes(seen[-400:])
            os.write(fd, b"stty size\r")
            prompts = wait_prompt(fd, seen, prompts)
        os.write(fd, b"sleep 30\r")
        time.sleep(0.5)
        os.write(fd, b"\x03")  # Ctrl-C goes to the remote shell, not the local CLI
        prompts = wait_prompt(fd, seen, prompts)
        os.write(fd, b"echo still-$((40+2))\r")
        prompts = wait_prompt(fd, seen, prompts)
        assert b"still-42" in seen
        os.write(fd, b"exit 5\r")
        read_until(fd, b"LOCAL-AFTER", seen)
        read_until(fd, b"icanon", seen)
        _, status = os.waitpid(pid, 0)
        pid = 0
    finally:
        if pid:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 5
    after = bytes(seen).split(b"LOCAL-AFTER")[1]
    assert b"-icanon" not in after and b" echo " in after.replace(b"\r\n", b" ")  # restored


# -- the browser console in headless Chromium -------------------------------------------------

@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'chromium'}", "--window-size=1000,700"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def screen_shows(browser, pattern: str) -> bool:
    return bool(re.search(pattern, browser.execute_script("return window.consoleText()"),
                          re.MULTILINE))


def test_browser_console_runs_a_shell_with_resize_and_exit(stack, browser, operator, running,
                                                           unique):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get(f"{stack.url}/console/local/{unique}")
    browser.find_element(By.ID, "token").send_keys(
        operator.session.headers["Authorization"].removeprefix("Bearer "))
    browser.find_element(By.ID, "open").click()
    eventually(lambda: browser.find_element(By.ID, "status").text == "connected")
    eventually(lambda: screen_shows(browser, r"^/ # "))
    keys = browser.find_element(By.CSS_SELECTOR, ".xterm-helper-textarea")
    keys.send_keys("echo $((6*7))" + Keys.ENTER)
    eventually(lambda: screen_shows(browser, r"^42$"))

    cols, rows = browser.execute_script("return window.consoleSize()")
    browser.set_window_size(700, 500)
    smaller = eventually(lambda: (browser.execute_script("return window.consoleSize()")
                                  != [cols, rows]) and browser.execute_script(
                                      "return window.consoleSize()"))
    keys.send_keys("stty size" + Keys.ENTER)
    eventually(lambda: screen_shows(browser, rf"^{smaller[1]} {smaller[0]}$"))

    keys.send_keys("exit 3" + Keys.ENTER)
    eventually(lambda: browser.find_element(By.ID, "status").text == "exit 3")
    # Everything the page loaded came from the API itself.
    loaded = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)")
    assert loaded and all(name.startswith(stack.url) or name.startswith("ws://127.0.0.1")
                          for name in loaded)


# -- a host reached over mutual TLS --------------------------------------------------------------

@pytest.fixture(scope="module")
def tls_host(state_dir, admin, engine):
    name = f"ses{os.getpid() % 100000}"
    remote = start_on_a_free_subnet(name, state_dir, range(60, 70))
    host = f"tls-{name}"
    try:
        remote.load_image_from(engine, BUSYBOX)
        response = admin.post("/hosts", json={"name": host, "url": remote.url, "tls": {
            "ca_cert": remote.ca_pem, "client_cert": remote.client_cert_pem,
            "client_key": remote.client_key_pem}})
        assert response.status_code == 201, response.text
        eventually(lambda: admin.get(f"/hosts/{host}/info").status_code == 200, timeout=30)
        yield host, remote
    finally:
        admin.delete(f"/hosts/{host}")
        remote.stop()


def exercise_remote_session(operator, host: str, client, unique: str) -> None:
    """A shell with a size, its exit code, then a disconnect that must kill its process."""
    spec = {"image": BUSYBOX, "name": unique, "command": ["sleep", "600"]}
    job = operator.post(f"/hosts/{host}/containers", params={"wait": 60}, json=spec).json()
    assert job["state"] == "succeeded", job
    try:
        base = f"/hosts/{host}/containers/{unique}/sessions"
        term = Terminal(operator, operator.post(base, json={"cmd": ["sh"], "size": [90, 20]}).json())
        term.send(b"stty size; echo $((6*7))\n")
        term.wait_for(b"42")
        assert b"20 90" in term.shown
        term.send(b"exit 4\n")
        assert term.wait_closed()[0] == 1000 and term.controls == [{"exit": 4}]
        term = Terminal(operator, operator.post(base, json={"cmd": ["sh"]}).json())
        term.send(b"sleep 4327\n")
        eventually(lambda: "4327" in processes(client, unique) or None)
        term.abandon()
        eventually(lambda: "4327" not in processes(client, unique) or None, timeout=30)
    finally:
        with contextlib.suppress(docker.errors.NotFound):
            client.containers.get(unique).remove(force=True)


@pytest.mark.remote
def test_a_session_on_a_tls_host_works_and_leaves_nothing_behind(operator, tls_host, unique):
    host, remote = tls_host
    client = remote.client()
    try:
        exercise_remote_session(operator, host, client, unique)
    finally:
        client.close()


@pytest.fixture(scope="module")
def ssh_host(state_dir, admin, engine):
    for index in range(65, 70):
        remote = SSHEngine(f"sse{index}", state_dir, subnet_index=index)
        try:
            remote.start()
            break
        except RuntimeError as exc:
            if "already used" not in str(exc):
                raise
    else:
        pytest.fail("no free subnet for the SSH engine")
    host = f"ssh-{remote.name}"
    try:
        remote.load_image_from(engine, BUSYBOX)
        response = admin.post("/hosts", json={"name": host, "url": remote.ssh_url, "ssh": {
            "private_key": remote.user_key, "known_hosts": remote.known_hosts}})
        assert response.status_code == 201, response.text
        eventually(lambda: admin.get(f"/hosts/{host}/info").status_code == 200, timeout=30)
        yield host, remote
    finally:
        admin.delete(f"/hosts/{host}")
        remote.stop()


@pytest.mark.remote
def test_a_session_on_an_ssh_host_works_and_leaves_nothing_behind(operator, ssh_host, unique):
    host, remote = ssh_host
    client = remote.client()
    try:
        exercise_remote_session(operator, host, client, unique)
    finally:
        client.close()


@pytest.fixture(scope="module")
def agent_host(state_dir, admin, engine, stack_env):
    """A host served by `dockyard-agent` inside its namespace (the engine's unix socket)."""
    from tests.integration.conftest import STACK_REDIS_URL
    from tests.integration.test_fleet import REDIS_RELAY_PORT, agent_in_namespace

    remote = start_on_a_free_subnet(f"sag{os.getpid() % 100000}", state_dir, range(60, 70))
    host = f"agent-{remote.name}"
    agent = None
    try:
        remote.load_image_from(engine, BUSYBOX)
        response = admin.post("/hosts", json={"name": host, "url": "unix:///var/run/docker.sock",
                                              "route": "agent"})
        assert response.status_code == 201, response.text
        # The agent holds only its own login, key and the public verify key.
        agent = agent_in_namespace(remote, host, stack_env, state_dir / "log",
                                   response.json()["agent_credentials"])
        with Forwarder((remote.host_ip, REDIS_RELAY_PORT),
                       ("127.0.0.1", urlsplit(STACK_REDIS_URL).port or 6379)):
            agent.start()
            eventually(lambda: admin.get(f"/hosts/{host}/info").status_code == 200,
                       timeout=60, interval=0.5)
            yield host, remote
    finally:
        if agent is not None:
            agent.stop()
        admin.delete(f"/hosts/{host}")
        remote.stop()


@pytest.mark.remote
def test_a_session_on_an_agent_host_works_and_leaves_nothing_behind(operator, agent_host,
                                                                    unique):
    host, remote = agent_host
    client = remote.client()
    try:
        exercise_remote_session(operator, host, client, unique)
    finally:
        client.close()
