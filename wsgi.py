"""WSGI entry point for gunicorn (``wsgi:app``).

The Flask app is built on first access (with gunicorn's ``preload_app``, once in the
master). Celery processes start from ``app.celery_app:celery`` and never build it.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "app":
        from app.factory import create_app

        globals()["app"] = create_app()
        return globals()["app"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
