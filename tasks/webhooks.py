"""Webhook deliveries: one attempt per run, retried with exponential backoff."""

from __future__ import annotations

from celery import Task, shared_task

from app.core.task_names import WEBHOOKS_DELIVER
from app.integrations.webhooks import attempt_delivery, retry_delay
from app.runtime import runtime


@shared_task(bind=True, name=WEBHOOKS_DELIVER, acks_late=True, max_retries=None,
             ignore_result=True)
def deliver(self: Task, delivery_id: str) -> None:
    attempt = self.request.retries + 1
    outcome = attempt_delivery(delivery_id, attempt)
    if not outcome.done:
        # The backoff base is a float (tests use half a second), which Celery's
        # retry_backoff cannot take; the countdown is computed the same way.
        raise self.retry(countdown=retry_delay(attempt), queue=runtime().settings.webhook_queue,
                         max_retries=runtime().settings.webhook_max_attempts)
