"""Where outbound webhooks and job callbacks may go: the host allow-list
(DOCKYARD_WEBHOOK_ALLOWED_HOSTS), resolving a target once and pinning the checked address,
and the POST to that address. Split from app/integrations/webhooks.py (subscriptions,
signing, watchers and deliveries), which calls these.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import urllib3
from requests.utils import DEFAULT_CA_BUNDLE_PATH

from app.core.errors import InvalidInputError
from app.core.store import get_settings

# -- the allow-list -------------------------------------------------------------------------


def _split_entry(entry: str) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``[v6]:port``, an IP or a CIDR network."""
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else None
    if entry.count(":") == 1:
        host, port = entry.split(":")
        return host, int(port)
    return entry, None


def _network(value: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(value, strict=False)
    except ValueError:
        return None


def _addresses(host: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return []
    return [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]


Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _split_url(url: str) -> tuple[str, str, int, str] | None:
    """(scheme, lower-case host, port, path with query) of an http(s) URL without credentials."""
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("http", "https") or not host or parts.username or parts.password:
        return None
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.scheme, host, port, path


def _entry_allows(allowed: tuple[str, ...], host: str, port: int,
                  addresses: Callable[[], list[Address]]) -> bool:
    for entry in allowed:
        try:
            entry_host, entry_port = _split_entry(entry)
        except ValueError:
            continue
        if entry_port is not None and entry_port != port:
            continue
        if entry_host == host:
            return True
        network = _network(entry_host)
        if network is None:
            continue
        resolved = addresses()
        if resolved and all(address in network for address in resolved):
            return True
    return False


def url_allowed(url: str, allowed: tuple[str, ...]) -> bool:
    """True if ``url`` is http(s) without credentials and its host is on the allow-list.

    An entry naming a host matches that name; an entry that is an IP or a CIDR network
    matches a URL whose host is, or resolves only to, addresses inside it. An entry with a
    port matches only that port. This is the check made when a URL is accepted; a delivery
    connects through ``resolve_target``, which resolves once and pins the address it checked.
    """
    split = _split_url(url)
    if split is None:
        return False
    _scheme, host, port, _path = split
    cache: list[list[Address]] = []

    def addresses() -> list[Address]:
        if not cache:
            cache.append(_addresses(host))
        return cache[0]

    return _entry_allows(allowed, host, port, addresses)


@dataclass(frozen=True)
class DeliveryTarget:
    """Where a delivery goes: the URL's name (Host header, TLS SNI and certificate check)
    and the one address, checked against the allow-list, that the connection is made to."""

    scheme: str
    host: str
    port: int
    path: str
    address: str

    @property
    def host_header(self) -> str:
        name = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return name if self.port == default else f"{name}:{self.port}"


def resolve_target(url: str, allowed: tuple[str, ...],
                   resolve: Callable[[str], list[Address]] | None = None
                   ) -> DeliveryTarget | None:
    """Resolve ``url``'s host once, check it against the allow-list, pin the checked address.

    Resolving again to connect would let a name answer an allowed address to the check and
    another one to the connection (DNS rebinding); the caller connects to ``address``.
    None: off the allow-list or not resolvable.
    """
    split = _split_url(url)
    if split is None:
        return None
    scheme, host, port, path = split
    resolved = (resolve or _addresses)(host)
    if not resolved or not _entry_allows(allowed, host, port, lambda: resolved):
        return None
    return DeliveryTarget(scheme, host, port, path, str(resolved[0]))


def post_to(target: DeliveryTarget, body: bytes, headers: dict[str, str], timeout: float,
            ca_certs: str | None = None) -> int:
    """POST ``body`` to the pinned address of ``target``; the HTTP status (redirects not followed).

    HTTPS sends the URL's name as SNI and verifies the certificate against that name.

    Raises:
        urllib3.exceptions.HTTPError: the connection, TLS or the exchange failed.
    """
    pool: urllib3.HTTPConnectionPool
    if target.scheme == "https":
        pool = urllib3.HTTPSConnectionPool(
            target.address, target.port, timeout=timeout, retries=False,
            cert_reqs="CERT_REQUIRED", ca_certs=ca_certs or DEFAULT_CA_BUNDLE_PATH,
            server_hostname=target.host, assert_hostname=target.host)
    else:
        pool = urllib3.HTTPConnectionPool(target.address, target.port, timeout=timeout,
                                          retries=False)
    with pool:
        response = pool.urlopen("POST", target.path, body=body,
                                headers={**headers, "Host": target.host_header},
                                redirect=False, retries=False, preload_content=True)
        return response.status


def check_url(url: str, field: str = "url") -> None:
    """Refuse a webhook target off the allow-list (422, before anything is recorded).

    Raises:
        InvalidInputError: not http(s), carries credentials, or its host is not allowed.
    """
    allowed = get_settings().webhook_allowed_hosts
    if not isinstance(url, str) or len(url) > 2048 or not url_allowed(url, allowed):
        why = ("outbound webhooks are disabled (DOCKYARD_WEBHOOK_ALLOWED_HOSTS is empty)"
               if not allowed else
               "not an http(s) URL whose host is on the allow-list "
               "(DOCKYARD_WEBHOOK_ALLOWED_HOSTS)")
        raise InvalidInputError(f"{field}: {why}", errors={field: [why]})


def check_callback_url(url: str) -> None:
    """A per-job callback must be allowed and signable.

    Raises:
        InvalidInputError: off the allow-list, or no DOCKYARD_WEBHOOK_SECRET to sign with.
    """
    check_url(url, "callback_url")
    if not get_settings().webhook_secret:
        why = "callbacks are signed with DOCKYARD_WEBHOOK_SECRET, which is not set"
        raise InvalidInputError(f"callback_url: {why}", errors={"callback_url": [why]})
