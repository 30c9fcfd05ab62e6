"""Calls to a registry's Distribution v2 API: login check, catalog, tags, manifest delete.

Kept whole: one Distribution v2 client: its connection, token challenge, pagination and
error translation share one time budget and one set of reference patterns.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import requests
import urllib3

from app.core.errors import (
    ConflictError,
    DockyardError,
    InvalidInputError,
    NotFoundError,
    RegistryError,
    UnavailableError,
)

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_SECONDS = 5.0
READ_TIMEOUT_SECONDS = 10.0
# Everything one call does (challenge, token, request, retry) fits in this, so the API's
# wait on the worker (BUDGET + a margin) never expires before the worker answers.
BUDGET_SECONDS = 12.0
MAX_PAGE = 1000

# Accept list of a manifest HEAD: without it Distribution converts or refuses, and the
# digest it reports would not be the one stored.
MANIFEST_TYPES = (
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
)

# Distribution's grammar (distribution/reference): path components joined by '/'.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
REPOSITORY_PATTERN = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
TAG_PATTERN = re.compile(r"[\w][\w.-]{0,127}")
DIGEST_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}")
_CHALLENGE_PARAM = re.compile(r'\s*([A-Za-z0-9_.-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))\s*,?')


@dataclass(frozen=True)
class RegistryEndpoint:
    """Where a stored registry lives and how to authenticate to it."""

    name: str
    base_url: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_cert: str | None = None
    insecure: bool = False


def base_url(url: str) -> str:
    """``scheme://host[:port]`` of a stored registry url; no scheme means https, as docker does."""
    parts = urlsplit(url if "://" in url else f"https://{url}")
    return f"{parts.scheme}://{parts.netloc}"


def is_repository(name: str) -> bool:
    """True if ``name`` is a repository name Distribution accepts (``team/web``)."""
    return len(name) <= 255 and REPOSITORY_PATTERN.fullmatch(name) is not None


def is_digest(reference: str) -> bool:
    return DIGEST_PATTERN.fullmatch(reference) is not None


def validate_repository(name: str) -> None:
    """Raises: InvalidInputError: Distribution would refuse the name."""
    if not is_repository(name):
        raise InvalidInputError(f"'{name}' is not a valid repository name",
                                errors={"repository": ["lowercase path components of "
                                                       "[a-z0-9] joined by . _ __ - and /"]})


def validate_reference(reference: str) -> None:
    """Raises: InvalidInputError: ``reference`` is neither a tag nor a digest."""
    if TAG_PATTERN.fullmatch(reference) is None and not is_digest(reference):
        raise InvalidInputError(f"'{reference}' is neither a tag nor a digest",
                                errors={"reference": ["a tag or algorithm:hex digest"]})


def parse_challenge(header: str | None) -> tuple[str, dict[str, str]] | None:
    """The scheme (lowercase) and parameters of a ``WWW-Authenticate`` header, or None.

    ``Bearer realm="https://auth/token",service="reg",scope="repository:a/b:pull,push"``
    → ``("bearer", {"realm": …, "service": "reg", "scope": "repository:a/b:pull,push"})``.
    """
    if not header or not header.strip():
        return None
    scheme, _, rest = header.strip().partition(" ")
    params: dict[str, str] = {}
    position = 0
    while position < len(rest):
        match = _CHALLENGE_PARAM.match(rest, position)
        if match is None or match.end() == position:
            break
        value = match.group(2) if match.group(2) is not None else match.group(3)
        params[match.group(1).lower()] = re.sub(r"\\(.)", r"\1", value)
        position = match.end()
    return scheme.lower(), params


def next_page(link_header: str | None) -> dict[str, Any] | None:
    """``{last, n}`` of the ``rel="next"`` page in a registry's ``Link`` header, or None.

    Distribution sends ``</v2/_catalog?last=team%2Fweb&n=100>; rel="next"``.
    """
    if not link_header:
        return None
    for link in requests.utils.parse_header_links(link_header):
        if link.get("rel") != "next" or "url" not in link:
            continue
        query = parse_qs(urlsplit(link["url"]).query)
        last = query.get("last", [None])[0]
        n = query.get("n", [None])[0]
        if last is None:
            return None
        return {"last": last, "n": int(n) if n and n.isdigit() else None}
    return None


def registry_reason(response: requests.Response) -> str:
    """The registry's own words for an error: ``CODE: message`` of its ``errors`` body."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("errors"), list):
        parts = [f"{e.get('code', '')}: {e.get('message', '')}".strip(": ")
                 for e in body["errors"] if isinstance(e, dict)]
        if any(parts):
            return "; ".join(p for p in parts if p)
    if isinstance(body, dict) and isinstance(body.get("details") or body.get("error"), str):
        return body.get("details") or body["error"]
    text = (response.text or "").strip()[:200]
    return f"HTTP {response.status_code} {response.reason or ''}".strip() + (
        f": {text}" if text else "")


class RegistryConnection:
    """One session to a registry, answering its auth challenges (Basic, or Bearer tokens).

    Credentials are sent only after the registry asks for them, and the scheme it asked
    for is remembered for the next requests of the same connection.
    """

    def __init__(self, endpoint: RegistryEndpoint, session: requests.Session) -> None:
        self.endpoint = endpoint
        self.session = session
        self.auth_scheme = "none"
        self._token: str | None = None
        self._deadline = time.monotonic() + BUDGET_SECONDS

    def _timeout(self) -> tuple[float, float]:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise UnavailableError(f"registry '{self.endpoint.name}' did not answer within "
                                   f"{BUDGET_SECONDS:g}s", registry=self.endpoint.name)
        return min(CONNECT_TIMEOUT_SECONDS, left), min(READ_TIMEOUT_SECONDS, left)

    def _send(self, method: str, url: str, headers: dict[str, str], **kwargs: Any
              ) -> requests.Response:
        try:
            return self.session.request(method, url, headers=headers, timeout=self._timeout(),
                                        allow_redirects=True, **kwargs)
        except requests.RequestException as exc:
            raise translate_transport_error(exc, self.endpoint) from None

    def request(self, method: str, path: str, *, params: dict[str, Any] | None = None,
                headers: dict[str, str] | None = None) -> requests.Response:
        """Send a request to ``base_url + path``, authenticating if the registry challenges.

        Raises:
            UnavailableError: the registry cannot be reached or does not answer in time.
            RegistryError: TLS verification failed, or the token service refused us.
        """
        url = self.endpoint.base_url + path
        headers = dict(headers or {})
        auth = self._remembered_credentials()
        if auth:
            headers["Authorization"] = auth
        response = self._send(method, url, headers, params=params)
        if response.status_code != 401:
            return response
        challenge = parse_challenge(response.headers.get("WWW-Authenticate"))
        retry = self._answer(challenge) if challenge else None
        if retry is None or retry == auth:
            return response
        headers["Authorization"] = retry
        return self._send(method, url, headers, params=params)

    def _remembered_credentials(self) -> str | None:
        # A bearer token is scoped; the latest one is tried first and a new challenge
        # for another scope (pull, then delete) fetches the next.
        if self.auth_scheme == "basic":
            return _basic(self.endpoint)
        if self.auth_scheme == "bearer" and self._token:
            return f"Bearer {self._token}"
        return None

    def _answer(self, challenge: tuple[str, dict[str, str]]) -> str | None:
        scheme, params = challenge
        if scheme == "basic":
            self.auth_scheme = "basic"
            return _basic(self.endpoint)
        if scheme == "bearer" and params.get("realm"):
            self.auth_scheme = "bearer"
            self._token = self._fetch_token(params)
            return f"Bearer {self._token}"
        return None

    def _fetch_token(self, params: dict[str, str]) -> str:
        """The token flow of the Docker registry auth spec: GET realm?service=&scope=."""
        query = {k: params[k] for k in ("service", "scope") if params.get(k)}
        if self.endpoint.username:
            query["account"] = self.endpoint.username
        auth = (self.endpoint.username, self.endpoint.password or "") \
            if self.endpoint.username else None
        try:
            response = self.session.get(params["realm"], params=query, auth=auth,
                                        timeout=self._timeout())
        except requests.RequestException as exc:
            raise translate_transport_error(exc, self.endpoint) from None
        if response.status_code != 200:
            raise RegistryError(f"the token service of registry '{self.endpoint.name}' refused "
                                f"{self._who()}: {registry_reason(response)}",
                                registry=self.endpoint.name, registry_status=response.status_code)
        try:
            body = response.json()
            return str(body.get("token") or body["access_token"])
        except (ValueError, KeyError, AttributeError):
            raise RegistryError(f"the token service of registry '{self.endpoint.name}' "
                                "answered without a token", registry=self.endpoint.name) from None

    def _who(self) -> str:
        return f"user '{self.endpoint.username}'" if self.endpoint.username \
            else "anonymous access"

    def fail(self, response: requests.Response, what: str) -> DockyardError:
        """The error for a registry's non-success answer to ``what``."""
        reason = registry_reason(response)
        name = self.endpoint.name
        extra = {"registry": name, "registry_status": response.status_code}
        if response.status_code == 401:
            if self.endpoint.username:
                return RegistryError(f"registry '{name}' refused the credentials of "
                                     f"{self._who()} ({reason})", **extra)
            return RegistryError(f"registry '{name}' requires credentials and none are "
                                 f"stored ({reason})", **extra)
        if response.status_code == 403:
            return RegistryError(f"registry '{name}' denied {what} to {self._who()} "
                                 f"({reason})", **extra)
        if response.status_code == 404:
            return NotFoundError(f"{what}: not found in registry '{name}' ({reason})", **extra)
        if response.status_code == 405:
            return ConflictError(f"registry '{name}' does not allow {what} ({reason}); "
                                 "deletes need storage.delete.enabled in its configuration",
                                 **extra)
        return RegistryError(f"registry '{name}' failed {what}: {reason}", **extra)


def _basic(endpoint: RegistryEndpoint) -> str | None:
    if not endpoint.username:
        return None
    return requests.auth._basic_auth_str(endpoint.username, endpoint.password or "")


def translate_transport_error(exc: requests.RequestException,
                              endpoint: RegistryEndpoint) -> DockyardError:
    """A failure to talk to the registry at all: 503 unreachable, or 502 for TLS trouble."""
    where = f"registry '{endpoint.name}' at {endpoint.base_url}"
    if isinstance(exc, requests.exceptions.SSLError):
        reason = _innermost(exc)
        if "CERTIFICATE_VERIFY_FAILED" in reason or "certificate verify failed" in reason:
            return RegistryError(f"TLS certificate verification failed for {where} ({reason}); "
                                 "register the CA that signed it as the registry's ca_cert",
                                 registry=endpoint.name)
        hint = "; is it a plain-HTTP registry (register it as http://…)?" \
            if "WRONG_VERSION_NUMBER" in reason else ""
        return RegistryError(f"TLS handshake with {where} failed: {reason}{hint}",
                             registry=endpoint.name)
    if isinstance(exc, requests.exceptions.ReadTimeout):
        return UnavailableError(f"{where} did not answer within {READ_TIMEOUT_SECONDS:g}s",
                                registry=endpoint.name)
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return UnavailableError(f"{where} is unreachable: no connection within "
                                f"{CONNECT_TIMEOUT_SECONDS:g}s", registry=endpoint.name)
    if isinstance(exc, requests.exceptions.ConnectionError):
        return UnavailableError(f"{where} is unreachable: {_innermost(exc)}",
                                registry=endpoint.name)
    return RegistryError(f"talking to {where} failed: {type(exc).__name__}",
                         registry=endpoint.name)


def _innermost(exc: BaseException) -> str:
    """The root cause's message: requests wraps urllib3 wraps ssl and socket errors."""
    seen = [exc]
    while len(seen) < 10:
        current = seen[-1]
        args = getattr(current, "args", ())
        inner = getattr(current, "reason", None)
        if not isinstance(inner, BaseException) and args and isinstance(args[0], BaseException):
            inner = args[0]
        if not isinstance(inner, BaseException):
            inner = current.__cause__ or current.__context__
        if inner is None or any(inner is s for s in seen):
            break
        seen.append(inner)
    return str(seen[-1])[:300]


@contextlib.contextmanager
def connect(endpoint: RegistryEndpoint) -> Iterator[RegistryConnection]:
    """A connection to ``endpoint`` that trusts only what its record says.

    ``trust_env`` is off so REQUESTS_CA_BUNDLE, proxies and .netrc of the worker's
    environment neither widen nor break what a registry record asks for. A custom CA is
    written to a 0600 temporary file for the lifetime of the connection.
    """
    session = requests.Session()
    session.trust_env = False
    ca_path = None
    try:
        if endpoint.ca_cert:
            handle, ca_path = tempfile.mkstemp(prefix="dy-registry-ca-", suffix=".pem")
            with os.fdopen(handle, "w") as out:
                out.write(endpoint.ca_cert)
            session.verify = ca_path
        elif endpoint.insecure:
            session.verify = False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", urllib3.exceptions.InsecureRequestWarning)
            yield RegistryConnection(endpoint, session)
    finally:
        session.close()
        if ca_path:
            with contextlib.suppress(OSError):
                os.unlink(ca_path)


def check(endpoint: RegistryEndpoint) -> dict[str, Any]:
    """``docker login`` without a host: ``GET /v2/`` answering the registry's challenge.

    Returns:
        ``{ok, status, auth}`` with ``auth`` one of ``none``, ``basic``, ``bearer``.

    Raises:
        RegistryError: wrong credentials (with the registry's reason) or not a v2 registry.
        UnavailableError: unreachable or no answer in time.
    """
    with connect(endpoint) as conn:
        response = conn.request("GET", "/v2/")
        if response.status_code == 404:
            raise RegistryError(f"registry '{endpoint.name}' at {endpoint.base_url} does not "
                                "serve the registry v2 API (GET /v2/ answered 404)",
                                registry=endpoint.name)
        if response.status_code != 200:
            raise conn.fail(response, "login")
        logger.info("registry %s check ok auth=%s", endpoint.name, conn.auth_scheme)
        return {"ok": True, "status": response.status_code, "auth": conn.auth_scheme}


def _page_params(n: int | None, last: str | None) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if n is not None:
        params["n"] = n
    if last:
        params["last"] = last
    return params


def list_repositories(endpoint: RegistryEndpoint, n: int | None = None,
                      last: str | None = None) -> dict[str, Any]:
    """One page of ``GET /v2/_catalog``.

    Returns:
        ``{repositories, next}`` where ``next`` is ``{last, n}`` from the Link header or None.
    """
    with connect(endpoint) as conn:
        response = conn.request("GET", "/v2/_catalog", params=_page_params(n, last))
        if response.status_code != 200:
            raise conn.fail(response, "listing the catalog")
        body = _json(response, endpoint)
        return {"repositories": list(body.get("repositories") or []),
                "next": next_page(response.headers.get("Link"))}


def list_tags(endpoint: RegistryEndpoint, repository: str, n: int | None = None,
              last: str | None = None) -> dict[str, Any]:
    """One page of ``GET /v2/<repository>/tags/list`` (paged here if the registry cannot).

    Raises:
        NotFoundError: the registry has no such repository.
    """
    with connect(endpoint) as conn:
        response = conn.request("GET", f"/v2/{_path(repository)}/tags/list",
                                params=_page_params(n, last))
        if response.status_code != 200:
            raise conn.fail(response, f"repository '{repository}'")
        body = _json(response, endpoint)
        tags = list(body.get("tags") or [])
        following = next_page(response.headers.get("Link"))
        if n is not None and len(tags) > n:
            tags, following = paginate_locally(tags, n, last)
        return {"name": body.get("name", repository), "tags": tags, "next": following}


def paginate_locally(tags: list[str], n: int, last: str | None
                     ) -> tuple[list[str], dict[str, Any] | None]:
    """The page a paginating registry would send, for one that ignored ``n``/``last``.

    Distribution before 3.0 lists every tag whatever ``n`` says; 3.0 pages in lexical
    order, so the same order is kept here.
    """
    remaining = sorted(t for t in tags if last is None or t > last)
    page = remaining[:n]
    following = {"last": page[-1], "n": n} if page and len(remaining) > n else None
    return page, following


def manifest_digest(conn: RegistryConnection, repository: str, reference: str) -> str:
    """The digest a tag (or digest) points to, from a HEAD on the manifest.

    Raises:
        NotFoundError: no such repository or manifest.
    """
    response = conn.request("HEAD", f"/v2/{_path(repository)}/manifests/{quote(reference)}",
                            headers={"Accept": ", ".join(MANIFEST_TYPES)})
    if response.status_code != 200:
        raise conn.fail(response, f"manifest '{repository}:{reference}'")
    digest = response.headers.get("Docker-Content-Digest")
    if not digest:
        name = conn.endpoint.name
        raise RegistryError(f"registry '{name}' did not report the digest of "
                            f"'{repository}:{reference}'", registry=name)
    return digest


def delete_manifest(endpoint: RegistryEndpoint, repository: str,
                    reference: str) -> dict[str, Any]:
    """Delete a manifest by digest; a tag is first resolved to the digest it points to.

    Deleting by digest removes every tag that points to it, as the registry does.

    Raises:
        NotFoundError: no such repository or manifest.
        ConflictError: the registry does not allow deletes (405).
    """
    with connect(endpoint) as conn:
        digest = reference if is_digest(reference) else \
            manifest_digest(conn, repository, reference)
        response = conn.request("DELETE", f"/v2/{_path(repository)}/manifests/{digest}")
        if response.status_code not in (200, 202):
            raise conn.fail(response, f"deleting manifest '{repository}@{digest}'")
        logger.info("registry %s deleted manifest %s@%s", endpoint.name, repository, digest)
        return {"repository": repository, "reference": reference, "digest": digest}


def _path(repository: str) -> str:
    return quote(repository, safe="/")


def _json(response: requests.Response, endpoint: RegistryEndpoint) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise RegistryError(f"registry '{endpoint.name}' answered with something other than "
                            "a JSON object", registry=endpoint.name)
    return body
