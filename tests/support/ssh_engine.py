"""A real Docker engine in its own network namespace, reachable only over SSH, for integration tests."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from tests.support.remote_engine import RemoteEngine, _cmdline, _pid_alive, _run, _write_private

logger = logging.getLogger(__name__)

SSHD = "/usr/sbin/sshd"
SSH_PORT = 22
_PRIVSEP_DIR = Path("/run/sshd")


def openssh_private_key(key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                             serialization.NoEncryption()).decode()


def openssh_public_key(key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                         serialization.PublicFormat.OpenSSH).decode()


def new_user_key() -> str:
    """A fresh Ed25519 private key in OpenSSH format (authorized nowhere)."""
    return openssh_private_key(ed25519.Ed25519PrivateKey.generate())


class SSHEngine(RemoteEngine):
    """A dockerd listening only on its unix socket, with Debian's sshd beside it in the namespace.

    sshd listens on ``address:22``, accepts only ``user_key`` for root (no passwords) and sets
    ``DOCKER_HOST`` to the engine's socket for every session, so ``docker system dial-stdio``
    run over SSH reaches this engine and no other.

    Attributes:
        ssh_url: Dockyard host URL, ``ssh://root@10.213.N.2``.
        user_key: OpenSSH private key that sshd authorizes.
        known_hosts: known_hosts line naming the server's host key.
    """

    def __init__(self, name: str, state_dir: Path, subnet_index: int) -> None:
        super().__init__(name, state_dir, subnet_index, listen_tcp=False)
        self.ssh_url = f"ssh://root@{self.address}"
        self.ssh_dir = self.dir / "sshd"
        self.sshd_log = self.dir / "sshd.log"
        self.sshd_pidfile = self.ssh_dir / "sshd.pid"
        self.user_key = ""
        self.known_hosts = ""
        self._sshd: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> None:
        """Start the engine, then sshd; on failure everything is torn down again."""
        super().start(timeout)
        try:
            self._write_ssh_files()
            self.start_sshd(timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop sshd and every session it serves, then the engine (never raises)."""
        with contextlib.suppress(Exception):
            self.stop_sshd()
        super().stop()

    def start_sshd(self, timeout: float = 15) -> None:
        """Start sshd and wait until it sends its banner on ``address:22``.

        Raises:
            RuntimeError: sshd refused its configuration, exited or did not answer in time.
        """
        config = self.ssh_dir / "sshd_config"
        _PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
        _run(self._ns_cmd([SSHD, "-t", "-f", str(config)]))
        self._sshd = self._spawn([SSHD, "-D", "-f", str(config), "-E", str(self.sshd_log)],
                                 self.dir / "sshd.out")
        deadline = time.monotonic() + timeout
        while not self._banner():
            if self._sshd.poll() is not None:
                raise RuntimeError(f"sshd exited early:\n{self._log_tail(self.sshd_log)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"sshd did not answer:\n{self._log_tail(self.sshd_log)}")
            time.sleep(0.05)

    def stop_sshd(self) -> None:
        """Take SSH down completely: the listener and every established session."""
        if self._sshd is not None and self._sshd.poll() is None:
            self._sshd.terminate()
            try:
                self._sshd.wait(5)
            except subprocess.TimeoutExpired:
                self._sshd.kill()
                self._sshd.wait(5)
        self._sshd = None
        # Sessions outlive the listener; kill them so clients see the connection drop.
        sessions = self.sshd_processes()
        for pid in sessions:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while any(_pid_alive(pid) for pid in sessions) and time.monotonic() < deadline:
            time.sleep(0.05)

    def sshd_processes(self) -> list[int]:
        """Pids of sshd processes (listener and sessions) in this engine's namespace."""
        return self._processes_in_netns(lambda comm, cmdline: comm == "sshd")

    def dial_stdio_processes(self) -> list[int]:
        """Pids of ``docker system dial-stdio``: one per open SSH channel to the engine."""
        return self._processes_in_netns(
            lambda comm, cmdline: "docker system dial-stdio" in cmdline)

    def _processes_in_netns(self, wanted: Callable[[str, str], bool]) -> list[int]:
        try:
            ours = os.stat(self.netns_path)
        except OSError:
            return []
        found = []
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                netns = os.stat(f"/proc/{name}/ns/net")
                comm = Path(f"/proc/{name}/comm").read_text().strip()
            except OSError:
                continue
            if (netns.st_dev, netns.st_ino) == (ours.st_dev, ours.st_ino) \
                    and wanted(comm, _cmdline(int(name))) and _pid_alive(int(name)):
                found.append(int(name))
        return sorted(found)

    def ssh_connections(self) -> list[str]:
        """Established TCP connections to sshd, as seen from the root namespace (``ip:port``)."""
        out = _run(["ss", "-Htn", "state", "established", "dst", f"{self.address}:{SSH_PORT}"]).stdout
        return sorted(line.split()[-2] for line in out.splitlines() if line.strip())

    def accepted_logins(self) -> int:
        """How many SSH connections sshd has authenticated since it started."""
        try:
            return self.sshd_log.read_text(errors="replace").count("Accepted publickey for root")
        except OSError:
            return 0

    def _banner(self) -> bool:
        try:
            with socket.create_connection((self.address, SSH_PORT), timeout=1) as sock:
                return sock.recv(8).startswith(b"SSH-")
        except OSError:
            return False

    def _write_ssh_files(self) -> None:
        self.ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        host_key = ed25519.Ed25519PrivateKey.generate()
        user_key = ed25519.Ed25519PrivateKey.generate()
        _write_private(self.ssh_dir / "ssh_host_ed25519_key", openssh_private_key(host_key))
        (self.ssh_dir / "authorized_keys").write_text(
            openssh_public_key(user_key) + " dockyard-test\n")
        self.user_key = openssh_private_key(user_key)
        self.known_hosts = f"{self.address} {openssh_public_key(host_key)}\n"
        (self.ssh_dir / "sshd_config").write_text("\n".join([
            f"ListenAddress {self.address}:{SSH_PORT}",
            f"HostKey {self.ssh_dir / 'ssh_host_ed25519_key'}",
            f"PidFile {self.sshd_pidfile}",
            f"AuthorizedKeysFile {self.ssh_dir / 'authorized_keys'}",
            # The test state directory's parents are not ours to tighten.
            "StrictModes no",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "AllowTcpForwarding no",
            "X11Forwarding no",
            "PrintMotd no",
            "LogLevel INFO",
            f"SetEnv DOCKER_HOST=unix://{self.docker_sock}",
            "",
        ]))
