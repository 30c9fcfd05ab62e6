"""Outbound webhooks: subscriptions, signing, job watchers and delivery.

Where a delivery may go (the host allow-list, the pinned address, the POST itself) is
app/integrations/webhook_targets.py.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import redis
import urllib3

from app.core.config import Settings
from app.core.errors import NotFoundError
from app.core.ids import new_id
from app.core.store import PREFIX, get_redis, get_settings, utcnow
from app.core.task_names import WEBHOOKS_DELIVER
from app.integrations.grammar import describe_job
from app.integrations.webhook_targets import DeliveryTarget, check_url, post_to, resolve_target
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
