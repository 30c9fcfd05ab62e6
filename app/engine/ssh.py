"""The ssh:// transport: a stored key, pinned host keys and one SSH connection per client.

Imported only where an ssh:// host is used (a client is built, or one is registered): it
loads paramiko and docker-py's SSH transport, which other processes never load
(app/engine/ssh_transport.py).
"""

from __future__ import annotations

import io
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import docker
import paramiko
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from app.engine import ssh_transport
from app.engine.errors import SSHTransportError

_sshconn = ssh_transport.load()

logger = logging.getLogger(__name__)

DEFAULT_PORT = 22
MIN_RSA_BITS = 2048
# Where the worker's own ssh client keeps host keys: used only when a host pins none.
SYSTEM_KNOWN_HOSTS = (Path("~/.ssh/known_hosts").expanduser(), Path("/etc/ssh/ssh_known_hosts"))
_KEEPALIVE_SECONDS = 30


class UntrustedHostKeyError(paramiko.SSHException):
    """The SSH server offered a host key that no trusted known_hosts entry names."""

    def __init__(self, host_key_name: str, key: paramiko.PKey) -> None:
        super().__init__(f"no trusted host key for {host_key_name}")
        self.host_key_name = host_key_name
        self.key_type = key.get_name()
        self.fingerprint = key.fingerprint


class SSHMaterialError(ValueError):
    """A field of the ``ssh`` material does not parse; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def host_key_name(url: str) -> str:
    """The name known_hosts uses for the server of ``url``: ``host`` or ``[host]:port``."""
    parts = urlsplit(url)
    port = parts.port or DEFAULT_PORT
    return parts.hostname if port == DEFAULT_PORT else f"[{parts.hostname}]:{port}"


def load_private_key(text: str, passphrase: str | None) -> paramiko.PKey:
    """Parse an OpenSSH or PEM (PKCS#1, PKCS#8, SEC1) private key into a paramiko key.

    Raises:
        SSHMaterialError: on ``private_key`` if it does not parse or its type is unsupported,
            on ``passphrase`` if the key is encrypted and the passphrase is missing or wrong.
    """
    data = text.strip().encode() + b"\n"
    try:
        key = _load_crypto_key(data, None)
    except TypeError:
        if not passphrase:
            raise SSHMaterialError("passphrase", "the key is encrypted: give its passphrase") from None
        try:
            key = _load_crypto_key(data, passphrase.encode())
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise SSHMaterialError("passphrase", "does not decrypt the key") from None
    except (ValueError, UnsupportedAlgorithm):
        raise SSHMaterialError("private_key", "not a private key in OpenSSH or PEM format") from None
    else:
        if passphrase:
            raise SSHMaterialError("passphrase", "the key is not encrypted: leave passphrase out")
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise SSHMaterialError("private_key", f"RSA keys need at least {MIN_RSA_BITS} bits")
        key_class: type[paramiko.PKey] = paramiko.RSAKey
    elif isinstance(key, ed25519.Ed25519PrivateKey):
        key_class = paramiko.Ed25519Key
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        key_class = paramiko.ECDSAKey
    else:
        raise SSHMaterialError("private_key", "unsupported key type: use Ed25519, ECDSA or RSA")
    # paramiko reads only its own PEM flavours; re-encoding in memory accepts PKCS#8 too.
    openssh = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption()).decode()
    try:
        return key_class.from_private_key(io.StringIO(openssh))
    except paramiko.SSHException:
        raise SSHMaterialError("private_key", "unsupported key parameters (e.g. an ECDSA curve "
                                              "other than P-256/384/521)") from None


def _load_crypto_key(data: bytes, password: bytes | None) -> Any:
    try:
        return serialization.load_ssh_private_key(data, password)
    except ValueError:
        return serialization.load_pem_private_key(data, password)


HostKey = tuple[str, str, paramiko.PKey]
"""A known_hosts entry for one name: (name or hashed name, key type, key)."""


def parse_known_hosts(text: str) -> list[HostKey]:
    """Parse OpenSSH known_hosts lines (plain or hashed names; comments and blanks skipped).

    Raises:
        SSHMaterialError: on ``known_hosts`` naming the first line that does not parse.
    """
    found: list[HostKey] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("@"):
            raise SSHMaterialError("known_hosts", f"line {number}: markers (@cert-authority, "
                                                  "@revoked) are not supported")
        try:
            entry = paramiko.hostkeys.HostKeyEntry.from_line(line, number)
        # Untrusted key bytes make paramiko's parsers raise assorted types.
        except Exception:
            entry = None
        if entry is None:
            raise SSHMaterialError("known_hosts", f"line {number}: not a known_hosts entry "
                                                  "('names key-type base64-key') of a supported type")
        found.extend((name, entry.key.get_name(), entry.key) for name in entry.hostnames)
    if not found:
        raise SSHMaterialError("known_hosts", "no host key entries")
    return found


def host_keys(entries: list[HostKey], into: paramiko.HostKeys | None = None) -> paramiko.HostKeys:
    """Add known_hosts entries to a paramiko key table (a new one by default)."""
    table = paramiko.HostKeys() if into is None else into
    for name, key_type, key in entries:
        table.add(name, key_type, key)
    return table


def validate_material(material: dict[str, Any], url: str) -> None:
    """Parse everything a connection to ``url`` will need, so a bad key fails at registration.

    Raises:
        SSHMaterialError: naming the field that does not parse or does not fit ``url``.
    """
    load_private_key(material.get("private_key") or "", material.get("passphrase"))
    if material.get("known_hosts"):
        keys = host_keys(parse_known_hosts(material["known_hosts"]))
        if keys.lookup(host_key_name(url)) is None:
            raise SSHMaterialError("known_hosts", f"no entry for {host_key_name(url)}, the server "
                                                  "of the url")


@dataclass(frozen=True)
class SSHCredentials:
    """What a connection needs, parsed from the host's unsealed ``ssh`` material."""

    username: str
    hostname: str
    port: int
    key: paramiko.PKey
    known_hosts: tuple[HostKey, ...] | None

    @classmethod
    def from_material(cls, url: str, material: dict[str, Any]) -> SSHCredentials:
        parts = urlsplit(url)
        known = material.get("known_hosts")
        return cls(username=parts.username or "", hostname=parts.hostname or "",
                   port=parts.port or DEFAULT_PORT,
                   key=load_private_key(material.get("private_key") or "", material.get("passphrase")),
                   known_hosts=tuple(parse_known_hosts(known)) if known else None)


class _RejectUnknownHostKey(paramiko.MissingHostKeyPolicy):
    """Strict host key checking: a server no known_hosts entry names is refused."""

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str,
                         key: paramiko.PKey) -> None:
        raise UntrustedHostKeyError(hostname, key)


class _ChannelConnection(_sshconn.SSHConnection):
    """An HTTP connection over one SSH channel running ``docker system dial-stdio``."""

    def connect(self) -> None:
        try:
            super().connect()
        except paramiko.SSHException as exc:
            # An OSError lets urllib3 and requests report it as a connection failure (503).
            raise ConnectionError(f"could not open an ssh channel: {exc}") from exc


class _ChannelPool(_sshconn.SSHConnectionPool):
    def _new_conn(self) -> _ChannelConnection:
        return _ChannelConnection(self.ssh_transport, self.timeout, self.ssh_host)


class StoredKeySSHAdapter(_sshconn.SSHHTTPAdapter):
    """docker-py's paramiko adapter, authenticated only by the stored key and pinned host keys.

    One SSH connection carries every request of the client; each pooled HTTP connection is
    a channel on it, reused across requests. ~/.ssh/config, the ssh agent and default
    identities are never consulted. A connection that died (engine host rebooted, sshd
    restarted) is re-established on the next request.
    """

    def __init__(self, url: str, credentials: SSHCredentials, timeout: float,
                 max_pool_size: int) -> None:
        self._credentials = credentials
        self._connect_timeout = timeout
        self._channels: _ChannelPool | None = None
        self._channels_lock = threading.Lock()
        super().__init__(url, timeout=timeout, pool_connections=1, max_pool_size=max_pool_size)

    def _create_paramiko_client(self, base_url: str) -> None:
        creds = self._credentials
        client = paramiko.SSHClient()
        if creds.known_hosts is not None:
            host_keys(list(creds.known_hosts), into=client.get_host_keys())
        else:
            for path in SYSTEM_KNOWN_HOSTS:
                if path.is_file():
                    client.load_system_host_keys(str(path))
        client.set_missing_host_key_policy(_RejectUnknownHostKey())
        self.ssh_client = client
        self.ssh_params = {
            "hostname": creds.hostname, "port": creds.port, "username": creds.username,
            "pkey": creds.key, "allow_agent": False, "look_for_keys": False,
            "timeout": self._connect_timeout, "banner_timeout": self._connect_timeout,
            "auth_timeout": self._connect_timeout, "channel_timeout": self._connect_timeout,
        }

    def _connect(self) -> None:
        creds = self._credentials
        try:
            self.ssh_client.connect(**self.ssh_params)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            self.ssh_client.close()
            raise SSHTransportError(f"ssh to {creds.username}@{creds.hostname}:{creds.port} "
                                    f"failed: {type(exc).__name__}") from exc
        transport = self.ssh_client.get_transport()
        if transport is not None:
            transport.set_keepalive(_KEEPALIVE_SECONDS)
        logger.info("ssh connection to %s@%s:%s opened with key %s", creds.username,
                    creds.hostname, creds.port, creds.key.fingerprint)

    def get_connection(self, url: str, proxies: Any = None) -> _ChannelPool:
        # docker-py keys pools by the full request URL, so each new path would open another
        # channel pool; there is one engine behind this adapter, so there is one pool.
        with self._channels_lock:
            transport = self.ssh_client.get_transport()
            if transport is None or not transport.is_active():
                logger.info("ssh connection to %s lost; reconnecting", self._credentials.hostname)
                if self._channels is not None:
                    self._channels.close()
                    self._channels = None
                self.ssh_client.close()
                self._connect()
            if self._channels is None:
                self._channels = _ChannelPool(ssh_client=self.ssh_client, timeout=self.timeout,
                                              maxsize=self.max_pool_size, host=self.ssh_host)
            return self._channels

    def close(self) -> None:
        with self._channels_lock:
            if self._channels is not None:
                self._channels.close()
                self._channels = None
        super().close()


def ssh_docker_client(url: str, material: dict[str, Any], version: str, timeout: float,
                      pool_size: int) -> docker.DockerClient:
    """A client whose requests travel over one SSH connection authenticated by ``material``.

    Raises:
        SSHTransportError: the stored material cannot be used or the connection failed
            (the cause says why: authentication, host key, unreachable).
    """
    try:
        credentials = SSHCredentials.from_material(url, material)
    except SSHMaterialError as exc:
        raise SSHTransportError(f"stored ssh {exc.field} cannot be used: {exc.message}") from exc
    adapter = StoredKeySSHAdapter(url, credentials, timeout, pool_size)
    # use_ssh_client=True makes docker-py build an adapter that connects lazily (never, here):
    # its paramiko adapter would connect at once with ~/.ssh/config, the agent and default keys.
    try:
        client = docker.DockerClient(base_url=url, version=version, timeout=timeout,
                                     max_pool_size=pool_size, use_ssh_client=True)
    except BaseException:
        adapter.close()
        raise
    client.api.mount("http+docker://ssh", adapter)
    return client
