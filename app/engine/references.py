"""Image references (``repo[:tag][@digest]``, registries): pure helpers the API uses without docker-py."""

from __future__ import annotations

from app.core.errors import InvalidInputError


def split_reference(reference: str) -> tuple[str, str | None]:
    """``repo[:tag][@digest]`` → (repository, tag or digest); the tag defaults to latest."""
    if "@" in reference:
        repo, digest = reference.split("@", 1)
        return repo, digest
    last = reference.rsplit("/", 1)[-1]
    if ":" in last:
        repo, tag = reference.rsplit(":", 1)
        return repo, tag
    return reference, "latest"


def explicit_registry(reference: str) -> str | None:
    """The registry a reference names (``127.0.0.1:5000/team/web``), or None for docker's default.

    Docker reads the first path component as a registry only when it looks like a host:
    it has a dot or a port, or it is ``localhost``.
    """
    first, sep, _rest = reference.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first
    return None


def resolve_in_registry(reference: str, address: str) -> str:
    """``reference`` as it lives in the registry at ``address`` (``host:port``).

    A reference naming no registry is prefixed with the address (``team/web:1`` →
    ``127.0.0.1:5000/team/web:1``); one that already names it is kept.

    Raises:
        InvalidInputError: the reference names another registry; a stored registry's
            credentials are only ever sent to that registry.
    """
    named = explicit_registry(reference)
    if named is None:
        return f"{address}/{reference}"
    if named != address:
        raise InvalidInputError(f"'{reference}' is in registry '{named}', not '{address}'",
                                errors={"registry": [f"the reference names registry '{named}'"]})
    return reference
