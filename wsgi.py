"""WSGI entry point for gunicorn; ``celery -A wsgi`` finds the Celery app here too."""

from app.factory import create_app

app = create_app()
celery = app.extensions["celery"]
