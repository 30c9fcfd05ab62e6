"""Shared fixtures of the unit tests: nothing here connects to any service."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask import Flask


@pytest.fixture(scope="module")
def offline_app() -> Iterator[Flask]:
    """The API's Flask app, built without any service: its Redis URL points where nothing
    listens, and nothing built for it stays for other tests."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("DOCKYARD_SECRET_KEY", "unit-test-secret")
        env.setenv("DOCKYARD_ADMIN_TOKEN", "")
        env.setenv("DOCKYARD_REDIS_URL", "redis://127.0.0.1:1/0")  # nothing listens there
        env.delenv("DOCKYARD_REDIS_PASSWORD_FILE", raising=False)
        from app.core.store import get_settings
        from app.factory import create_app

        get_settings.cache_clear()
        try:
            yield create_app()
        finally:
            import app.core.store
            import app.runtime

            get_settings.cache_clear()
            app.core.store._reset_after_fork()
            app.runtime._runtime = app.runtime.Runtime()
