"""/webhooks: signed outbound deliveries of job outcomes and engine events, and their log."""

from __future__ import annotations

from flask.views import MethodView
from flask_smorest import Blueprint

from api.common import principal, requires, visible_job
from app.integrations.webhooks import envelope, job_log, public_subscription, subscription_log, webhooks
from schemas.webhooks import (
    DeliveryAttemptSchema,
    WebhookPayloadSchema,
    WebhookSchema,
    WebhookSpecSchema,
)

blp = Blueprint("webhooks", __name__, description="Outbound webhooks (signed, retried, logged)")


@blp.route("/webhooks")
class Webhooks(MethodView):
    @requires("admin")
    @blp.response(200, WebhookSchema(many=True))
    def get(self) -> list[dict]:
        """Webhook subscriptions."""
        return webhooks().list()

    @requires("admin")
    @blp.arguments(WebhookSpecSchema)
    @blp.response(201, WebhookSchema)
    def post(self, spec: dict) -> dict:
        """Subscribe a URL (its host on DOCKYARD_WEBHOOK_ALLOWED_HOSTS, else 422) to events.

        Filters: `job.succeeded`, `job.failed`, `job.cancelled`, `engine.<type>.<action>`
        (`engine.container.die`, `engine.container.health_status`), with `*` wildcards.
        Every delivery is a `WebhookPayload`, signed with `secret`. A host-scoped admin must
        name hosts inside its own scope (403 `grant-within-scope`): events are data.
        """
        principal().require_grant_within_scope("viewer", spec["hosts"],
                                               "a webhook subscription")
        return webhooks().create(spec["url"], spec["events"], spec["secret"], spec["hosts"],
                                 principal().name)


@blp.route("/webhooks/example-payload")
class WebhookPayloadExample(MethodView):
    @requires("viewer")
    @blp.response(200, WebhookPayloadSchema)
    def get(self) -> dict:
        """An example delivery body, documenting the versioned payload and its headers.

        Each POST carries `Dockyard-Event`, `Dockyard-Delivery` (the same id on every retry)
        and `Dockyard-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<raw body>">`. Retries
        back off exponentially (5 attempts by default); redirects are never followed.
        """
        return envelope("engine.container.start", {
            "host": "edge-1", "type": "container", "action": "start",
            "actor": {"id": "4f2c…", "attributes": {"name": "web", "image": "team/web:1.4"}},
            "scope": "local", "time": 1735689600, "time_nano": 1735689600000000000})


@blp.route("/webhooks/<string:sub_id>")
class Webhook(MethodView):
    @requires("admin")
    @blp.response(200, WebhookSchema)
    def get(self, sub_id: str) -> dict:
        """One subscription."""
        return public_subscription(webhooks().get(sub_id))

    @requires("admin")
    @blp.response(204)
    def delete(self, sub_id: str) -> None:
        """Unsubscribe (queued deliveries still run)."""
        webhooks().delete(sub_id)


@blp.route("/webhooks/<string:sub_id>/deliveries")
class WebhookDeliveries(MethodView):
    @requires("admin")
    @blp.response(200, DeliveryAttemptSchema(many=True))
    def get(self, sub_id: str) -> list[dict]:
        """The subscription's delivery attempts, newest first (status, attempt, error)."""
        webhooks().get(sub_id)
        return webhooks().attempts(subscription_log(sub_id))


@blp.route("/jobs/<string:job_id>/deliveries")
class JobDeliveries(MethodView):
    @requires("viewer")
    @blp.response(200, DeliveryAttemptSchema(many=True))
    def get(self, job_id: str) -> list[dict]:
        """Attempts to deliver this job's outcome to its callback URL or chat reply URL."""
        visible_job(job_id)
        return webhooks().attempts(job_log(job_id))
