"""Outbound webhooks: subscriptions, signing, the host allow-list, job watchers and delivery."""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import redis
import urllib3
from requests.utils import DEFAULT_CA_BUNDLE_PATH

from app.core.config import Settings
from app.core.errors import InvalidInputError, NotFoundError
from app.core.ids import new_id
from app.core.store import PREFIX, get_redis, get_settings, utcnow
from app.core.task_names import WEBHOOKS_DELIVER
from app.integrations.grammar import describe_job
from app.jobs import records as jobstates
from app.runtime import runtime
from app.security.crypto import seal, unseal

logger = logging.getLogger(__name__)

PAYLOAD_VERSION = 1
SIGNATURE_HEADER = "Dockyard-Signature"
EVENTS_STREAM = PREFIX + "events"
_SUBSCRIPTIONS = PREFIX + "webhooks"
_LOG_LENGTH = 500
_DELIVERY_TTL = 2 * 24 * 3600


# -- signing --------------------------------------------------------------------------------


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """``Dockyard-Signature``: ``t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<raw body>">``."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


def verify(secret: str, body: bytes, header: str, tolerance: float = 300,
           now: float | None = None) -> bool:
    """What a receiver does: recompute the signature, compare in constant time, check age."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if abs((now if now is not None else time.time()) - timestamp) > tolerance:
        return False
    expected = sign(secret, body, timestamp).split("v1=", 1)[1]
    return hmac.compare_digest(expected, fields.get("v1", ""))


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


# -- subscriptions --------------------------------------------------------------------------


def event_matches(patterns: list[str], event_type: str) -> bool:
    """``job.failed``, ``engine.container.*`` or ``*`` style filters."""
    return any(fnmatch.fnmatchcase(event_type, pattern) for pattern in patterns)


class WebhookStore:
    """Subscriptions in ``dy:webhooks`` (secrets sealed) and their delivery logs."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def create(self, url: str, events: list[str], secret: str, hosts: list[str] | None,
               created_by: str) -> dict[str, Any]:
        check_url(url)
        record = {"id": new_id(), "url": url, "events": events, "hosts": hosts,
                  "created_at": utcnow(), "created_by": created_by,
                  "secret": seal(runtime().settings, {"secret": secret})}
        self.redis.hset(_SUBSCRIPTIONS, record["id"], json.dumps(record))
        return public_subscription(record)

    def _all(self) -> list[dict[str, Any]]:
        return [json.loads(raw) for raw in self.redis.hvals(_SUBSCRIPTIONS)]

    def list(self) -> list[dict[str, Any]]:
        return sorted((public_subscription(r) for r in self._all()), key=lambda r: r["id"])

    def get(self, sub_id: str) -> dict[str, Any]:
        raw = self.redis.hget(_SUBSCRIPTIONS, sub_id)
        if raw is None:
            raise NotFoundError(f"no webhook '{sub_id}'")
        return json.loads(raw)

    def delete(self, sub_id: str) -> None:
        if not self.redis.hdel(_SUBSCRIPTIONS, sub_id):
            raise NotFoundError(f"no webhook '{sub_id}'")

    def secret(self, sub_id: str) -> str:
        return unseal(runtime().settings, self.get(sub_id)["secret"])["secret"]

    def matching(self, event_type: str, host: str | None) -> list[dict[str, Any]]:
        """Subscriptions whose filter takes ``event_type`` (and ``host``, if they name hosts).

        Read on every event (one round trip), so a new subscription gets the very next one.
        """
        return [r for r in self._all() if event_matches(r["events"], event_type)
                and (not r.get("hosts") or host in r["hosts"])]

    def log_attempt(self, log_key: str, entry: dict[str, Any]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.lpush(log_key, json.dumps(entry))
        pipe.ltrim(log_key, 0, _LOG_LENGTH - 1)
        pipe.expire(log_key, runtime().settings.job_retention_seconds)
        pipe.execute()

    def attempts(self, log_key: str, limit: int = 100) -> list[dict[str, Any]]:
        return [json.loads(raw) for raw in self.redis.lrange(log_key, 0, limit - 1)]


def public_subscription(record: dict[str, Any]) -> dict[str, Any]:
    view = {key: value for key, value in record.items() if key != "secret"}
    view["links"] = {"self": f"/api/v1/webhooks/{record['id']}",
                     "deliveries": f"/api/v1/webhooks/{record['id']}/deliveries"}
    return view


def subscription_log(sub_id: str) -> str:
    return f"{PREFIX}webhook:{sub_id}:deliveries"


def job_log(job_id: str) -> str:
    return f"{PREFIX}job:{job_id}:deliveries"


def webhooks() -> WebhookStore:
    return WebhookStore(get_redis())


# -- deliveries -----------------------------------------------------------------------------


def envelope(event_type: str, data: dict[str, Any]) -> dict[str, Any]:
    """The versioned payload every Dockyard delivery carries (see ``WebhookPayload``)."""
    return {"version": PAYLOAD_VERSION, "type": event_type, "created_at": utcnow(),
            "data": data}


def _delivery_key(delivery_id: str) -> str:
    return f"{PREFIX}delivery:{delivery_id}"


def enqueue_delivery(url: str, event_type: str, payload: dict[str, Any], *, log: str,
                     subscription: str | None = None, signed: bool = True) -> str:
    """Record a delivery and queue its first attempt; returns the delivery id.

    The body is fixed here, so every attempt sends the same bytes and the same
    ``Dockyard-Delivery`` id (receivers dedupe on it: delivery is at-least-once).
    """
    delivery_id = new_id()
    record = {"id": delivery_id, "url": url, "event": event_type,
              "body": json.dumps(payload, separators=(",", ":"), default=str),
              "subscription": subscription, "signed": signed, "log": log, "state": "pending"}
    get_redis().set(_delivery_key(delivery_id), json.dumps(record), ex=_DELIVERY_TTL)
    runtime().celery.send_task(WEBHOOKS_DELIVER, args=[delivery_id],
                               queue=get_settings().webhook_queue)
    logger.info("delivery %s queued event=%s", delivery_id, event_type)
    return delivery_id


@dataclass(frozen=True)
class Attempt:
    done: bool
    delivered: bool


def attempt_delivery(delivery_id: str, attempt: int) -> Attempt:
    """POST a delivery once; log the attempt. ``done`` is False when it should be retried.

    Redirects are never followed (a 3xx is a failed attempt), and the allow-list is checked
    again, since it may have changed since the delivery was queued.
    """
    raw = get_redis().get(_delivery_key(delivery_id))
    if raw is None:
        return Attempt(True, False)
    record = json.loads(raw)
    if record["state"] != "pending":
        return Attempt(True, record["state"] == "delivered")
    settings = get_settings()
    store = webhooks()
    entry: dict[str, Any] = {"delivery": delivery_id, "event": record["event"],
                             "url": record["url"], "attempt": attempt, "at": utcnow(),
                             "status": None, "error": None}
    started = time.monotonic()
    delivered = False
    target = resolve_target(record["url"], settings.webhook_allowed_hosts)
    if target is None:
        entry["error"] = "the target host is no longer on the allow-list (or does not resolve)"
        attempt = settings.webhook_max_attempts
    else:
        try:
            status = _post(target, record, delivery_id, settings)
            entry["status"] = status
            delivered = 200 <= status < 300
            if 300 <= status < 400:
                entry["error"] = "redirect not followed"
            elif not delivered:
                entry["error"] = f"HTTP {status}"
        except urllib3.exceptions.HTTPError as exc:
            entry["error"] = type(exc).__name__
        except NotFoundError:
            entry["error"] = "the subscription was deleted"
            attempt = settings.webhook_max_attempts
        except Exception:
            logger.exception("delivery %s could not be prepared", delivery_id)
            entry["error"] = "internal error preparing the delivery"
            attempt = settings.webhook_max_attempts
    entry["duration_ms"] = int((time.monotonic() - started) * 1000)
    done = delivered or attempt >= settings.webhook_max_attempts
    entry["outcome"] = "delivered" if delivered else "failed" if done else "retrying"
    store.log_attempt(record["log"], entry)
    if done:
        record["state"] = "delivered" if delivered else "failed"
        get_redis().set(_delivery_key(delivery_id), json.dumps(record), ex=_DELIVERY_TTL)
    logger.info("delivery %s attempt %s: %s", delivery_id, attempt, entry["outcome"])
    return Attempt(done, delivered)


def _post(target: DeliveryTarget, record: dict[str, Any], delivery_id: str,
          settings: Settings) -> int:
    body = record["body"].encode()
    headers = {"Content-Type": "application/json", "User-Agent": "Dockyard-Webhooks/1",
               "Dockyard-Event": record["event"], "Dockyard-Delivery": delivery_id}
    secret = webhooks().secret(record["subscription"]) if record["subscription"] \
        else settings.webhook_secret
    if record["signed"] and secret:
        headers[SIGNATURE_HEADER] = sign(secret, body, int(time.time()))
    # No proxy variables either: the allow-list names the real target.
    return post_to(target, body, headers, settings.webhook_timeout_seconds)


def retry_delay(attempt: int) -> float:
    """Seconds before attempt ``attempt + 1``: the base, doubled each time."""
    return get_settings().webhook_retry_base_seconds * (2 ** (attempt - 1))


# -- job watchers (callback_url, chat response_url) and job events ---------------------------


def _watchers_key(job_id: str) -> str:
    return f"{PREFIX}job:{job_id}:watchers"


def watch_job(job_id: str, watcher: dict[str, Any]) -> None:
    """Post the job's outcome to ``watcher["url"]`` when it ends.

    ``watcher["format"]`` is ``dockyard`` (the signed, versioned payload) or ``chat`` (a
    Slack/Mattermost message). A job that ended before the watcher was written is
    announced at once; either way each watcher is popped, so it fires exactly once.
    """
    key = _watchers_key(job_id)
    pipe = get_redis().pipeline(transaction=False)
    pipe.rpush(key, json.dumps(watcher))
    pipe.expire(key, runtime().settings.job_retention_seconds)
    pipe.execute()
    record = runtime().jobs.get(job_id)
    if record["state"] in jobstates.FINAL_STATES:
        _fire_watchers(record)


def _pop_watchers(job_id: str) -> list[dict[str, Any]]:
    pipe = get_redis().pipeline(transaction=True)
    pipe.lrange(_watchers_key(job_id), 0, -1)
    pipe.delete(_watchers_key(job_id))
    raw, _ = pipe.execute()
    return [json.loads(item) for item in raw]


def _fire_watchers(record: dict[str, Any]) -> None:
    view = jobstates.public_view(record)
    event_type = f"job.{record['state']}"
    for watcher in _pop_watchers(record["id"]):
        if watcher.get("format") == "chat":
            payload: dict[str, Any] = {"response_type": "ephemeral",
                                       "text": describe_job(view)}
        else:
            payload = envelope(event_type, view)
        enqueue_delivery(watcher["url"], event_type, payload, log=job_log(record["id"]))


def notify_watchers(job_id: str) -> None:
    """The job-final hook (called by the worker): callbacks, chat replies, subscriptions.

    Never raises: a webhook problem must not change the job's outcome.
    """
    try:
        record = runtime().jobs.get(job_id)
        if record["state"] not in jobstates.FINAL_STATES:
            return
        _fire_watchers(record)
        announced = get_redis().set(f"{PREFIX}job:{job_id}:announced", "1", nx=True,
                                    ex=runtime().settings.job_retention_seconds)
        if announced:
            event_type = f"job.{record['state']}"
            view = jobstates.public_view(record)
            for sub in webhooks().matching(event_type, record.get("host") or None):
                enqueue_delivery(sub["url"], event_type, envelope(event_type, view),
                                 log=subscription_log(sub["id"]), subscription=sub["id"])
        if record.get("parent"):
            notify_watchers(record["parent"])
    except Exception:
        logger.exception("job %s: webhook notification failed", job_id)


# -- engine events --------------------------------------------------------------------------


def engine_event_type(event: dict[str, Any]) -> str:
    """``engine.<type>.<action>``; ``health_status: healthy`` counts as ``health_status``."""
    action = (event.get("action") or "").split(":", 1)[0].strip()
    return f"engine.{event.get('type') or 'unknown'}.{action or 'unknown'}"


def publish_engine_event(host: str, event: dict[str, Any], store: WebhookStore) -> str:
    """Append an engine event to ``dy:events`` and fan it out to matching subscriptions."""
    event_type = engine_event_type(event)
    data = {"host": host, **event}
    event_id = get_redis().xadd(
        EVENTS_STREAM, {"host": host, "type": event.get("type") or "", "event": event_type,
                        "data": json.dumps(data, default=str)},
        maxlen=get_settings().events_maxlen, approximate=True)
    for sub in store.matching(event_type, host):
        enqueue_delivery(sub["url"], event_type, envelope(event_type, data),
                         log=subscription_log(sub["id"]), subscription=sub["id"])
    return event_id
