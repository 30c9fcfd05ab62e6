"""No engine private key is left in clear on disk by the workers (mTLS and SSH hosts)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.integration.conftest import Api
from tests.support.pki import cert_pem, key_pem, make_cert
from tests.support.remote_engine import RemoteEngine
from tests.support.ssh_engine import SSHEngine, new_user_key

pytestmark = pytest.mark.remote

# Shared scratch places a key could be spilled to, besides the stack's state folder.
SCRATCH_DIRS = (Path("/tmp"), Path("/dev/shm"))
_CHUNK = 1 << 20


def identifying_lines(pem: str, same_kind: str, public: str) -> list[bytes]:
    """The base64 lines of a private key that identify it: any one of them found is a leak.

    Lines it shares with ``same_kind`` (another key of its type and format: the format's
    constant prefix) or with its ``public`` half (written in the clear on purpose) are left out.
    """
    body = [line.strip() for line in pem.splitlines()[1:-1] if len(line.strip()) >= 48]
    return [line.encode() for line in body if line not in same_kind and line not in public]


def files_containing(roots: list[Path], needles: list[bytes]) -> list[str]:
    """Every regular file under ``roots`` that holds one of ``needles`` (unreadable ones skipped)."""
    overlap = max(len(needle) for needle in needles)
    found = []
    for root in roots:
        for folder, _dirs, names in os.walk(root, onerror=lambda _error: None):
            for name in names:
                path = os.path.join(folder, name)
                if not os.path.isfile(path) or os.path.islink(path):
                    continue
                try:
                    with open(path, "rb") as handle:
                        tail = b""
                        while chunk := handle.read(_CHUNK):
                            window = tail + chunk
                            if any(needle in window for needle in needles):
                                found.append(path)
                                break
                            tail = window[-overlap:]
                except OSError:
                    continue
    return found


def dockyard_client_tls(remote: RemoteEngine) -> dict[str, str]:
    """A client certificate the remote engine accepts, with a key that exists only in memory.

    The engine's own ``client_key_pem`` is also written to its folder by the fixture, so the
    key Dockyard gets here is a fresh one signed by the engine's CA.
    """
    ca_key = serialization.load_pem_private_key((remote.tls_dir / "ca-key.pem").read_bytes(), None)
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = make_cert("dockyard-key-material", client_key, f"dockyard-test-ca-{remote.name}",
                       ca_key, ca=False)
    return {"ca_cert": remote.ca_pem, "client_cert": cert_pem(client),
            "client_key": key_pem(client_key)}


@pytest.fixture(scope="module")
def tls_engine(state_dir: Path) -> Iterator[RemoteEngine]:
    remote = RemoteEngine("km-tls", state_dir, subnet_index=41)
    try:
        remote.start()
        yield remote
    finally:
        remote.stop()


@pytest.fixture(scope="module")
def ssh_engine(state_dir: Path) -> Iterator[SSHEngine]:
    remote = SSHEngine("km-ssh", state_dir, subnet_index=42)
    try:
        remote.start()
        yield remote
    finally:
        remote.stop()


def run_jobs_and_reads(admin: Api, operator: Api, host: str, volume: str) -> None:
    """Ops-lane jobs (a volume created, then removed) and query-lane reads on ``host``."""
    created = operator.post(f"/hosts/{host}/volumes", params={"wait": 60}, json={"name": volume})
    assert created.status_code == 200, created.text
    assert created.json()["state"] == "succeeded", created.json()
    for path in ("version", "info", "volumes", "version"):
        response = admin.get(f"/hosts/{host}/{path}")
        assert response.status_code == 200, response.text
    removed = operator.delete(f"/hosts/{host}/volumes/{volume}", params={"wait": 60})
    assert removed.status_code == 200, removed.text
    assert removed.json()["state"] == "succeeded", removed.json()


def test_jobs_on_tls_and_ssh_hosts_leave_no_private_key_in_the_state_folder_or_tmp(
        admin: Api, operator: Api, tls_engine: RemoteEngine, ssh_engine: SSHEngine,
        state_dir: Path, unique: str) -> None:
    tls = dockyard_client_tls(tls_engine)
    registered = {
        f"{unique}-tls": {"url": tls_engine.url, "tls": tls},
        f"{unique}-ssh": {"url": ssh_engine.ssh_url,
                          "ssh": {"private_key": ssh_engine.user_key,
                                  "known_hosts": ssh_engine.known_hosts}},
    }
    try:
        for name, fields in registered.items():
            response = admin.post("/hosts", json={"name": name, **fields})
            assert response.status_code == 201, response.text
            run_jobs_and_reads(admin, operator, name, f"{unique}-vol")
        needles = [
            *identifying_lines(tls["client_key"], key_pem(ec.generate_private_key(ec.SECP256R1())),
                               tls["client_cert"]),
            *identifying_lines(ssh_engine.user_key, new_user_key(),
                               (ssh_engine.ssh_dir / "authorized_keys").read_text()),
        ]
        assert len(needles) >= 4
        # The search is real: the keys are where the test itself holds them.
        probe = state_dir / f"{unique}-probe"
        probe.write_bytes(b"x" * (_CHUNK - 10) + needles[0])
        assert files_containing([state_dir], needles) == [str(probe)]
        probe.unlink()
        assert files_containing([state_dir, *SCRATCH_DIRS], needles) == []
    finally:
        for name in registered:
            admin.delete(f"/hosts/{name}")
