"""Secrets read from *_FILE variables (compose secrets) and the Redis password joining the URL."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from app.core.config import Settings, SettingsError

SECRETS = ("DOCKYARD_SECRET_KEY", "DOCKYARD_ADMIN_TOKEN", "DOCKYARD_REDIS_PASSWORD",
           "DOCKYARD_WEBHOOK_SECRET", "DOCKYARD_SLACK_SIGNING_SECRET", "DOCKYARD_MATTERMOST_TOKEN")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Each test starts without the secret variables, plain or _FILE, and without a Redis URL."""
    for name in (*SECRETS, *(f"{name}_FILE" for name in SECRETS), "DOCKYARD_REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def secret_file(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    path.chmod(0o600)
    return path


@pytest.mark.parametrize(("variable", "attribute"), [
    ("DOCKYARD_SECRET_KEY", "secret_key"), ("DOCKYARD_ADMIN_TOKEN", "admin_token"),
    ("DOCKYARD_REDIS_PASSWORD", "redis_password"), ("DOCKYARD_WEBHOOK_SECRET", "webhook_secret"),
    ("DOCKYARD_SLACK_SIGNING_SECRET", "slack_signing_secret"),
    ("DOCKYARD_MATTERMOST_TOKEN", "mattermost_token")])
def test_a_file_variable_is_read_without_its_trailing_newline(
        clean_env: pytest.MonkeyPatch, tmp_path: Path, variable: str, attribute: str) -> None:
    clean_env.setenv(f"{variable}_FILE", str(secret_file(tmp_path, "s", "from-the-file \n")))
    assert getattr(Settings(), attribute) == "from-the-file "


def test_a_file_variable_wins_over_the_plain_one(clean_env: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    clean_env.setenv("DOCKYARD_SECRET_KEY", "from-the-environment")
    clean_env.setenv("DOCKYARD_SECRET_KEY_FILE", str(secret_file(tmp_path, "key", "from-the-file")))
    assert Settings().secret_key == "from-the-file"


def test_the_plain_variable_is_used_without_a_file_variable(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("DOCKYARD_ADMIN_TOKEN", "dy_plain")
    clean_env.setenv("DOCKYARD_ADMIN_TOKEN_FILE", "")
    assert Settings().admin_token == "dy_plain"


@pytest.mark.parametrize("variable", SECRETS)
def test_a_missing_file_is_a_startup_error_naming_the_variable(
        clean_env: pytest.MonkeyPatch, tmp_path: Path, variable: str) -> None:
    clean_env.setenv(f"{variable}_FILE", str(tmp_path / "absent"))
    with pytest.raises(SettingsError, match=rf"^{variable}_FILE: cannot read .*absent"):
        Settings()


def test_an_unreadable_file_is_a_startup_error_naming_the_variable(
        clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # A folder cannot be read as a file, whoever runs the test (root ignores 0000 modes).
    clean_env.setenv("DOCKYARD_SECRET_KEY_FILE", str(tmp_path))
    with pytest.raises(SettingsError, match=r"^DOCKYARD_SECRET_KEY_FILE: cannot read"):
        Settings()


def test_the_redis_password_joins_the_url_escaped(clean_env: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    password = "p@ss/w:rd%"
    clean_env.setenv("DOCKYARD_REDIS_URL", "redis://redis:6379/2")
    clean_env.setenv("DOCKYARD_REDIS_PASSWORD_FILE", str(secret_file(tmp_path, "pw", password)))
    settings = Settings()
    assert settings.redis_url == "redis://:p%40ss%2Fw%3Ard%25@redis:6379/2"
    parsed = redis.connection.parse_url(settings.redis_url)
    assert (parsed["password"], parsed["host"], parsed["port"], parsed["db"]) == \
        (password, "redis", 6379, 2)


def test_the_redis_password_keeps_the_urls_user(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("DOCKYARD_REDIS_URL", "rediss://agent-edge-1@redis.internal:6380/0")
    clean_env.setenv("DOCKYARD_REDIS_PASSWORD", "s3cret")
    assert Settings().redis_url == "rediss://agent-edge-1:s3cret@redis.internal:6380/0"


def test_the_redis_password_goes_into_a_unix_socket_urls_query(
        clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("DOCKYARD_REDIS_URL", "unix:///run/redis/redis.sock?db=3")
    clean_env.setenv("DOCKYARD_REDIS_PASSWORD", "s3cret")
    url = Settings().redis_url
    assert url == "unix:///run/redis/redis.sock?db=3&password=s3cret"
    assert redis.connection.parse_url(url)["password"] == "s3cret"


def test_a_password_in_both_the_url_and_the_setting_is_refused(
        clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("DOCKYARD_REDIS_URL", "redis://:inline@redis:6379/0")
    clean_env.setenv("DOCKYARD_REDIS_PASSWORD", "s3cret")
    with pytest.raises(SettingsError, match=r"DOCKYARD_REDIS_URL.*DOCKYARD_REDIS_PASSWORD"):
        Settings()


def test_without_a_password_the_url_is_kept_as_given(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("DOCKYARD_REDIS_URL", "redis://:inline@redis:6379/0")
    assert Settings().redis_url == "redis://:inline@redis:6379/0"


def test_diagnostics_show_neither_the_secrets_nor_the_password_in_the_url(
        clean_env: pytest.MonkeyPatch) -> None:
    for variable in SECRETS:
        clean_env.setenv(variable, f"value-of-{variable}")
    public = Settings().as_public_dict()
    assert public["redis_url"] == "redis://:***@127.0.0.1:6379/0"
    assert not {"secret_key", "admin_token", "redis_password"} & set(public)
    assert not any(f"value-of-{variable}" in repr(public) for variable in SECRETS)
