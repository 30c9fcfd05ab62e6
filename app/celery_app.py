"""The Celery app for workers that need no Flask app (agents): ``celery -A app.celery_app``."""

from app.runtime import runtime

celery = runtime().celery
