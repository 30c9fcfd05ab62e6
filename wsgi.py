"""WSGI entry point for gunicorn (``wsgi:app``); ``celery -A wsgi:celery`` finds the Celery app here too.

Both are built on first access, so Celery workers and beat never build the Flask app (its
views, schemas and OpenAPI spec are tens of MiB per process they would not use).
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "app":
        from app.factory import create_app

        globals()["app"] = create_app()
        return globals()["app"]
    if name == "celery":
        from app.runtime import runtime

        globals()["celery"] = runtime().celery
        return globals()["celery"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
