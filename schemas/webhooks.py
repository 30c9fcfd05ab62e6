"""Schemas for /webhooks (subscriptions, delivery log), the payload they receive and /events."""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from schemas.common import FullMatch

# job.succeeded|failed|cancelled, engine.<type>.<action>, with * wildcards (job.*, engine.*).
EVENT_ID = r"^\d{1,20}-\d{1,20}$"
EVENT_FILTER = r"^(\*|job\.(\*|succeeded|failed|cancelled)|engine\.[a-z*]+(\.[a-z_*]+)?)$"


class WebhookSpecSchema(Schema):
    """`POST /webhooks`."""

    url = fields.String(required=True, validate=validate.Length(min=1, max=2048), metadata={
        "description": "http(s) URL whose host is on DOCKYARD_WEBHOOK_ALLOWED_HOSTS"})
    events = fields.List(fields.String(validate=FullMatch(EVENT_FILTER, error=(
        "an event filter is job.succeeded, job.failed, job.cancelled, engine.<type>.<action> "
        "or a pattern with * (job.*, engine.container.*)"))), required=True,
        validate=validate.Length(min=1, max=50))
    secret = fields.String(required=True, load_only=True, validate=validate.Length(min=16, max=256),
                           metadata={"description": "HMAC key of the Dockyard-Signature header"})
    hosts = fields.List(fields.String(validate=validate.Length(min=1, max=128)),
                        load_default=None, allow_none=True,
                        metadata={"description": "only events of these hosts (default: all)"})


class WebhookSchema(Schema):
    """A subscription (its secret is never shown)."""

    id = fields.String()
    url = fields.String()
    events = fields.List(fields.String())
    hosts = fields.List(fields.String(), allow_none=True)
    created_at = fields.String()
    created_by = fields.String()
    links = fields.Dict(keys=fields.String(), values=fields.String())


class DeliveryAttemptSchema(Schema):
    """One attempt of one delivery, newest first in the log."""

    delivery = fields.String(metadata={"description": "the Dockyard-Delivery id (same on retries)"})
    event = fields.String()
    url = fields.String()
    attempt = fields.Integer()
    status = fields.Integer(allow_none=True, metadata={"description": "HTTP status, if any"})
    error = fields.String(allow_none=True)
    outcome = fields.String(validate=validate.OneOf(["delivered", "retrying", "failed"]))
    duration_ms = fields.Integer()
    at = fields.String()


class WebhookPayloadSchema(Schema):
    """The body of every Dockyard webhook delivery (version 1).

    Headers: `Dockyard-Event` (the type), `Dockyard-Delivery` (an id, the same on every
    retry: dedupe on it), `Dockyard-Signature: t=<unix>,v1=<hex>` where `v1` is the hex
    HMAC-SHA256, keyed by the subscription's secret (callbacks: DOCKYARD_WEBHOOK_SECRET), of
    `"<t>.<raw body>"`. Receivers should recompute it, compare in constant time and refuse
    a `t` older than five minutes.
    """

    version = fields.Integer(required=True, metadata={"description": "payload version: 1"})
    type = fields.String(required=True, metadata={
        "description": "job.succeeded, job.failed, job.cancelled or engine.<type>.<action>"})
    created_at = fields.String(required=True, metadata={"description": "RFC 3339 UTC"})
    data = fields.Dict(required=True, metadata={
        "description": "job.*: the Job as GET /jobs/{id} shows it; engine.*: the event "
                       "{host, type, action, actor: {id, attributes}, scope, time, time_nano}"})


class EventStreamArgsSchema(Schema):
    host = fields.List(fields.String(validate=validate.Length(min=1, max=128)), required=True,
                       validate=validate.Length(min=1, max=50),
                       metadata={"description": "the hosts to watch; repeat for several"})
    type = fields.List(fields.String(validate=validate.Length(min=1, max=64)), load_default=list,
                       metadata={"description": "engine object type: container, image, "
                                                "network, volume, … (repeatable)"})
    action = fields.List(fields.String(validate=validate.Length(min=1, max=64)),
                         load_default=list, metadata={"description": "start, die, oom, …"})
    after = fields.String(load_default=None, validate=FullMatch(EVENT_ID), metadata={
        "description": "resume after this event id (the Last-Event-ID header wins)"})
