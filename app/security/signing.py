"""Ed25519-signed task messages: enqueuers sign every message, workers refuse any other."""

from __future__ import annotations

import base64
import binascii
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from celery import Celery, bootsteps, signals
from celery.app.amqp import AMQP
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from kombu.serialization import register
from kombu.utils import json as kombu_json

from app.core.config import Settings

logger = logging.getLogger(__name__)

SERIALIZER = "dockyard-signed"
CONTENT_TYPE = "application/x-dockyard-signed"
SIGNATURE_HEADER = "dockyard_signature"
SIGNED_AT_HEADER = "dockyard_signed_at"
# The Redis transport marks a message it restores for redelivery (worker lost, visibility
# timeout) with this header; it says nothing about what runs, so it is left out.
_UNSIGNED_HEADERS = frozenset({SIGNATURE_HEADER, "redelivered"})
_HKDF_INFO = b"dockyard task signing"
_DOMAIN = b"dockyard-task-v1\n"
# Clocks of the API and of agent hosts differ a little; a message from further ahead is forged.
_FUTURE_SKEW_SECONDS = 300


class SigningKeyError(RuntimeError):
    """No key to sign or verify task messages with, or keys that do not belong together."""


class TaskMessageRefusedError(Exception):
    """A task message that must not run; ``reason`` goes to the worker log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# -- keys ------------------------------------------------------------------------------------


@lru_cache(maxsize=4)
def signing_key(secret_key: str) -> Ed25519PrivateKey:
    """The Ed25519 key derived from DOCKYARD_SECRET_KEY: no new secret to distribute."""
    if not secret_key:
        raise SigningKeyError("DOCKYARD_SECRET_KEY is not set: this process cannot sign tasks")
    seed = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=_HKDF_INFO).derive(secret_key.encode())
    return Ed25519PrivateKey.from_private_bytes(seed)


def encode_verify_key(key: Ed25519PublicKey) -> str:
    return base64.b64encode(key.public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


def verify_key(settings: Settings) -> Ed25519PublicKey:
    """DOCKYARD_TASK_VERIFY_KEY, else the public half of the key DOCKYARD_SECRET_KEY derives.

    Raises:
        SigningKeyError: neither is set, the key is malformed, or the two disagree.
    """
    derived = signing_key(settings.secret_key).public_key() if settings.secret_key else None
    if not settings.task_verify_key:
        if derived is None:
            raise SigningKeyError("set DOCKYARD_TASK_VERIFY_KEY (dockyard-admin task-verify-key) "
                                  "or DOCKYARD_SECRET_KEY: workers refuse unverifiable tasks")
        return derived
    try:
        raw = base64.b64decode(settings.task_verify_key, validate=True)
        given = Ed25519PublicKey.from_public_bytes(raw)
    except (binascii.Error, ValueError) as exc:
        raise SigningKeyError("DOCKYARD_TASK_VERIFY_KEY is not a base64 Ed25519 public key"
                              ) from exc
    if derived is not None and encode_verify_key(derived) != encode_verify_key(given):
        raise SigningKeyError("DOCKYARD_TASK_VERIFY_KEY does not belong to DOCKYARD_SECRET_KEY")
    return given


# -- what is signed ---------------------------------------------------------------------------


def signed_bytes(headers: dict[str, Any], routing_key: str, body: bytes) -> bytes:
    """The exact bytes a signature covers: headers (bar two), routing key and body.

    Headers are canonical JSON (sorted keys) so a transport's round trip (tuples become
    lists) changes nothing; the body is the serialized bytes as they travel.
    """
    covered = {key: value for key, value in headers.items() if key not in _UNSIGNED_HEADERS}
    envelope = kombu_json.dumps({"headers": covered, "routing_key": routing_key},
                                sort_keys=True, separators=(",", ":"))
    return _DOMAIN + envelope.encode() + b"\n" + body


def sign(key: Ed25519PrivateKey, headers: dict[str, Any], routing_key: str, body: bytes,
         now: float | None = None) -> None:
    """Stamp ``headers`` with the signing time and the signature over the whole message."""
    headers[SIGNED_AT_HEADER] = int(time.time() if now is None else now)
    signature = key.sign(signed_bytes(headers, routing_key, body))
    headers[SIGNATURE_HEADER] = base64.b64encode(signature).decode()


def verify(key: Ed25519PublicKey, headers: dict[str, Any], routing_key: str, body: bytes,
           max_age: float, now: float | None = None) -> None:
    """Check a received message's signature and age.

    Raises:
        TaskMessageRefusedError: unsigned, bad signature, expired or from the future.
    """
    encoded = headers.get(SIGNATURE_HEADER)
    if not encoded:
        raise TaskMessageRefusedError("unsigned")
    try:
        key.verify(base64.b64decode(encoded, validate=True),
                   signed_bytes(headers, routing_key, body))
    except (InvalidSignature, binascii.Error, ValueError, TypeError) as exc:
        raise TaskMessageRefusedError("bad signature") from exc
    signed_at = headers.get(SIGNED_AT_HEADER)
    now = time.time() if now is None else now
    if not isinstance(signed_at, int) or now - signed_at > max_age:
        raise TaskMessageRefusedError(f"expired (signed at {signed_at}, max age {max_age:g}s)")
    if signed_at > now + _FUTURE_SKEW_SECONDS:
        raise TaskMessageRefusedError(f"signed in the future ({signed_at})")


# -- sending: before_task_publish signs, the serializer hands kombu the bytes it signed ---------


@dataclass
class _Serialized:
    body: Any
    data: bytes


_last_serialized = threading.local()


def _encode(body: Any) -> bytes:
    # The signal serialized exactly this object a moment ago on this thread: reuse its bytes,
    # so what travels is what was signed and the body is serialized once.
    done: _Serialized | None = getattr(_last_serialized, "value", None)
    if done is not None and done.body is body:
        return done.data
    # Not a task message (remote-control broadcasts share the task serializer): plain JSON.
    return kombu_json.dumps(body).encode()


def _decode(data: str | bytes) -> Any:
    return kombu_json.loads(data)


register(SERIALIZER, _encode, _decode, content_type=CONTENT_TYPE, content_encoding="utf-8")


class TaskSigner:
    """Signs the task messages one Celery app publishes, with the key its settings derive."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def sign_message(self, body: Any, headers: dict[str, Any], routing_key: str) -> None:
        key = signing_key(self.settings.secret_key)  # raises: no unsigned message leaves
        data = kombu_json.dumps(body).encode()
        _last_serialized.value = _Serialized(body, data)
        sign(key, headers, routing_key, data)


_sending = threading.local()


class SigningAMQP(AMQP):
    """Celery's AMQP whose task sender lets ``before_task_publish`` find this app's signer.

    The signal does not say which app publishes; a process may hold several apps (tests
    do), each with its own key.
    """

    def _create_task_sender(self) -> Callable[..., Any]:
        send = super()._create_task_sender()
        signer = getattr(self.app, "dockyard_task_signer", None)

        def send_signed(*args: Any, **kwargs: Any) -> Any:
            _sending.signer = signer
            try:
                return send(*args, **kwargs)
            finally:
                _sending.signer = None

        return send_signed


def _sign_before_publish(body: Any = None, headers: dict[str, Any] | None = None,
                         routing_key: str | None = None, **_: Any) -> None:
    signer: TaskSigner | None = getattr(_sending, "signer", None)
    if signer is not None and headers is not None:
        signer.sign_message(body, headers, routing_key or "")


# -- receiving: a consumer step refuses before a task request exists ---------------------------


TaskCheck = Callable[[str, list[Any]], "str | None"]


class TaskVerifier:
    """Everything a worker checks before it lets a message become a task request."""

    def __init__(self, settings: Settings) -> None:
        self.key = verify_key(settings)
        self.max_age = float(settings.task_signature_max_age_seconds)
        self.agent_host = settings.agent_host
        if self.max_age <= settings.effective_visibility_timeout:
            # A redelivered message keeps its signing time: it must still be young enough.
            raise SigningKeyError(
                "DOCKYARD_TASK_SIGNATURE_MAX_AGE_SECONDS must exceed the visibility timeout "
                f"({settings.effective_visibility_timeout}s) or redelivered jobs are refused")

    def check(self, message: Any, task: Any, consumed: set[str]) -> None:
        """Refuse ``message`` unless it is signed, fresh, for this worker and for its job.

        Raises:
            TaskMessageRefusedError: the reason the message must not run.
        """
        headers = message.headers or {}
        routing_key = (message.delivery_info or {}).get("routing_key") or ""
        body = message.body if isinstance(message.body, bytes) else str(message.body).encode()
        verify(self.key, headers, routing_key, body, self.max_age)
        if routing_key not in consumed:
            raise TaskMessageRefusedError(f"signed for queue '{routing_key}', not one this worker "
                                     "consumes")
        check: TaskCheck | None = getattr(task, "check_task_message", None)
        if check is not None or self.agent_host:
            payload = message.decode()  # decoded once: the request reuses it
            if not isinstance(payload, list | tuple) or len(payload) != 3 \
                    or not isinstance(payload[0], list):
                raise TaskMessageRefusedError("not a protocol 2 task body")
            # Every task of a host's lanes names its host second (job, reply or pipe id first).
            if self.agent_host and (len(payload[0]) < 2 or payload[0][1] != self.agent_host):
                raise TaskMessageRefusedError("not for this agent's host")
            reason = check(str(headers.get("id")), payload[0]) if check is not None else None
            if reason:
                raise TaskMessageRefusedError(reason)


def _guarded(strategy: Callable[..., Any], task: Any, verifier: TaskVerifier,
             consumer: Any) -> Callable[..., Any]:
    def on_message(message: Any, body: Any, ack: Any, reject: Any, callbacks: Any = None,
                   **kwargs: Any) -> Any:
        try:
            verifier.check(message, task, _consumed_routes(consumer))
        except TaskMessageRefusedError as refusal:
            headers = message.headers or {}
            logger.warning("refused task message %s id=%s queue=%s: %s",
                           headers.get("task", task.name), headers.get("id"),
                           (message.delivery_info or {}).get("routing_key"), refusal.reason)
            # Acked, so it is gone for good rather than redelivered after the visibility timeout.
            ack(logger, consumer.connection_errors)
            return None
        return strategy(message, body, ack, reject, callbacks, **kwargs)

    on_message.dockyard_guarded = True  # type: ignore[attr-defined]
    return on_message


def _consumed_routes(consumer: Any) -> set[str]:
    queues = getattr(consumer.task_consumer, "queues", None) or []
    return {q.routing_key for q in queues} | {q.name for q in queues}


def guard_step(settings: Settings) -> type[bootsteps.StartStopStep]:
    """A worker-consumer step that wraps every task's strategy with the signature check.

    It runs on the consumer, before a task request exists: a refused message never
    reaches the pool, changes no job and is acknowledged so it is not redelivered.
    """

    class TaskMessageGuard(bootsteps.StartStopStep):
        requires = ("celery.worker.consumer.tasks:Tasks",)

        def __init__(self, parent: Any, **kwargs: Any) -> None:
            super().__init__(parent, **kwargs)
            self.verifier = TaskVerifier(settings)  # no key: the worker does not start

        def start(self, parent: Any) -> None:
            # Tasks.start rebuilds the strategies on every (re)connection; wrap them again.
            for name, strategy in list(parent.strategies.items()):
                if not getattr(strategy, "dockyard_guarded", False):
                    parent.strategies[name] = _guarded(strategy, parent.app.tasks[name],
                                                       self.verifier, parent)

    return TaskMessageGuard


def install(celery: Celery, settings: Settings) -> None:
    """Sign what this app sends and verify what its workers receive."""
    if "amqp" in celery.__dict__:
        raise RuntimeError("install task signing before the Celery app is used")
    celery.amqp_cls = SigningAMQP
    celery.dockyard_task_signer = TaskSigner(settings)
    celery.conf.update(task_serializer=SERIALIZER, accept_content=[SERIALIZER])
    # Connected after the request-id receiver, so the signature covers that header too.
    signals.before_task_publish.connect(_sign_before_publish, weak=False,
                                        dispatch_uid="dockyard-task-signing")
    celery.steps["consumer"].add(guard_step(settings))
