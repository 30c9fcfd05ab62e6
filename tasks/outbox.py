"""The outbox relay: central read workers carry agents' outbox entries into shared state.

Each central read-lane worker runs one relay thread. It reads every agent host's
``dy:h:<host>:outbox`` through the consumer group ``relay`` (one worker gets each entry)
and, every ``CLAIM_EVERY_SECONDS``, takes over entries a dead relay read but never
acknowledged (XAUTOCLAIM). An entry naming a job is carried out only if that job is one
of the host's jobs (``dy:jobs:host``): an agent cannot end, audit or announce another
host's job. Entries are acknowledged and deleted once handled (or refused).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

import redis
from celery.signals import worker_ready, worker_shutdown

from app.core.store import get_redis, utcnow
from app.integrations.webhooks import WebhookStore, notify_watchers, publish_engine_event
from app.jobs import outbox
from app.jobs.records import HOST_INDEX
from app.runtime import runtime

logger = logging.getLogger(__name__)

GROUP = "relay"
BLOCK_MS = 1000
CLAIM_IDLE_MS = 30_000
CLAIM_EVERY_SECONDS = 10.0
HOSTS_EVERY_SECONDS = 3.0

_stop = threading.Event()


def agent_hosts() -> list[str]:
    return [r["name"] for r in runtime().hosts.list() if r.get("route") == "agent"]


def ensure_group(client: redis.Redis, key: str) -> None:
    try:
        client.xgroup_create(key, GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def handle(host: str, fields: dict[str, str]) -> None:
    """Carry one entry out (or refuse it, logged) for ``host``."""
    kind = fields.get("kind")
    try:
        data = json.loads(fields.get("data") or "{}")
    except ValueError:
        data = None
    if kind not in outbox.KINDS or not isinstance(data, dict):
        logger.warning("outbox host=%s: refused a malformed entry kind=%r", host, kind)
        return
    if kind == outbox.ENGINE_EVENT:
        event = data.get("event")
        if isinstance(event, dict):
            publish_engine_event(host, event, WebhookStore(get_redis()))
        return
    job_id = data.get("job")
    owner = get_redis().hget(HOST_INDEX, job_id) if isinstance(job_id, str) else None
    if owner != host:
        logger.warning("outbox host=%s: refused %s for job %r: not a job of this host",
                       host, kind, job_id)
        return
    if kind == outbox.JOB_END:
        if data.get("parent", True):
            runtime().jobs.notify_parent(job_id)
        notify_watchers(job_id)
    elif kind == outbox.AUDIT:
        record = runtime().jobs.get(job_id)
        problem = data.get("problem") if isinstance(data.get("problem"), dict) else {}
        runtime().audit.record({
            "ts": utcnow(), "request_id": None, "actor": record.get("requested_by"),
            "token_id": record.get("token_id"), "method": "JOB", "route": record["kind"],
            "path": f"/api/v1/jobs/{job_id}", "host": host, "target": record.get("target"),
            "request": {}, "decision": "denied", "rule": problem.get("rule"),
            "outcome": "denied", "status": 403, "job_id": job_id})


def relay_once(consumer: str, hosts: list[str], claim: bool) -> int:
    """Read (blocking up to BLOCK_MS) and handle the hosts' new entries; returns how many."""
    client = get_redis()
    keys = {outbox.outbox_key(host): host for host in hosts}
    batches: list[tuple[str, list[tuple[str, dict[str, str]]]]] = []
    if claim:
        for key in keys:
            reply = client.xautoclaim(key, GROUP, consumer, CLAIM_IDLE_MS, "0-0", count=100)
            if reply[1]:
                batches.append((key, [entry for entry in reply[1] if entry[1]]))
    read = client.xreadgroup(GROUP, consumer, dict.fromkeys(keys, ">"), count=100,
                             block=BLOCK_MS) or []
    batches.extend((key, entries) for key, entries in read)
    handled = 0
    for key, entries in batches:
        for entry_id, fields in entries:
            try:
                handle(keys[key], fields)
            except Exception:
                # Left pending: another round (or another relay) claims it again.
                logger.exception("outbox host=%s: entry %s failed", keys[key], entry_id)
                continue
            client.xack(key, GROUP, entry_id)
            client.xdel(key, entry_id)
            handled += 1
    return handled


def relay_forever(consumer: str) -> None:
    hosts: list[str] = []
    known: set[str] = set()
    hosts_at = claim_at = 0.0
    while not _stop.is_set():
        try:
            now = time.monotonic()
            if now - hosts_at >= HOSTS_EVERY_SECONDS:
                hosts, hosts_at = agent_hosts(), now
                for host in set(hosts) - known:
                    ensure_group(get_redis(), outbox.outbox_key(host))
                known = set(hosts)
            if not hosts:
                _stop.wait(HOSTS_EVERY_SECONDS)
                continue
            claim = now - claim_at >= CLAIM_EVERY_SECONDS
            if claim:
                claim_at = now
            relay_once(consumer, hosts, claim)
        except Exception:  # Redis away, or a host deleted under us: the next round retries
            logger.warning("outbox relay round failed", exc_info=True)
            known, hosts_at = set(), 0.0  # read the hosts again: one may have gone
            _stop.wait(1.0)


@worker_ready.connect
def start_relay(sender: Any, **_: object) -> None:
    queues = set(sender.app.amqp.queues.consume_from or {})
    if "engine.query" not in queues or runtime().settings.agent_host:
        return
    threading.Thread(target=relay_forever, args=(sender.hostname,), daemon=True,
                     name="dockyard-outbox-relay").start()
    logger.info("outbox relay started consumer=%s", sender.hostname)


@worker_shutdown.connect
def stop_relay(sender: Any = None, **_: object) -> None:
    _stop.set()
