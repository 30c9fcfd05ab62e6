"""A real Docker engine in its own network namespace, reachable over mTLS, for integration tests."""

from __future__ import annotations

import contextlib
import datetime
import functools
import ipaddress
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import docker
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

logger = logging.getLogger(__name__)

DOCKERD_PORT = 2376
"""TCP port the remote dockerd listens on (inside its namespace)."""

API_VERSION_FALLBACK = "1.41"
"""Engine API version of dockerd 20.10, used until the engine has told us its own."""

_NETNS_DIR = Path("/var/run/netns")
_LONG_PATH_EXEC_DIR = Path("/run/dy-remote")
_GUARD_METRIC = 4242
_TERM_GRACE = 15.0
_CERT_VALIDITY = datetime.timedelta(days=2)
_SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Unix socket paths are limited to 107 bytes; the longest one dockerd/containerd create
# below exec-root is "containerd/containerd.sock.ttrpc" (33 bytes).
_MAX_SOCKET_DIR_LEN = 70


# --------------------------------------------------------------------------- certificates


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def _cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _make_ca(common_name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Create a self-signed CA certificate.

    Args:
        common_name: Subject common name of the CA.

    Returns:
        The CA certificate and its private key.
    """
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + _CERT_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _make_leaf(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    common_name: str,
    usage: x509.ObjectIdentifier,
    sans: list[x509.GeneralName] | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Create a leaf certificate signed by ``ca_cert``.

    Args:
        ca_cert: Issuing CA certificate.
        ca_key: Issuing CA private key.
        common_name: Subject common name.
        usage: Extended key usage (server or client authentication).
        sans: Subject alternative names, if any.

    Returns:
        The certificate and its private key.
    """
    key = _new_key()
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + _CERT_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


@functools.cache
def wrong_ca_pem() -> str:
    """Return the PEM of a CA that has nothing to do with any RemoteEngine.

    The same CA is returned for the whole process. Useful for "certificate does not
    match" tests: a client trusting only this CA must fail the TLS handshake.

    Returns:
        PEM text of an unrelated, self-signed CA certificate.
    """
    cert, _ = _make_ca("dockyard-test-unrelated-ca")
    return _cert_pem(cert)


# --------------------------------------------------------------------------- small helpers


def _run(args: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing its output.

    Args:
        args: Command and arguments.
        check: Raise on a non-zero exit status.

    Returns:
        The completed process.

    Raises:
        RuntimeError: ``check`` is set and the command failed.
    """
    proc = subprocess.run(args, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with mode 0600 from the start."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(path, 0o600)


def _pid_alive(pid: int) -> bool:
    """Tell whether ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The state letter follows the parenthesised command name.
    return stat[stat.rfind(")") + 2 :][:1] not in ("Z", "X", "")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _ancestors(pid: int) -> set[int]:
    """Return ``pid`` and all its ancestors."""
    found = {pid}
    while pid > 1:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            pid = int(stat[stat.rfind(")") + 2 :].split()[1])
        except (OSError, ValueError, IndexError):
            break
        found.add(pid)
    return found


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _unescape_mount(path: str) -> str:
    """Decode the octal escapes (``\\040`` etc.) used in /proc/self/mountinfo."""
    return path.encode().decode("unicode_escape")


def _mounts_under(prefixes: list[Path]) -> list[str]:
    """List mount points at or below any of ``prefixes``, deepest first."""
    found: list[str] = []
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return found
    roots = [str(p).rstrip("/") for p in prefixes]
    for line in lines:
        fields = line.split()
        if len(fields) < 5:
            continue
        mnt = _unescape_mount(fields[4])
        if any(mnt == r or mnt.startswith(r + "/") for r in roots):
            found.append(mnt)
    # Later mounts may stack on earlier ones: unmount in reverse order, deepest first.
    found.reverse()
    found.sort(key=lambda m: m.count("/"), reverse=True)
    return found


def _cgroup_mounts() -> list[Path]:
    """Return the mount points of all cgroup (v1 and v2) hierarchies."""
    mounts: list[Path] = []
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return mounts
    for line in lines:
        left, _, right = line.partition(" - ")
        fstype = right.split(" ", 1)[0]
        if fstype in ("cgroup", "cgroup2"):
            mounts.append(Path(_unescape_mount(left.split()[4])))
    return mounts


# --------------------------------------------------------------------------- the engine


class RemoteEngine:
    """A dockerd running in its own network namespace, reachable only over mutual TLS.

    The engine lives in network namespace ``dy-<name>`` and is connected to the root
    namespace by a veth pair on a private /30 (``10.213.<subnet_index>.0/30``). It runs
    its own containerd, data-root, exec-root and default bridge, so it shares nothing
    with any other engine on the machine except the kernel.

    Attributes:
        name: Short name of the engine.
        state_dir: Parent directory; the engine keeps everything in ``state_dir/remote-<name>``.
        subnet_index: Third octet of the engine's /30.
        netns: Name of the network namespace.
        host_veth: Name of the root-namespace end of the veth pair.
        ns_veth: Name of the namespace end of the veth pair.
        host_ip: Address of the root-namespace end (``10.213.N.1``).
        address: Address of the engine (``10.213.N.2``).
        url: Docker host URL of the engine (``tcp://10.213.N.2:2376``).
        ca_pem: PEM of the CA that signed both the server and the client certificate.
        client_cert_pem: PEM of the client certificate (clientAuth).
        client_key_pem: PEM of the client private key.
        api_version: Engine API version reported by the engine (after start()).
    """

    def __init__(self, name: str, state_dir: Path, subnet_index: int = 1,
                 listen_tcp: bool = True) -> None:
        """Describe an engine; nothing is created until start().

        Args:
            name: Short name (letters, digits, dash); used in namespace and interface names.
            state_dir: Parent directory for the engine's files.
            subnet_index: Third octet of the /30 used for the link, 0..255.
            listen_tcp: Listen on ``tcp://address:2376`` with mutual TLS. If False the engine
                listens only on its unix socket (e.g. to be reached over SSH), ``url`` is that
                socket and ``client()``/``cli_env()`` use it.

        Raises:
            ValueError: Bad name or subnet index.
        """
        if not name or not all(c.isalnum() or c == "-" for c in name):
            raise ValueError(f"invalid engine name {name!r}")
        if not 0 <= subnet_index <= 255:
            raise ValueError(f"subnet_index must be 0..255, got {subnet_index}")
        self.name = name
        self.state_dir = Path(state_dir).absolute()
        self.subnet_index = subnet_index
        self.listen_tcp = listen_tcp
        self.netns = f"dy-{name}"
        self.host_veth = f"dyh-{name}"[:15]
        self.ns_veth = f"dyn-{name}"[:15]
        self.host_ip = f"10.213.{subnet_index}.1"
        self.address = f"10.213.{subnet_index}.2"
        self.subnet = f"10.213.{subnet_index}.0/30"
        self.url = f"tcp://{self.address}:{DOCKERD_PORT}"
        self.bip = f"172.29.{subnet_index}.1/24"
        self.ca_pem = ""
        self.client_cert_pem = ""
        self.client_key_pem = ""
        self.api_version = API_VERSION_FALLBACK

        self.dir = self.state_dir / f"remote-{name}"
        self.tls_dir = self.dir / "tls"
        self.data_root = self.dir / "data"
        short_dir = len(str(self.dir)) <= _MAX_SOCKET_DIR_LEN - len("/run")
        # Keep the unix sockets below exec-root short enough for sun_path.
        self.exec_root = self.dir / "run" if short_dir else _LONG_PATH_EXEC_DIR / name
        self.containerd_dir = self.exec_root / "containerd"
        self.containerd_sock = self.containerd_dir / "containerd.sock"
        self.docker_sock = (self.dir if short_dir else self.exec_root) / "docker.sock"
        self.dockerd_pidfile = self.dir / "dockerd.pid"
        self.containerd_pidfile = self.dir / "containerd.pid"
        self.dockerd_log = self.dir / "dockerd.log"
        self.containerd_log = self.dir / "containerd.log"
        self.cgroup_parent = f"dy-{name}"
        if not listen_tcp:
            self.url = f"unix://{self.docker_sock}"

        self._dockerd: subprocess.Popen[bytes] | None = None
        self._containerd: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        """Return a short description."""
        return f"RemoteEngine({self.name!r}, {self.url})"

    def __enter__(self) -> RemoteEngine:
        """Start the engine."""
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop the engine."""
        self.stop()

    # ------------------------------------------------------------------ public API

    @property
    def netns_path(self) -> Path:
        """Path of the namespace file, usable with ``nsenter --net=``."""
        return _NETNS_DIR / self.netns

    @property
    def ca_path(self) -> Path:
        """Path of ``ca.pem`` (the engine's CA)."""
        return self.tls_dir / "ca.pem"

    @property
    def client_cert_path(self) -> Path:
        """Path of ``cert.pem`` (client certificate)."""
        return self.tls_dir / "cert.pem"

    @property
    def client_key_path(self) -> Path:
        """Path of ``key.pem`` (client key, mode 0600)."""
        return self.tls_dir / "key.pem"

    def start(self, timeout: float = 30) -> None:
        """Create certificates, namespace and link, then start containerd and dockerd.

        Any leftovers of an earlier run with the same name are removed first. On failure
        everything created so far is torn down again.

        Args:
            timeout: Seconds to wait for the engine to answer over mTLS.

        Raises:
            RuntimeError: The engine could not be started.
        """
        started = time.monotonic()
        self._cleanup(stale=True)
        try:
            self._check_subnet_free()
            self.dir.mkdir(parents=True, exist_ok=True)
            self.exec_root.mkdir(parents=True, exist_ok=True)
            self.data_root.mkdir(parents=True, exist_ok=True)
            self._write_certs()
            self._setup_network()
            self._start_containerd(started + timeout)
            self._start_dockerd(started + timeout)
        except BaseException:
            logger.exception("starting %r failed; cleaning up", self)
            self._cleanup(stale=False)
            raise
        logger.info("%r started in %.1fs", self, time.monotonic() - started)

    def stop(self) -> None:
        """Kill the engine and remove its namespace, link, mounts, cgroups and files.

        Idempotent and never raises; problems are logged.
        """
        started = time.monotonic()
        try:
            self._cleanup(stale=False)
        except Exception:
            logger.exception("stopping %r failed", self)
        logger.info("%r stopped in %.1fs", self, time.monotonic() - started)

    def link_down(self, silent: bool = False) -> None:
        """Cut the link between the root namespace and the engine.

        Args:
            silent: If False (default) the root-namespace end is set down; new
                connections then fail at once with "No route to host" (a guard route
                keeps the packets from leaving through the default route). If True the
                namespace end is set down instead: packets are silently dropped, so
                connections hang until they time out, like a real network partition.
        """
        if silent:
            self._ns_run(["ip", "link", "set", self.ns_veth, "down"])
        else:
            _run(["ip", "link", "set", self.host_veth, "down"])

    def link_up(self) -> None:
        """Restore the link cut by link_down() (either kind)."""
        self._ns_run(["ip", "link", "set", self.ns_veth, "up"])
        _run(["ip", "link", "set", self.host_veth, "up"])

    def client(self, timeout: int = 30) -> docker.DockerClient:
        """Return a docker-py client talking mTLS to the engine.

        Creating the client does not contact the engine.

        Args:
            timeout: Default request timeout in seconds.

        Returns:
            A new DockerClient.
        """
        if not self.listen_tcp:
            return docker.DockerClient(base_url=self.url, version=self.api_version, timeout=timeout)
        tls = docker.tls.TLSConfig(
            client_cert=(str(self.client_cert_path), str(self.client_key_path)),
            ca_cert=str(self.ca_path),
            verify=True,
        )
        client = docker.DockerClient(
            base_url=f"https://{self.address}:{DOCKERD_PORT}",
            tls=tls,
            version=self.api_version,
            timeout=timeout,
        )
        # APIClient is a requests.Session. With trust_env on, REQUESTS_CA_BUNDLE or
        # CURL_CA_BUNDLE in the environment silently replace our CA, and *_PROXY
        # variables would apply: neither is wanted for a private mTLS endpoint.
        client.api.trust_env = False
        return client

    def cli_env(self) -> dict[str, str]:
        """Return a complete environment for running the ``docker`` CLI against the engine.

        It is a copy of ``os.environ`` with ``DOCKER_HOST``, ``DOCKER_TLS_VERIFY`` and
        ``DOCKER_CERT_PATH`` set and ``DOCKER_CONTEXT`` removed, so pass it as ``env=``.

        Returns:
            The environment.
        """
        env = dict(os.environ)
        env.pop("DOCKER_CONTEXT", None)
        if not self.listen_tcp:
            for var in ("DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH"):
                env.pop(var, None)
            env["DOCKER_HOST"] = self.url
            return env
        env.update(
            DOCKER_HOST=self.url,
            DOCKER_TLS_VERIFY="1",
            DOCKER_CERT_PATH=str(self.tls_dir),
        )
        return env

    def load_image_from(self, local: docker.DockerClient, ref: str) -> None:
        """Copy an image from another engine into this one, streaming it.

        Args:
            local: Client of the engine that has the image.
            ref: Image reference (name:tag or id) to copy; tags are kept.
        """
        stream = local.images.get(ref).save(named=ref)
        remote = self.client(timeout=300)
        try:
            remote.images.load(stream)
        finally:
            remote.close()
        logger.info("loaded %s into %r", ref, self)

    @staticmethod
    def wrong_ca_pem() -> str:
        """Return the PEM of an unrelated CA (see the module function wrong_ca_pem())."""
        return wrong_ca_pem()

    # ------------------------------------------------------------------ start helpers

    def _ns_cmd(self, args: list[str]) -> list[str]:
        return ["nsenter", f"--net={self.netns_path}", *args]

    def _ns_run(self, args: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run(self._ns_cmd(args), check=check)

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PATH"] = _SYSTEM_PATH + ":" + env.get("PATH", "")
        for var in ("DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH", "DOCKER_CONTEXT"):
            env.pop(var, None)
        return env

    def _check_subnet_free(self) -> None:
        """Refuse to start if our /30 is already in use in the root namespace."""
        out = _run(["ip", "-o", "-4", "addr", "show"]).stdout
        ours = ipaddress.ip_network(self.subnet)
        for line in out.splitlines():
            fields = line.split()
            if "inet" in fields:
                iface = ipaddress.ip_interface(fields[fields.index("inet") + 1])
                if iface.network.overlaps(ours):
                    raise RuntimeError(f"{self.subnet} already used by {fields[1]}: {line.strip()}")

    def _write_certs(self) -> None:
        """Generate CA, server and client certificates into ``tls_dir``."""
        self.tls_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.tls_dir, 0o700)
        ca_cert, ca_key = _make_ca(f"dockyard-test-ca-{self.name}")
        server_cert, server_key = _make_leaf(
            ca_cert,
            ca_key,
            f"dockyard-remote-{self.name}",
            ExtendedKeyUsageOID.SERVER_AUTH,
            [
                x509.IPAddress(ipaddress.ip_address(self.address)),
                x509.DNSName("localhost"),
            ],
        )
        client_cert, client_key = _make_leaf(
            ca_cert, ca_key, "dockyard-test-client", ExtendedKeyUsageOID.CLIENT_AUTH
        )
        self.ca_pem = _cert_pem(ca_cert)
        self.client_cert_pem = _cert_pem(client_cert)
        self.client_key_pem = _key_pem(client_key)
        (self.tls_dir / "ca.pem").write_text(self.ca_pem)
        _write_private(self.tls_dir / "ca-key.pem", _key_pem(ca_key))
        (self.tls_dir / "server-cert.pem").write_text(_cert_pem(server_cert))
        _write_private(self.tls_dir / "server-key.pem", _key_pem(server_key))
        (self.tls_dir / "cert.pem").write_text(self.client_cert_pem)
        _write_private(self.tls_dir / "key.pem", self.client_key_pem)

    def _setup_network(self) -> None:
        """Create the namespace, the veth pair, addresses and the guard route."""
        _run(["ip", "netns", "add", self.netns])
        _run(
            [
                "ip", "link", "add", self.host_veth, "type", "veth",
                "peer", "name", self.ns_veth, "netns", self.netns,
            ]
        )  # fmt: skip
        _run(["ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_veth])
        _run(["ip", "link", "set", self.host_veth, "up"])
        # While the link is down, keep packets for the engine off the default route.
        _run(["ip", "route", "replace", "unreachable", self.subnet, "metric", str(_GUARD_METRIC)])
        self._ns_run(["ip", "link", "set", "lo", "up"])
        self._ns_run(["ip", "addr", "add", f"{self.address}/30", "dev", self.ns_veth])
        self._ns_run(["ip", "link", "set", self.ns_veth, "up"])
        self._ns_run(["sysctl", "-qw", "net.ipv4.ip_forward=1"])

    def _spawn(self, args: list[str], log: Path) -> subprocess.Popen[bytes]:
        """Start ``args`` inside the namespace, in a new session, logging to ``log``."""
        with open(log, "ab") as fh:
            return subprocess.Popen(
                self._ns_cmd(args),
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=self._env(),
                cwd=self.dir,
            )

    def _start_containerd(self, deadline: float) -> None:
        """Start a containerd private to this engine and wait for its socket."""
        self.containerd_dir.mkdir(parents=True, exist_ok=True)
        config = self.containerd_dir / "containerd.toml"
        config.write_text(
            "\n".join(
                [
                    "version = 2",
                    f'root = "{self.data_root / "containerd"}"',
                    f'state = "{self.containerd_dir / "daemon"}"',
                    'disabled_plugins = ["io.containerd.grpc.v1.cri"]',
                    "[grpc]",
                    f'  address = "{self.containerd_sock}"',
                    "[debug]",
                    '  address = ""',
                    '  level = "info"',
                    "[metrics]",
                    '  address = ""',
                    '[plugins."io.containerd.internal.v1.opt"]',
                    f'  path = "{self.data_root / "containerd-opt"}"',
                    "",
                ]
            )
        )
        self._containerd = self._spawn(["containerd", "--config", str(config)], self.containerd_log)
        self.containerd_pidfile.write_text(f"{self._containerd.pid}\n")
        while not self.containerd_sock.is_socket():
            if self._containerd.poll() is not None:
                raise RuntimeError(f"containerd exited early:\n{self._log_tail(self.containerd_log)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"containerd did not come up:\n{self._log_tail(self.containerd_log)}")
            time.sleep(0.05)

    def _start_dockerd(self, deadline: float) -> None:
        """Start dockerd and wait until it answers over mTLS."""
        config = self.dir / "daemon.json"
        # The engine ID comes from the trust key; by default that is the shared
        # /etc/docker/key.json, which would give every engine on this host the same ID.
        config.write_text(json.dumps({"deprecated-key-path": str(self.dir / "key.json")}) + "\n")
        args = [
            "dockerd",
            "--config-file", str(config),
            "--data-root", str(self.data_root),
            "--exec-root", str(self.exec_root),
            "--pidfile", str(self.dockerd_pidfile),
            "--containerd", str(self.containerd_sock),
            "--cgroup-parent", f"/{self.cgroup_parent}",
            "--bip", self.bip,
            "-H", f"unix://{self.docker_sock}",
        ]  # fmt: skip
        if self.listen_tcp:
            args += [
                "-H", f"tcp://{self.address}:{DOCKERD_PORT}",
                "--tlsverify",
                "--tlscacert", str(self.tls_dir / "ca.pem"),
                "--tlscert", str(self.tls_dir / "server-cert.pem"),
                "--tlskey", str(self.tls_dir / "server-key.pem"),
            ]  # fmt: skip
        self._dockerd = self._spawn(args, self.dockerd_log)
        last_error: Exception | None = None
        while True:
            if self._dockerd.poll() is not None:
                raise RuntimeError(f"dockerd exited early:\n{self._log_tail(self.dockerd_log)}")
            try:
                cli = self.client(timeout=2)
                try:
                    self.api_version = cli.version()["ApiVersion"]
                finally:
                    cli.close()
                return
            except Exception as exc:
                last_error = exc
            if time.monotonic() > deadline:
                tail = self._log_tail(self.dockerd_log)
                raise RuntimeError(f"dockerd did not answer at {self.url} ({last_error}):\n{tail}")
            time.sleep(0.2)

    @staticmethod
    def _log_tail(path: Path, lines: int = 30) -> str:
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # ------------------------------------------------------------------ teardown

    def _cleanup(self, *, stale: bool) -> None:
        """Remove everything this engine may have left, whether running or crashed.

        Every step runs even if an earlier one failed.

        Args:
            stale: Called before start(): problems are logged at info level only.
        """
        step_errors: list[str] = []
        log = logger.info if stale else logger.warning

        def step(what: str, fn: Callable[[], None]) -> None:
            try:
                fn()
            except Exception as exc:
                step_errors.append(f"{what}: {exc}")

        netns_ino = self._netns_inode()
        if self._dockerd_pid() is not None:
            step("containers", self._stop_containers)
        step("dockerd", lambda: self._stop_process(self._dockerd, self.dockerd_pidfile, "dockerd"))
        step(
            "containerd",
            lambda: self._stop_process(self._containerd, self.containerd_pidfile, "containerd"),
        )
        self._dockerd = self._containerd = None
        step("leftover processes", lambda: self._kill_leftovers(netns_ino))
        step("cgroups", self._remove_cgroups)
        step("mounts", self._unmount_all)
        step("network", self._remove_network)
        step("files", self._remove_files)
        for err in step_errors:
            log("cleanup of %r: %s", self, err)

    def _stop_containers(self) -> None:
        """Stop running containers at once (``docker stop -t 0``) over the local socket.

        Otherwise dockerd's own shutdown gives each container 10s to honour SIGTERM,
        which a busybox httpd running as PID 1 never does.
        """
        local = docker.DockerClient(
            base_url=f"unix://{self.docker_sock}", version=self.api_version, timeout=5
        )
        try:
            for container in local.containers.list():
                container.stop(timeout=0)
        finally:
            local.close()

    def _dockerd_pid(self) -> int | None:
        """Return the pid of our running dockerd, if any."""
        if self._dockerd is not None:
            return self._dockerd.pid if self._dockerd.poll() is None else None
        pid = self._pid_from_file(self.dockerd_pidfile, "dockerd")
        return pid if pid is not None and _pid_alive(pid) else None

    def _netns_inode(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.netns_path)
        except OSError:
            return None
        return st.st_dev, st.st_ino

    def _pid_from_file(self, pidfile: Path, expect: str) -> int | None:
        """Read a pid file, trusting it only if the process still looks like ours."""
        try:
            pid = int(pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        cmd = _cmdline(pid)
        if expect in cmd and (f"{self.dir}/" in cmd or f"{self.exec_root}/" in cmd):
            return pid
        return None

    def _stop_process(self, proc: subprocess.Popen[bytes] | None, pidfile: Path, expect: str) -> None:
        """SIGTERM a daemon, wait up to 15s, then SIGKILL it."""
        pid = proc.pid if proc is not None else self._pid_from_file(pidfile, expect)
        if pid is None or (proc is not None and proc.poll() is not None):
            return
        if not _pid_alive(pid):
            return
        logger.debug("stopping %s (pid %d) of %r", expect, pid, self)
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        if not self._wait_gone(proc, pid, _TERM_GRACE):
            logger.warning("%s (pid %d) of %r ignored SIGTERM; killing it", expect, pid, self)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                return
            self._wait_gone(proc, pid, 5)

    @staticmethod
    def _wait_gone(proc: subprocess.Popen[bytes] | None, pid: int, timeout: float) -> bool:
        if proc is not None:
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                return False
            return True
        deadline = time.monotonic() + timeout
        while _pid_alive(pid):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def _kill_leftovers(self, netns_ino: tuple[int, int] | None) -> None:
        """SIGKILL every process that is ours but survived its daemon.

        That is any process in our network namespace (docker-proxy, shims, host-network
        containers) or whose command line names our containerd socket or directory.
        """
        spared = _ancestors(os.getpid())
        markers = (str(self.containerd_sock), str(self.dir) + "/", str(self.exec_root) + "/")
        victims: list[int] = []
        for pid in _all_pids():
            if pid in spared:
                continue
            ours = False
            if netns_ino is not None:
                try:
                    st = os.stat(f"/proc/{pid}/ns/net")
                    ours = (st.st_dev, st.st_ino) == netns_ino
                except OSError:
                    continue
            if not ours:
                cmd = _cmdline(pid)
                ours = any(m in cmd for m in markers)
            if ours and _pid_alive(pid):
                victims.append(pid)
        for pid in victims:
            logger.info("killing leftover pid %d (%s) of %r", pid, _cmdline(pid)[:120], self)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while any(_pid_alive(p) for p in victims) and time.monotonic() < deadline:
            time.sleep(0.05)

    def _remove_cgroups(self) -> None:
        """Kill processes in, then remove, the container cgroups under our cgroup parent."""
        for mount in _cgroup_mounts():
            top = mount / self.cgroup_parent
            if not top.is_dir():
                continue
            dirs = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts))
            dirs = [top, *dirs]
            for d in dirs:
                try:
                    for pid in (d / "cgroup.procs").read_text().split():
                        os.kill(int(pid), signal.SIGKILL)
                except (OSError, ValueError):
                    pass
            for d in reversed(dirs):
                for _ in range(50):
                    try:
                        d.rmdir()
                        break
                    except FileNotFoundError:
                        break
                    except OSError:
                        time.sleep(0.05)
                else:
                    logger.warning("could not remove cgroup %s", d)

    def _unmount_all(self) -> None:
        """Unmount everything below our directories (overlays, netns files, shm)."""
        prefixes = [self.dir, self.exec_root]
        for _ in range(5):
            mounts = _mounts_under(prefixes)
            if not mounts:
                return
            for mnt in mounts:
                if _run(["umount", mnt], check=False).returncode != 0:
                    _run(["umount", "-l", mnt], check=False)
        left = _mounts_under(prefixes)
        if left:
            raise RuntimeError(f"mounts left behind: {left}")

    def _remove_network(self) -> None:
        """Delete the namespace, the veth pair and the guard route."""
        if self.netns_path.exists():
            _run(["ip", "netns", "delete", self.netns])
        # Deleting the namespace takes the veth pair with it, asynchronously.
        for _ in range(50):
            if not Path(f"/sys/class/net/{self.host_veth}").exists():
                break
            _run(["ip", "link", "delete", self.host_veth], check=False)
            time.sleep(0.05)
        else:
            raise RuntimeError(f"could not delete {self.host_veth}")
        _run(
            ["ip", "route", "delete", "unreachable", self.subnet, "metric", str(_GUARD_METRIC)],
            check=False,
        )

    def _remove_files(self) -> None:
        """Remove the engine's directories, unless something is still mounted there."""
        for path in (self.dir, self.exec_root):
            if not path.exists():
                continue
            if _mounts_under([path]):
                raise RuntimeError(f"not removing {path}: still has mounts")
            shutil.rmtree(path)
        if self.exec_root.parent == _LONG_PATH_EXEC_DIR:
            with contextlib.suppress(OSError):
                _LONG_PATH_EXEC_DIR.rmdir()


def tcp_reachable(host: str, port: int, timeout: float = 1.0) -> bool:
    """Tell whether a TCP connection to ``host:port`` can be opened.

    Args:
        host: Address to connect to.
        port: TCP port.
        timeout: Seconds to wait.

    Returns:
        True if the connection succeeded.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def start_on_a_free_subnet(name: str, state_dir: Path, indices: range) -> RemoteEngine:
    """Start an engine on the first /30 of ``indices`` no other session holds.

    Sessions may run side by side, each with a namespace name of its own; a subnet already
    in use is skipped.

    Raises:
        RuntimeError: every subnet in ``indices`` is taken.
    """
    for index in indices:
        remote = RemoteEngine(name, state_dir, subnet_index=index)
        try:
            remote.start()
            return remote
        except RuntimeError as exc:
            if "already used" not in str(exc):
                raise
    raise RuntimeError(f"no free subnet among 10.213.{indices.start}-{indices.stop - 1}.0/30")
