"""Task message signatures: what they cover, which keys sign and verify, when they expire."""

from __future__ import annotations

import time

import pytest
from kombu.serialization import dumps, loads

from app.core.config import Settings
from app.security import signing

SECRET = "unit-secret-key"
HEADERS = {"task": "containers.provision", "id": "job-1", "eta": None, "retries": 0,
           "timelimit": (None, None), "dockyard_request_id": "req-1"}
BODY = b'[["job-1","local",{"image":"busybox"},false],{},{}]'


def signed(**changes: object) -> dict:
    headers = {**HEADERS, **changes}
    signing.sign(signing.signing_key(SECRET), headers, "engine.ops", BODY)
    return headers


def public(secret: str = SECRET):
    return signing.signing_key(secret).public_key()


def test_a_signed_message_verifies_after_a_json_round_trip_of_its_headers() -> None:
    headers = signed()
    travelled = {**headers, "timelimit": [None, None]}  # tuples come back as lists
    signing.verify(public(), travelled, "engine.ops", BODY, max_age=60)


def test_the_brokers_redelivery_mark_does_not_break_the_signature() -> None:
    signing.verify(public(), {**signed(), "redelivered": True}, "engine.ops", BODY, max_age=60)


@pytest.mark.parametrize("tamper", [
    lambda h, rk, b: ({**h, "task": "containers.remove"}, rk, b),
    lambda h, rk, b: ({**h, "id": "job-2"}, rk, b),
    lambda h, rk, b: ({**h, "timelimit": [None, 99999]}, rk, b),
    lambda h, rk, b: ({**h, "extra": "added"}, rk, b),
    lambda h, rk, b: ({**h, signing.SIGNED_AT_HEADER: h[signing.SIGNED_AT_HEADER] + 1}, rk, b),
    lambda h, rk, b: (h, "host.other.ops", b),
    lambda h, rk, b: (h, rk, b.replace(b"false", b"true")),
], ids=["task", "id", "header", "added-header", "signed-at", "routing-key", "body"])
def test_changing_any_part_of_a_signed_message_breaks_its_signature(tamper) -> None:
    headers, routing_key, body = tamper(signed(), "engine.ops", BODY)
    with pytest.raises(signing.TaskMessageRefusedError, match="bad signature"):
        signing.verify(public(), headers, routing_key, body, max_age=60)


def test_a_message_without_signature_is_refused_as_unsigned() -> None:
    with pytest.raises(signing.TaskMessageRefusedError, match="unsigned"):
        signing.verify(public(), dict(HEADERS), "engine.ops", BODY, max_age=60)


def test_a_message_signed_with_another_secret_key_is_refused() -> None:
    with pytest.raises(signing.TaskMessageRefusedError, match="bad signature"):
        signing.verify(public("another-secret"), signed(), "engine.ops", BODY, max_age=60)


def test_a_signature_older_than_the_max_age_is_refused_as_expired() -> None:
    headers = dict(HEADERS)
    signing.sign(signing.signing_key(SECRET), headers, "engine.ops", BODY,
                 now=time.time() - 3601)
    with pytest.raises(signing.TaskMessageRefusedError, match="expired"):
        signing.verify(public(), headers, "engine.ops", BODY, max_age=3600)
    signing.verify(public(), headers, "engine.ops", BODY, max_age=3700)


def test_a_signature_from_far_in_the_future_is_refused() -> None:
    headers = dict(HEADERS)
    signing.sign(signing.signing_key(SECRET), headers, "engine.ops", BODY,
                 now=time.time() + 3600)
    with pytest.raises(signing.TaskMessageRefusedError, match="future"):
        signing.verify(public(), headers, "engine.ops", BODY, max_age=86400)


def test_the_signing_key_is_derived_deterministically_from_the_secret_key() -> None:
    assert signing.encode_verify_key(public()) == signing.encode_verify_key(public())
    assert signing.encode_verify_key(public()) != signing.encode_verify_key(public("other"))


def test_a_worker_verifies_with_the_explicit_key_and_no_secret_key() -> None:
    given = signing.encode_verify_key(public())
    key = signing.verify_key(Settings(secret_key="", task_verify_key=given))
    signing.verify(key, signed(), "engine.ops", BODY, max_age=60)


def test_a_process_with_only_the_verify_key_cannot_sign() -> None:
    signer = signing.TaskSigner(Settings(secret_key="",
                                         task_verify_key=signing.encode_verify_key(public())))
    with pytest.raises(signing.SigningKeyError):
        signer.sign_message(([], {}, {}), dict(HEADERS), "engine.ops")


def test_a_verify_key_that_is_not_the_secret_keys_public_half_is_a_configuration_error() -> None:
    other = signing.encode_verify_key(public("other"))
    with pytest.raises(signing.SigningKeyError, match="does not belong"):
        signing.verify_key(Settings(secret_key=SECRET, task_verify_key=other))


def test_without_any_key_a_worker_cannot_verify() -> None:
    with pytest.raises(signing.SigningKeyError):
        signing.TaskVerifier(Settings(secret_key="", task_verify_key=""))


def test_a_malformed_verify_key_is_a_configuration_error() -> None:
    with pytest.raises(signing.SigningKeyError, match="not a base64"):
        signing.verify_key(Settings(secret_key="", task_verify_key="not-a-key"))


def test_the_max_age_must_exceed_the_visibility_timeout() -> None:
    with pytest.raises(signing.SigningKeyError, match="visibility timeout"):
        signing.TaskVerifier(Settings(secret_key=SECRET, task_time_limit_seconds=3600,
                                      task_signature_max_age_seconds=3600))


def test_the_signer_signs_the_exact_bytes_the_serializer_then_sends() -> None:
    body = (["job-1", "local", {"image": "busybox", "env": {"A": "é"}}], {}, {"chain": None})
    headers = dict(HEADERS)
    signing.TaskSigner(Settings(secret_key=SECRET)).sign_message(body, headers, "engine.ops")
    content_type, encoding, data = dumps(body, serializer=signing.SERIALIZER)
    assert content_type == signing.CONTENT_TYPE
    signing.verify(public(), headers, "engine.ops", data, max_age=60)
    assert loads(data, content_type, encoding, accept=[content_type]) == \
        [["job-1", "local", {"image": "busybox", "env": {"A": "é"}}], {}, {"chain": None}]

