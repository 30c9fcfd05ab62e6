"""The Celery app every worker, agent and beat starts from: ``celery -A app.celery_app``.

It builds no Flask app; workers import the task modules on start-up (``app.jobs.celery``).
"""

from app.runtime import runtime

celery = runtime().celery
