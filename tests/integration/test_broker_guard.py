"""kombu's Redis channel closed after Celery released its broker connection (a failover).

Celery, on losing the broker, releases the connection and then closes its channel; closing
restores the channel's unacknowledged messages, and kombu 5.7 builds the client for that
from the released connection: ``AttributeError: 'NoneType' object has no attribute
'hostname'``, which stopped the worker ("Unrecoverable error") in test_sentinel's failover
about one run in three. ``app.jobs.celery`` sends such a restore through Dockyard's own client of
the same Redis. This test puts a real channel, on a Redis of its own, into exactly that
state: a message delivered and not acknowledged, the connection released, then the close.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import redis

from app.core.store import get_settings
from app.jobs.celery import make_celery
from tests.integration.test_faults import PrivateRedis


def test_channel_closed_after_its_connection_was_released_restores_its_messages(
        state_dir: Path, monkeypatch) -> None:
    store = PrivateRedis(state_dir / f"broker-guard-{uuid.uuid4().hex[:6]}")
    store.start()
    try:
        for name in ("DOCKYARD_REDIS_PASSWORD", "DOCKYARD_REDIS_PASSWORD_FILE",
                     "DOCKYARD_REDIS_SENTINELS", "DOCKYARD_REDIS_MASTER"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("DOCKYARD_REDIS_URL", store.url)
        monkeypatch.setenv("DOCKYARD_SECRET_KEY", "test-secret-" + uuid.uuid4().hex)
        get_settings.cache_clear()
        celery = make_celery(get_settings())
        queue = f"guard-{uuid.uuid4().hex[:8]}"
        with celery.connection_for_write() as producer:
            producer.SimpleQueue(queue).put({"n": 1})
        client = redis.Redis.from_url(store.url)

        connection = celery.connection_for_read()
        channel = connection.default_channel
        message = connection.SimpleQueue(queue, channel=channel).get(timeout=5)
        assert message.payload == {"n": 1}
        assert (client.llen(queue), client.hlen("unacked")) == (0, 1)

        connection._do_close_transport()  # released, as Celery's recovery leaves it
        channel.close()

        assert (client.llen(queue), client.hlen("unacked")) == (1, 0)
    finally:
        get_settings.cache_clear()
        store.stop()
