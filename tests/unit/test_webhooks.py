"""Signatures (Slack's v0, Dockyard's own), the webhook allow-list and event filters."""

from __future__ import annotations

import hashlib
import hmac
import time

import pytest

from app.core.errors import UnauthorizedError
from app.integrations.chat import slack_signature, verify_mattermost_token, verify_slack_request
from app.integrations.webhook_targets import url_allowed
from app.integrations.webhooks import engine_event_type, event_matches, sign, verify

SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
BODY = b"token=x&team_id=T1&user_id=U1&command=%2Fdockyard&text=ps+local"


def slack_headers(body: bytes, timestamp: int, secret: str = SECRET) -> tuple[str, str]:
    base = b"v0:" + str(timestamp).encode() + b":" + body
    return str(timestamp), "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


def test_slack_signature_is_slacks_documented_algorithm():
    # Slack's documentation example: secret, timestamp and body give this signature.
    body = (b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&"
            b"channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&"
            b"command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2F"
            b"commands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&"
            b"trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c")
    assert slack_signature(SECRET, "1531420618", body) == \
        "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"


def test_valid_slack_request_is_accepted():
    timestamp, signature = slack_headers(BODY, int(time.time()))
    verify_slack_request(SECRET, timestamp, signature, BODY)


@pytest.mark.parametrize("case", ["tampered", "stale", "future", "wrong-secret", "missing",
                                  "no-secret"])
def test_bad_slack_requests_are_refused(case):
    now = int(time.time())
    timestamp, signature = slack_headers(BODY, now)
    body, secret = BODY, SECRET
    if case == "tampered":
        body = BODY.replace(b"ps+local", b"rm+local+web+--yes")
    elif case == "stale":
        timestamp, signature = slack_headers(BODY, now - 301)
    elif case == "future":
        timestamp, signature = slack_headers(BODY, now + 301)
    elif case == "wrong-secret":
        timestamp, signature = slack_headers(BODY, now, "another-secret")
    elif case == "missing":
        signature = None
    else:
        secret = ""
    with pytest.raises(UnauthorizedError):
        verify_slack_request(secret, timestamp, signature, body)


def test_mattermost_token_must_match():
    verify_mattermost_token("tok", "tok")
    for given in ("other", "", None):
        with pytest.raises(UnauthorizedError):
            verify_mattermost_token("tok", given)
    with pytest.raises(UnauthorizedError):
        verify_mattermost_token("", "")


def test_dockyard_signature_header_format_and_verification():
    body = b'{"version":1}'
    header = sign("s3cret", body, 1700000000)
    expected = hmac.new(b"s3cret", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={expected}"
    assert verify("s3cret", body, header, now=1700000010)
    assert not verify("s3cret", body + b" ", header, now=1700000010)
    assert not verify("other", body, header, now=1700000010)
    assert not verify("s3cret", body, header, now=1700000000 + 301)
    assert not verify("s3cret", body, "v1=abc", now=1700000000)


@pytest.mark.parametrize(("url", "allowed", "ok"), [
    ("https://hooks.example.com/x", ("hooks.example.com",), True),
    ("https://HOOKS.example.com:8443/x", ("hooks.example.com",), True),
    ("https://hooks.example.com:8443/x", ("hooks.example.com:443",), False),
    ("https://hooks.example.com/x", ("hooks.example.com:443",), True),
    ("http://hooks.example.com/x", ("hooks.example.com:443",), False),
    ("http://127.0.0.1:9000/cb", ("127.0.0.1",), True),
    ("http://127.0.0.1:9000/cb", ("127.0.0.1:9001",), False),
    ("http://10.1.2.3/cb", ("10.0.0.0/8",), True),
    ("http://192.168.1.1/cb", ("10.0.0.0/8",), False),
    ("http://[::1]:9000/cb", ("[::1]:9000",), True),
    ("http://localhost:9000/cb", ("127.0.0.1",), True),  # resolved: localhost is loopback
    ("http://evil.example.com/", ("example.com",), False),
    ("http://example.com.evil.net/", ("example.com",), False),
    ("http://user:pw@hooks.example.com/", ("hooks.example.com",), False),
    ("ftp://hooks.example.com/", ("hooks.example.com",), False),
    ("file:///etc/passwd", ("hooks.example.com",), False),
    ("http://169.254.169.254/latest/meta-data", (), False),
    ("not a url", ("hooks.example.com",), False),
])
def test_allow_list_matching(url, allowed, ok):
    assert url_allowed(url, allowed) is ok


def test_event_filters_and_engine_event_types():
    assert engine_event_type({"type": "container", "action": "health_status: healthy"}) == \
        "engine.container.health_status"
    assert event_matches(["engine.container.*"], "engine.container.die")
    assert event_matches(["job.failed", "job.cancelled"], "job.failed")
    assert not event_matches(["job.failed"], "job.succeeded")
    assert event_matches(["*"], "engine.image.pull")
