"""Settings read from DOCKYARD_* variables, and the broker settings derived from them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.core.config import Settings
from app.jobs.celery import make_celery

ALL_VARS = [
    "DOCKYARD_REDIS_URL", "DOCKYARD_SECRET_KEY", "DOCKYARD_ADMIN_TOKEN", "DOCKYARD_STATE_DIR",
    "DOCKYARD_BIND_ROOTS", "DOCKYARD_ALLOWED_REGISTRIES", "DOCKYARD_ADMIN_POLICY_EXCEPTIONS",
    "DOCKYARD_MAX_BODY_BYTES", "DOCKYARD_JOB_RETENTION_SECONDS", "DOCKYARD_MAX_WAIT_SECONDS",
    "DOCKYARD_QUERY_TIMEOUT_SECONDS", "DOCKYARD_ENGINE_TIMEOUT_SECONDS",
    "DOCKYARD_TASK_TIME_LIMIT_SECONDS", "DOCKYARD_VISIBILITY_TIMEOUT_SECONDS",
    "DOCKYARD_TOKEN_CACHE_SECONDS", "DOCKYARD_PUBLIC_METRICS",
]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Each test starts from an environment without any DOCKYARD_* variable."""
    for name in {*ALL_VARS, *(n for n in os.environ if n.startswith("DOCKYARD_"))}:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_defaults_without_any_variable() -> None:
    settings = Settings()
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.max_body_bytes == 1 << 20
    assert settings.job_retention_seconds == 7 * 24 * 3600
    assert settings.bind_roots == ("/srv/dockyard",)
    assert settings.allowed_registries == ()
    assert settings.public_metrics is True
    assert settings.secret_key == "" and settings.admin_token == ""


def test_variables_are_parsed_to_their_types(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("DOCKYARD_REDIS_URL", "redis://redis.internal:6380/3")
    clean_env.setenv("DOCKYARD_MAX_BODY_BYTES", "4096")
    clean_env.setenv("DOCKYARD_QUERY_TIMEOUT_SECONDS", "2.5")
    clean_env.setenv("DOCKYARD_STATE_DIR", str(tmp_path / "state"))
    settings = Settings()
    assert settings.redis_url == "redis://redis.internal:6380/3"
    assert settings.max_body_bytes == 4096
    assert settings.query_timeout_seconds == 2.5
    assert settings.state_dir == (tmp_path / "state").resolve()
    assert settings.run_dir == settings.state_dir / "run"


def test_empty_numeric_variables_fall_back_to_defaults(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("DOCKYARD_MAX_BODY_BYTES", "")
    clean_env.setenv("DOCKYARD_MAX_WAIT_SECONDS", "")
    settings = Settings()
    assert settings.max_body_bytes == 1 << 20
    assert settings.max_wait_seconds == 60.0


def test_a_non_numeric_number_fails_at_start_up(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("DOCKYARD_MAX_BODY_BYTES", "lots")
    with pytest.raises(ValueError, match="lots"):
        Settings()


@pytest.mark.parametrize(("raw", "expected"), [
    ("1", True), ("true", True), ("YES", True), (" on ", True),
    ("0", False), ("false", False), ("no", False), ("off", False), ("", True),
])
def test_booleans_accept_the_usual_spellings(clean_env: pytest.MonkeyPatch, raw: str,
                                             expected: bool) -> None:
    clean_env.setenv("DOCKYARD_PUBLIC_METRICS", raw)
    assert Settings().public_metrics is expected


def test_lists_are_comma_separated_and_trimmed(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("DOCKYARD_BIND_ROOTS", " /srv/a , /srv/b,,")
    clean_env.setenv("DOCKYARD_ALLOWED_REGISTRIES", "registry.local:5000")
    settings = Settings()
    assert settings.bind_roots == ("/srv/a", "/srv/b")
    assert settings.allowed_registries == ("registry.local:5000",)


def test_settings_are_read_when_built_not_when_imported(clean_env: pytest.MonkeyPatch) -> None:
    first = Settings()
    clean_env.setenv("DOCKYARD_MAX_BODY_BYTES", "123")
    assert Settings().max_body_bytes == 123
    assert first.max_body_bytes == 1 << 20


def test_public_dict_hides_the_secret_key_and_admin_token(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("DOCKYARD_SECRET_KEY", "s3cret-key-value")
    clean_env.setenv("DOCKYARD_ADMIN_TOKEN", "dy_admin-token-value")
    public = Settings().as_public_dict()
    assert "secret_key" not in public and "admin_token" not in public
    assert "s3cret-key-value" not in str(public) and "dy_admin-token-value" not in str(public)
    assert public["max_body_bytes"] == 1 << 20


def test_default_visibility_timeout_is_above_the_task_time_limit() -> None:
    settings = Settings()
    assert settings.effective_visibility_timeout > settings.task_time_limit_seconds


def test_visibility_timeout_follows_a_raised_task_time_limit(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("DOCKYARD_TASK_TIME_LIMIT_SECONDS", "7200")
    settings = Settings()
    assert settings.effective_visibility_timeout > 7200


def test_an_explicit_visibility_timeout_is_used(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("DOCKYARD_VISIBILITY_TIMEOUT_SECONDS", "9000")
    assert Settings().effective_visibility_timeout == 9000


def test_visibility_timeout_is_never_below_the_task_time_limit(
        clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("DOCKYARD_TASK_TIME_LIMIT_SECONDS", "3600")
    clean_env.setenv("DOCKYARD_VISIBILITY_TIMEOUT_SECONDS", "60")
    try:
        settings = Settings()
    except ValueError:
        return  # refusing the configuration at start-up is a fine answer too
    assert settings.effective_visibility_timeout > settings.task_time_limit_seconds


def test_celery_gets_the_visibility_timeout_and_time_limits(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("DOCKYARD_TASK_TIME_LIMIT_SECONDS", "1200")
    settings = Settings()
    conf = make_celery(settings).conf
    assert conf.task_time_limit == 1200
    assert conf.task_soft_time_limit < conf.task_time_limit
    assert conf.broker_transport_options["visibility_timeout"] > conf.task_time_limit
    assert conf.task_acks_late is True and conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
