"""The problem+json error tree and the one place docker-py failures become Dockyard errors."""

from __future__ import annotations

import socket

import docker
import docker.errors
import pytest
import requests
import requests.exceptions

from app.core.errors import (
    PROBLEM_BASE,
    BadRequestError,
    ConflictError,
    DockyardError,
    EngineError,
    ForbiddenError,
    HostUnreachableError,
    InvalidInputError,
    JobCancelledError,
    NotFoundError,
    NoWorkerError,
    PayloadTooLargeError,
    PolicyViolationError,
    QueryTimeoutError,
    RegistryError,
    UnauthorizedError,
    UnavailableError,
    UnsupportedMediaTypeError,
    error_from_problem,
    problem_from_http,
)
from app.engine.errors import StreamError, raise_for_stream_chunk, translate_engine_error

HOST = "edge-1"


def api_error(status: int, explanation: str | None = "engine says no",
              cls: type[docker.errors.APIError] = docker.errors.APIError) -> docker.errors.APIError:
    """An APIError as docker-py raises it: carrying a real requests.Response."""
    response = requests.Response()
    response.status_code = status
    response.reason = "Reason"
    response.url = "http+docker://localhost/v1.41/containers/web/json"
    return cls(f"{status} Client Error", response=response, explanation=explanation)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def assert_is_problem(problem: dict) -> None:
    assert set(problem) >= {"type", "title", "status", "detail"}
    assert problem["type"].startswith(PROBLEM_BASE)
    assert isinstance(problem["status"], int)
    assert problem["title"] and problem["detail"]


# --------------------------------------------------------------------------- APIError by status


def test_engine_404_becomes_not_found() -> None:
    error = translate_engine_error(api_error(404, "No such container: web"), HOST)
    assert type(error) is NotFoundError
    assert error.status == 404
    assert "No such container: web" in error.detail
    assert error.extra["host"] == HOST


def test_docker_py_not_found_subclass_becomes_not_found() -> None:
    error = translate_engine_error(api_error(404, "No such image", cls=docker.errors.ImageNotFound),
                                   HOST)
    assert type(error) is NotFoundError


def test_engine_409_becomes_conflict() -> None:
    error = translate_engine_error(api_error(409, "name already in use"), HOST)
    assert type(error) is ConflictError
    assert error.status == 409
    assert "name already in use" in error.detail


def test_engine_400_becomes_invalid_input_naming_the_host() -> None:
    error = translate_engine_error(api_error(400, "invalid reference format"), HOST)
    assert type(error) is InvalidInputError
    assert error.status == 422
    assert HOST in error.detail
    assert "invalid reference format" in error.detail


@pytest.mark.parametrize("status", [500, 501, 503])
def test_engine_server_errors_become_502_engine_errors(status: int) -> None:
    error = translate_engine_error(api_error(status, "driver failed"), HOST)
    assert type(error) is EngineError
    assert error.status == 502
    assert HOST in error.detail and str(status) in error.detail
    assert error.extra["engine_status"] == status


# --------------------------------------------------------------------------- transport failures


def test_connection_error_becomes_503_host_unreachable_naming_the_host() -> None:
    error = translate_engine_error(requests.exceptions.ConnectionError("Connection refused"), HOST)
    assert type(error) is HostUnreachableError
    assert error.status == 503
    assert f"'{HOST}'" in error.detail
    assert error.extra["host"] == HOST


def test_real_refused_connection_through_docker_py_is_503_with_a_readable_reason() -> None:
    client = docker.DockerClient(base_url=f"tcp://127.0.0.1:{closed_port()}", version="1.41",
                                 timeout=2)
    with pytest.raises(requests.exceptions.ConnectionError) as caught:
        client.ping()
    error = translate_engine_error(caught.value, HOST)
    assert error.status == 503
    assert "Connection refused" in error.detail
    # No urllib3 object reprs or pool internals leak into the message.
    assert "HTTPConnection" not in error.detail and "Max retries" not in error.detail


def test_version_negotiation_failure_is_unwrapped_to_its_cause() -> None:
    # With version="auto" docker-py wraps the ConnectionError in a bare DockerException.
    with pytest.raises(docker.errors.DockerException) as caught:
        docker.DockerClient(base_url="unix:///nonexistent/dockyard-test.sock", version="auto",
                            timeout=2)
    error = translate_engine_error(caught.value, HOST)
    assert type(error) is HostUnreachableError
    assert HOST in error.detail


def test_connect_timeout_is_unreachable_not_a_query_timeout() -> None:
    error = translate_engine_error(requests.exceptions.ConnectTimeout("timed out"), HOST)
    assert type(error) is HostUnreachableError
    assert error.status == 503


def test_ssl_error_becomes_502_naming_the_host() -> None:
    error = translate_engine_error(
        requests.exceptions.SSLError("certificate verify failed: unable to get local issuer"), HOST)
    assert type(error) is EngineError
    assert error.status == 502
    assert HOST in error.detail
    assert "certificate verify failed" in error.detail


def test_read_timeout_becomes_504() -> None:
    error = translate_engine_error(requests.exceptions.ReadTimeout("read timed out"), HOST)
    assert type(error) is QueryTimeoutError
    assert error.status == 504
    assert HOST in error.detail


def test_dockyard_errors_pass_through_unchanged() -> None:
    original = PolicyViolationError("no-privileged", "privileged containers are not allowed")
    assert translate_engine_error(original, HOST) is original


def test_unknown_exceptions_become_502_without_internals() -> None:
    error = translate_engine_error(ValueError("secret internal state 0xdeadbeef"), HOST)
    assert type(error) is EngineError
    assert HOST in error.detail
    assert "0xdeadbeef" not in error.detail


# --------------------------------------------------------------------------- streams


def test_stream_chunk_without_error_passes() -> None:
    raise_for_stream_chunk({"status": "Pushing", "progressDetail": {"current": 1, "total": 2}})


def test_stream_chunk_with_error_detail_raises_with_message_and_code() -> None:
    with pytest.raises(StreamError) as caught:
        raise_for_stream_chunk({"errorDetail": {"message": "unauthorized: auth required",
                                                "code": 401},
                                "error": "unauthorized: auth required"})
    assert caught.value.message == "unauthorized: auth required"
    assert caught.value.code == 401


def test_stream_chunk_with_only_error_raises() -> None:
    with pytest.raises(StreamError) as caught:
        raise_for_stream_chunk({"error": "manifest unknown"})
    assert caught.value.message == "manifest unknown"
    assert caught.value.code is None


def test_stream_error_becomes_502_naming_host_and_message() -> None:
    error = translate_engine_error(StreamError("manifest unknown"), HOST)
    assert type(error) is EngineError
    assert error.status == 502
    assert HOST in error.detail and "manifest unknown" in error.detail


# --------------------------------------------------------------------------- problem shape


TRANSLATED = [
    api_error(404), api_error(409), api_error(400), api_error(500),
    requests.exceptions.ConnectionError("refused"), requests.exceptions.SSLError("bad"),
    requests.exceptions.ReadTimeout("slow"), StreamError("broken"), RuntimeError("?"),
]


@pytest.mark.parametrize("exc", TRANSLATED, ids=lambda e: type(e).__name__)
def test_every_translated_error_is_a_complete_problem_naming_the_host(exc: Exception) -> None:
    problem = translate_engine_error(exc, HOST).to_problem()
    assert_is_problem(problem)
    assert problem["host"] == HOST


ALL_ERRORS: list[DockyardError] = [
    DockyardError("boom"), BadRequestError("bad"), UnauthorizedError("who"),
    ForbiddenError("no", required_role="admin"),
    PolicyViolationError("no-privileged", "privileged is not allowed"),
    NotFoundError("gone", host="h"), ConflictError("taken"), PayloadTooLargeError("big"),
    UnsupportedMediaTypeError("xml"), InvalidInputError("bad", errors={"name": ["required"]}),
    EngineError("engine", host="h", engine_status=500), RegistryError("registry"),
    UnavailableError("down"), HostUnreachableError("unreachable", host="h"),
    NoWorkerError("nobody", queue="engine.ops", host="h"), QueryTimeoutError("slow"),
    JobCancelledError("cancelled"),
]


@pytest.mark.parametrize("error", ALL_ERRORS, ids=lambda e: type(e).__name__)
def test_every_error_renders_type_title_status_detail(error: DockyardError) -> None:
    problem = error.to_problem()
    assert_is_problem(problem)
    assert problem["status"] == error.status
    assert problem["type"] == PROBLEM_BASE + type(error).slug


@pytest.mark.parametrize("error", ALL_ERRORS, ids=lambda e: type(e).__name__)
def test_error_from_problem_round_trips_class_and_fields(error: DockyardError) -> None:
    problem = error.to_problem()
    rebuilt = error_from_problem(problem)
    assert type(rebuilt) is type(error)
    assert rebuilt.to_problem() == problem


def test_policy_violation_keeps_its_rule_through_a_round_trip() -> None:
    rebuilt = error_from_problem(PolicyViolationError("bind-root", "not under /srv").to_problem())
    assert isinstance(rebuilt, ForbiddenError)
    assert rebuilt.status == 403
    assert rebuilt.extra["rule"] == "bind-root"


def test_same_status_different_types_rebuild_different_classes() -> None:
    assert type(error_from_problem(ConflictError("x").to_problem())) is ConflictError
    assert type(error_from_problem(JobCancelledError("x").to_problem())) is JobCancelledError


def test_unknown_problem_type_rebuilds_a_base_error_with_its_status() -> None:
    rebuilt = error_from_problem({"type": PROBLEM_BASE + "from-the-future", "title": "New",
                                  "status": 418, "detail": "teapot"})
    assert type(rebuilt) is DockyardError
    assert rebuilt.to_problem() == {"type": PROBLEM_BASE + "from-the-future", "title": "New",
                                    "status": 418, "detail": "teapot"}


def test_about_blank_problem_from_a_worker_keeps_its_type() -> None:
    problem = {"type": "about:blank", "title": "Internal error", "status": 500,
               "detail": "the worker failed unexpectedly; see the worker log for this job"}
    assert error_from_problem(problem).to_problem()["type"] == "about:blank"


def test_problem_from_http_has_every_member() -> None:
    problem = problem_from_http(405, "Method Not Allowed", None)
    assert_is_problem(problem)
    assert problem["type"] == PROBLEM_BASE + "method-not-allowed"
    assert problem["detail"] == "Method Not Allowed"
