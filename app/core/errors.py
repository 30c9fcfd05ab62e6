"""The Dockyard error tree; every error renders as an RFC 9457 problem."""

from __future__ import annotations

from typing import Any

PROBLEM_BASE = "https://dockyard.dev/problems/"


class DockyardError(Exception):
    """Base of every error Dockyard reports to a client.

    Attributes:
        status: HTTP status code.
        slug: last segment of the problem ``type`` URI.
        title: short, stable summary of the problem type.
    """

    status = 500
    slug = "internal"
    title = "Internal error"

    def __init__(self, detail: str | None = None, **extra: Any) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.extra = extra

    type_uri: str | None = None

    def to_problem(self) -> dict[str, Any]:
        problem = {
            "type": self.type_uri or PROBLEM_BASE + self.slug,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        problem.update(self.extra)
        return problem


class BadRequestError(DockyardError):
    status, slug, title = 400, "bad-request", "Malformed request"


class UnauthorizedError(DockyardError):
    status, slug, title = 401, "unauthorized", "Missing or invalid token"


class ForbiddenError(DockyardError):
    status, slug, title = 403, "forbidden", "Not allowed"


class PolicyViolationError(ForbiddenError):
    slug, title = "policy-violation", "Forbidden by policy"

    def __init__(self, rule: str, detail: str, **extra: Any) -> None:
        super().__init__(detail, rule=rule, **extra)


class NotFoundError(DockyardError):
    status, slug, title = 404, "not-found", "Not found"


class ConflictError(DockyardError):
    status, slug, title = 409, "conflict", "Conflict"


class PayloadTooLargeError(DockyardError):
    status, slug, title = 413, "payload-too-large", "Payload too large"


class UnsupportedMediaTypeError(DockyardError):
    status, slug, title = 415, "unsupported-media-type", "Unsupported media type"


class InvalidInputError(DockyardError):
    status, slug, title = 422, "invalid-input", "Invalid input"

    def __init__(self, detail: str | None = None, errors: dict | None = None, **extra: Any) -> None:
        if errors is not None:
            extra["errors"] = errors
        super().__init__(detail, **extra)


class EngineError(DockyardError):
    """The Docker engine (or a registry) answered with an error."""

    status, slug, title = 502, "engine-error", "The engine reported an error"


class RegistryError(EngineError):
    slug, title = "registry-error", "The registry reported an error"


class UnavailableError(DockyardError):
    status, slug, title = 503, "unavailable", "Service unavailable"


class HostUnreachableError(UnavailableError):
    slug, title = "host-unreachable", "Docker engine unreachable"


class NoWorkerError(UnavailableError):
    slug, title = "no-worker", "No worker serves this host"


class QueryTimeoutError(DockyardError):
    status, slug, title = 504, "query-timeout", "The query timed out"


class JobCancelledError(DockyardError):
    status, slug, title = 409, "cancelled", "The job was cancelled"


def problem_from_http(status: int, title: str, detail: str | None = None, **extra: Any) -> dict:
    """A problem object for an HTTP error that is not a DockyardError (404 route, 405, …)."""
    slug = title.lower().replace(" ", "-")
    problem = {"type": PROBLEM_BASE + slug, "title": title, "status": status,
               "detail": detail or title}
    problem.update(extra)
    return problem


def error_from_problem(problem: dict[str, Any]) -> DockyardError:
    """Rebuild an error from a problem object (as sent back by a worker)."""
    status = int(problem.get("status", 500))
    for cls in _all_subclasses(DockyardError):
        if cls.status == status and PROBLEM_BASE + cls.slug == problem.get("type"):
            break
    else:
        cls = DockyardError
    err = cls.__new__(cls)
    DockyardError.__init__(err, problem.get("detail"))
    err.status = status
    err.title = problem.get("title", cls.title)
    err.type_uri = str(problem.get("type") or PROBLEM_BASE + cls.slug)
    err.extra = {k: v for k, v in problem.items() if k not in ("type", "title", "status", "detail")}
    return err


def _all_subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_all_subclasses(sub))
    return out
