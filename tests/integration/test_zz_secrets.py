"""No secret the suite used shows up in anything the session produced (collected last: zz).

Secrets: the admin token, the Fernet key, every token the suite was issued, and every
password, TLS client key, SSH key and passphrase it sent (gathered by conftest's Api
client). Searched: every response body the suite's clients saw, every key of the
suite's Redis database (job records, events, audit, inventory), every log line of every
stack the session started, and the append-only files of the private Redis servers, which
hold every write those stacks ever made (job records and events included).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import redis

from tests.integration import conftest
from tests.integration.conftest import EXCHANGE_LOG, SUITE_SECRETS, TEST_REDIS_URL
from tests.integration.helpers import REGISTRY_PASSWORD

_PEM_BODY = re.compile(r"-----BEGIN [A-Z ]+-----(.*?)-----END", re.DOTALL)


def needles() -> dict[str, str]:
    """Each secret (or, for PEM keys, each line of its body) -> a label that does not leak it."""
    found: dict[str, str] = {}
    # Secrets the suite hands its stack through the environment (chat, webhooks), if any.
    configured = {getattr(conftest, name, None) for name in (
        "WEBHOOK_SECRET", "SLACK_SIGNING_SECRET", "MATTERMOST_TOKEN")} - {None}
    for number, secret in enumerate(sorted({*SUITE_SECRETS, *configured, REGISTRY_PASSWORD})):
        label = f"secret #{number} ({secret[:4]}…, {len(secret)} chars)"
        body = _PEM_BODY.search(secret)
        if body:  # a key may be logged with its newlines escaped: look for each line
            for line in body.group(1).split():
                if len(line) >= 40:
                    found[line] = label + " (a line of a PEM key)"
        else:
            found[secret] = label
    return found


def redis_text(client: redis.Redis) -> str:
    parts = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        if kind == "string":
            value = client.get(key)
        elif kind == "hash":
            value = client.hgetall(key)
        elif kind == "list":
            value = client.lrange(key, 0, -1)
        elif kind == "set":
            value = client.smembers(key)
        elif kind == "zset":
            value = client.zrange(key, 0, -1)
        elif kind == "stream":
            value = client.xrange(key)
        else:
            value = ""
        parts.append(f"{key} {value!r}")
    return "\n".join(parts)


def produced_files(state_dir: Path) -> list[Path]:
    """Log files of every stack of the session, and the private Redis servers' AOF files."""
    files = []
    for folder, _dirs, names in os.walk(state_dir):
        parts = Path(folder).parts
        if "log" in parts or "appendonlydir" in parts:
            files.extend(Path(folder) / name for name in names)
    return files


def test_no_secret_appears_in_responses_redis_jobs_events_or_logs(state_dir: Path):
    search = needles()
    assert len(search) >= 3  # the admin token, the Fernet key, the registry password at least
    haystacks = {f"redis {TEST_REDIS_URL}":
                 redis_text(redis.Redis.from_url(TEST_REDIS_URL, decode_responses=True))}
    for path in produced_files(state_dir):
        haystacks[str(path.relative_to(state_dir))] = path.read_bytes().decode("utf-8", "replace")
    assert str(EXCHANGE_LOG.relative_to(state_dir)) in haystacks or not EXCHANGE_LOG.exists()

    leaks = sorted({f"{label} in {where}" for where, text in haystacks.items()
                    for needle, label in search.items() if needle in text})
    assert leaks == [], "\n".join(leaks)
    keys = sorted(where for where, text in haystacks.items() if "PRIVATE KEY-----" in text)
    assert keys == [], f"a PEM private key appears in: {keys}"
