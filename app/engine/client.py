"""Docker clients per host, cached per process and rebuilt when the host record changes."""

from __future__ import annotations

import logging
import os
import shutil
import threading
from pathlib import Path
from typing import Any

import docker
from docker.constants import DEFAULT_DOCKER_API_VERSION
from docker.tls import TLSConfig

from app.engine.ssh import ssh_docker_client

logger = logging.getLogger(__name__)

_MIN_API_VERSION = "1.24"


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


class EngineClients:
    """One client per host per process, keyed by the host record's revision."""

    def __init__(self, tls_dir: Path, timeout: float, pool_size: int = 10) -> None:
        self.tls_dir = tls_dir
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
            # Connects at once: one SSH connection per host per process, channels pooled on it.
            client = ssh_docker_client(record["url"], credentials or {}, _MIN_API_VERSION,
                                       self.timeout, self.pool_size)
        else:
            tls_config = self._tls_config(record, credentials) if credentials else None
            client = docker.DockerClient(base_url=record["url"], version=_MIN_API_VERSION,
                                         timeout=self.timeout, tls=tls_config,
                                         max_pool_size=self.pool_size)
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

    def _tls_config(self, record: dict[str, Any], tls: dict[str, str]) -> TLSConfig:
        # docker-py and ssl need files; they live in a private directory of this process.
        folder = self.tls_dir / f"{record['name']}-{record.get('revision', 1)}-{os.getpid()}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True, mode=0o700)
        paths = {}
        for field in ("ca_cert", "client_cert", "client_key"):
            path = folder / f"{field}.pem"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(tls[field])
            paths[field] = str(path)
        return TLSConfig(client_cert=(paths["client_cert"], paths["client_key"]),
                         ca_cert=paths["ca_cert"], verify=True)
