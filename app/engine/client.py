"""Docker clients per host, cached per process and rebuilt when the host record changes."""

from __future__ import annotations

import logging
import os
import shutil
import ssl
import threading
from pathlib import Path
from typing import Any

import docker
from docker.constants import DEFAULT_DOCKER_API_VERSION
from docker.transport.basehttpadapter import BaseHTTPAdapter

logger = logging.getLogger(__name__)

_MIN_API_VERSION = "1.24"


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def engine_tls_context(tls: dict[str, str]) -> ssl.SSLContext:
    """An mTLS client context built from PEM strings without writing the key to any filesystem.

    ``ssl`` loads a certificate chain only from a path, so the chain and key go into an
    anonymous memory file (memfd) that is closed, and so freed, as soon as they are loaded.
    The context trusts the host's CA and nothing else, and checks the engine's name.
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=tls["ca_cert"])
    fd = os.memfd_create("dockyard-engine-tls", os.MFD_CLOEXEC)
    try:
        with open(fd, "wb", closefd=False) as chain:
            chain.write(f"{tls['client_cert'].strip()}\n{tls['client_key'].strip()}\n".encode())
        context.load_cert_chain(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)
    return context


class InMemoryTLSAdapter(BaseHTTPAdapter):
    """Engine HTTPS over one prepared SSL context, shared by every pooled connection.

    requests' own verification would point urllib3 at CA and key *files* (and at certifi
    when ``verify`` is True, which urllib3 would add to this very context); here the
    context alone decides.
    """

    def __init__(self, context: ssl.SSLContext, max_pool_size: int) -> None:
        self._context = context
        super().__init__(pool_connections=1, pool_maxsize=max_pool_size)

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False,
                         **pool_kwargs: Any) -> None:
        super().init_poolmanager(connections, maxsize, block, ssl_context=self._context,
                                 **pool_kwargs)

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        """Leave verification to the context (CERT_REQUIRED, host's CA, hostname check)."""


class EngineClients:
    """One client per host per process, keyed by the host record's revision."""

    def __init__(self, stale_tls_dir: Path | None, timeout: float, pool_size: int = 10) -> None:
        # Earlier versions wrote TLS keys in clear under ``stale_tls_dir`` and never removed
        # them; nothing is written there any more, so whatever is left is removed.
        if stale_tls_dir is not None:
            shutil.rmtree(stale_tls_dir, ignore_errors=True)
        self.timeout = timeout
        self.pool_size = pool_size
        self._clients: dict[str, tuple[int, docker.DockerClient]] = {}
        self._lock = threading.Lock()

    def get(self, record: dict[str, Any], credentials: dict[str, str] | None) -> docker.DockerClient:
        """The host's client, built on a miss from its record and unsealed credentials.

        ``credentials`` is the host's TLS material for tcp://, its ``ssh`` material for ssh://
        (see ``HostStore.credentials``).
        """
        name, revision = record["name"], int(record.get("revision", 1))
        with self._lock:
            cached = self._clients.get(name)
            if cached and cached[0] == revision:
                return cached[1]
        client = self._build(record, credentials)
        with self._lock:
            old = self._clients.get(name)
            self._clients[name] = (revision, client)
        if old:
            old[1].close()
        return client

    def cached(self, name: str, revision: int) -> docker.DockerClient | None:
        with self._lock:
            hit = self._clients.get(name)
        return hit[1] if hit and hit[0] == revision else None

    def forget(self, name: str) -> None:
        """Drop a host's client, e.g. after its engine restarted and the pool went stale."""
        with self._lock:
            old = self._clients.pop(name, None)
        if old:
            old[1].close()

    def _build(self, record: dict[str, Any], credentials: dict[str, str] | None
               ) -> docker.DockerClient:
        if record["url"].startswith("ssh://"):
            # Imported here: paramiko loads only in processes that talk to an ssh:// host.
            from app.engine.ssh import ssh_docker_client

            # Connects at once: one SSH connection per host per process, channels pooled on it.
            client = ssh_docker_client(record["url"], credentials or {}, _MIN_API_VERSION,
                                       self.timeout, self.pool_size)
        else:
            # tls=True turns tcp:// into https://; the adapter mounted next replaces docker-py's.
            client = docker.DockerClient(base_url=record["url"], version=_MIN_API_VERSION,
                                         timeout=self.timeout, tls=bool(credentials),
                                         max_pool_size=self.pool_size)
            if credentials:
                client.api.mount("https://", InMemoryTLSAdapter(engine_tls_context(credentials),
                                                                self.pool_size))
        # requests would otherwise let REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE replace the host's CA
        # and route engine traffic through *_PROXY variables. It must be off before the first
        # call, so the API version is negotiated here rather than by version="auto".
        client.api.trust_env = False
        try:
            server = client.api.version(api_version=False)["ApiVersion"]
        except BaseException:
            client.close()  # an ssh client holds a connection and its thread
            raise
        client.api._version = min(server, DEFAULT_DOCKER_API_VERSION, key=_version_key)
        return client
