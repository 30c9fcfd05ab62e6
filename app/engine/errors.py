"""The one place where docker-py exceptions become Dockyard errors."""

from __future__ import annotations

import sys
from typing import Any

import docker.errors
import requests.exceptions

from app.core.errors import (
    ConflictError,
    DockyardError,
    EngineError,
    HostUnreachableError,
    InvalidInputError,
    NotFoundError,
    QueryTimeoutError,
)


class StreamError(docker.errors.DockerException):
    """An error reported in-band in an engine stream (pull, push, build, load).

    docker-py returns these streams without raising, so the consumer raises this
    when a chunk carries ``error``/``errorDetail``.
    """

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class SSHTransportError(docker.errors.DockerException):
    """The SSH connection to a host could not be set up; the paramiko error is ``__cause__``.

    Raised as a DockerException so every task base treats it as an engine failure (and drops
    the cached client); translate_engine_error classifies it by its cause.
    """


def raise_for_stream_chunk(chunk: dict[str, Any]) -> None:
    """Raise StreamError if a decoded stream chunk reports an error."""
    if "errorDetail" in chunk or "error" in chunk:
        detail = chunk.get("errorDetail") or {}
        raise StreamError(detail.get("message") or chunk.get("error") or "stream error",
                          detail.get("code"))


def translate_engine_error(exc: BaseException, host: str) -> DockyardError:
    """Map an exception raised while talking to a host's engine to a Dockyard error.

    Args:
        exc: what docker-py, requests or a stream consumer raised.
        host: the Dockyard host name, named in every message.

    Returns:
        The Dockyard error to report; unknown exceptions become a 502 naming the host.
    """
    if isinstance(exc, DockyardError):
        return exc
    if isinstance(exc, docker.errors.APIError):
        status = exc.status_code or 0
        explanation = str(exc.explanation or exc)
        if status == 404:
            return NotFoundError(explanation, host=host)
        if status == 409:
            return ConflictError(explanation, host=host)
        if status == 400:
            return InvalidInputError(f"engine on host '{host}' rejected the request: {explanation}",
                                     host=host)
        return EngineError(f"engine on host '{host}' answered {status}: {explanation}",
                           host=host, engine_status=status)
    if isinstance(exc, SSHTransportError):
        return _ssh_error(exc, host)
    if isinstance(exc, StreamError):
        return EngineError(f"engine on host '{host}' reported: {exc.message}", host=host)
    if isinstance(exc, requests.exceptions.SSLError):
        return EngineError(f"TLS handshake with host '{host}' failed: {_root_cause(exc)}",
                           host=host)
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return HostUnreachableError(f"host '{host}' did not accept a connection in time",
                                    host=host)
    if isinstance(exc, (requests.exceptions.ConnectionError, ConnectionError, FileNotFoundError,
                        *_no_valid_connections())):
        return HostUnreachableError(f"host '{host}' is unreachable: {_root_cause(exc)}", host=host)
    if isinstance(exc, requests.exceptions.ReadTimeout | TimeoutError):
        return QueryTimeoutError(f"engine on host '{host}' did not answer in time", host=host)
    if isinstance(exc, docker.errors.DockerException):
        cause = exc.__cause__ or exc.__context__
        if cause is not None and not isinstance(cause, docker.errors.DockerException):
            return translate_engine_error(cause, host)
        return EngineError(f"engine on host '{host}' failed: {exc}", host=host)
    return EngineError(f"unexpected failure talking to host '{host}'", host=host)


def _no_valid_connections() -> tuple[type[BaseException], ...]:
    """paramiko's "no address answered" error, if paramiko is loaded (nothing raised it if not)."""
    paramiko = sys.modules.get("paramiko")
    return (paramiko.ssh_exception.NoValidConnectionsError,) if paramiko is not None else ()


def _ssh_error(exc: SSHTransportError, host: str) -> DockyardError:
    """Classify a failed SSH connection by the type of paramiko's error."""
    # An SSHTransportError comes from app.engine.ssh, which loaded paramiko already.
    import paramiko

    from app.engine.ssh import UntrustedHostKeyError

    cause = exc.__cause__
    if isinstance(cause, UntrustedHostKeyError):
        return EngineError(
            f"ssh host key not trusted: host '{host}' offered {cause.key_type} {cause.fingerprint} "
            f"for {cause.host_key_name}, which no ssh.known_hosts entry names; verify it out of band "
            "and add it to the host's ssh.known_hosts", host=host)
    if isinstance(cause, paramiko.BadHostKeyException):
        return EngineError(
            f"ssh host key mismatch: host '{host}' offered {cause.key.get_name()} "
            f"{cause.key.fingerprint}, not the key in ssh.known_hosts; refusing to connect",
            host=host)
    if isinstance(cause, paramiko.AuthenticationException):
        return EngineError(f"ssh authentication failed on host '{host}': the server did not accept "
                           "the stored private key for this user", host=host)
    if isinstance(cause, paramiko.ssh_exception.IncompatiblePeer):
        return EngineError(f"ssh negotiation with host '{host}' failed: {cause}", host=host)
    if isinstance(cause, OSError | EOFError | paramiko.SSHException):
        reason = (cause.strerror if isinstance(cause, OSError) else None) or str(cause) \
            or type(cause).__name__
        return HostUnreachableError(f"host '{host}' is unreachable over ssh: {reason}", host=host)
    return EngineError(f"ssh connection to host '{host}' failed: {exc}", host=host)


def _root_cause(exc: BaseException) -> str:
    """The innermost readable reason, without URLs or object reprs."""
    seen = exc
    while seen.__cause__ is not None or seen.__context__ is not None:
        seen = seen.__cause__ or seen.__context__
    if getattr(seen, "args", None):
        reason = seen.args[-1] if isinstance(seen.args[-1], str) else str(seen.args[0])
    else:
        reason = type(seen).__name__
    return reason.split("'))")[0][-200:]
