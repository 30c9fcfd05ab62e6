"""The ssh:// transport: SSH failures become Dockyard errors that name the host."""

from __future__ import annotations

import io
import socket

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from app.core.errors import EngineError, HostUnreachableError
from app.engine.errors import SSHTransportError, translate_engine_error
from app.engine.ssh import UntrustedHostKeyError, host_key_name, ssh_docker_client

HOST = "edge-ssh"


def paramiko_key() -> paramiko.PKey:
    return paramiko.Ed25519Key.from_private_key(io.StringIO(private_key()))


def private_key() -> str:
    return ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption()).decode()


def failed_with(cause: BaseException) -> SSHTransportError:
    try:
        raise SSHTransportError("ssh to root@10.0.0.5:22 failed") from cause
    except SSHTransportError as exc:
        return exc


def test_rejected_key_is_502_ssh_authentication_failed_naming_the_host() -> None:
    error = translate_engine_error(failed_with(paramiko.AuthenticationException("denied")), HOST)
    assert isinstance(error, EngineError) and error.status == 502
    assert "ssh authentication failed" in error.detail and f"'{HOST}'" in error.detail
    assert error.extra["host"] == HOST


def test_unknown_host_key_is_502_not_trusted_with_its_fingerprint() -> None:
    key = paramiko_key()
    error = translate_engine_error(failed_with(UntrustedHostKeyError("10.0.0.5", key)), HOST)
    assert error.status == 502
    assert "host key not trusted" in error.detail and f"'{HOST}'" in error.detail
    assert key.fingerprint in error.detail and "known_hosts" in error.detail


def test_changed_host_key_is_502_mismatch() -> None:
    error = translate_engine_error(
        failed_with(paramiko.BadHostKeyException("10.0.0.5", paramiko_key(), paramiko_key())), HOST)
    assert error.status == 502 and "host key mismatch" in error.detail and HOST in error.detail


@pytest.mark.parametrize("cause", [
    paramiko.ssh_exception.NoValidConnectionsError({("10.0.0.5", 22): ConnectionRefusedError()}),
    TimeoutError("timed out"),
    paramiko.SSHException("Error reading SSH protocol banner"),
    EOFError(),
], ids=["refused", "timeout", "no-banner", "eof"])
def test_ssh_that_cannot_connect_is_503_naming_the_host(cause: BaseException) -> None:
    error = translate_engine_error(failed_with(cause), HOST)
    assert isinstance(error, HostUnreachableError) and error.status == 503
    assert f"'{HOST}'" in error.detail and "over ssh" in error.detail


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_real_refused_ssh_connection_is_503() -> None:
    url = f"ssh://root@127.0.0.1:{closed_port()}"
    with pytest.raises(SSHTransportError) as caught:
        ssh_docker_client(url, {"private_key": private_key()}, "1.41", 2, 2)
    error = translate_engine_error(caught.value, HOST)
    assert error.status == 503 and "Unable to connect" in error.detail


def test_stored_material_that_no_longer_parses_is_502_without_the_key() -> None:
    with pytest.raises(SSHTransportError) as caught:
        ssh_docker_client("ssh://root@127.0.0.1:22", {"private_key": "garbage"}, "1.41", 2, 2)
    error = translate_engine_error(caught.value, HOST)
    assert error.status == 502 and "private_key" in error.detail


@pytest.mark.parametrize(("url", "name"), [("ssh://root@10.0.0.5", "10.0.0.5"),
                                           ("ssh://root@10.0.0.5:22", "10.0.0.5"),
                                           ("ssh://root@10.0.0.5:2222", "[10.0.0.5]:2222")])
def test_known_hosts_names_the_server_like_openssh(url: str, name: str) -> None:
    assert host_key_name(url) == name
