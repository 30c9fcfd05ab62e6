"""The one place where docker-py exceptions become Dockyard errors."""

from __future__ import annotations

from typing import Any

import docker.errors
import requests.exceptions

from app.errors import (
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
    if isinstance(exc, StreamError):
        return EngineError(f"engine on host '{host}' reported: {exc.message}", host=host)
    if isinstance(exc, requests.exceptions.SSLError):
        return EngineError(f"TLS handshake with host '{host}' failed: {_root_cause(exc)}",
                           host=host)
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return HostUnreachableError(f"host '{host}' did not accept a connection in time",
                                    host=host)
    if isinstance(exc, requests.exceptions.ConnectionError | ConnectionError | FileNotFoundError):
        return HostUnreachableError(f"host '{host}' is unreachable: {_root_cause(exc)}", host=host)
    if isinstance(exc, requests.exceptions.ReadTimeout | TimeoutError):
        return QueryTimeoutError(f"engine on host '{host}' did not answer in time", host=host)
    if isinstance(exc, docker.errors.DockerException):
        cause = exc.__cause__ or exc.__context__
        if cause is not None and not isinstance(cause, docker.errors.DockerException):
            return translate_engine_error(cause, host)
        return EngineError(f"engine on host '{host}' failed: {exc}", host=host)
    return EngineError(f"unexpected failure talking to host '{host}'", host=host)


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
