"""Queue naming as kombu's Redis transport does it, and the WAIT settings' defaults."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from kombu.transport.redis import PRIORITY_STEPS, Channel

from app.core.config import Settings
from app.jobs.handoff import queue_key, queue_keys


@pytest.mark.parametrize("priority", range(10))
def test_queue_key_is_kombus_list_for_the_priority(priority: int) -> None:
    channel = SimpleNamespace(sep=Channel.sep, priority_steps=PRIORITY_STEPS)
    channel.priority = lambda n: Channel.priority(channel, n)
    assert queue_key("engine.ops", priority) == Channel._q_for_pri(channel, "engine.ops",
                                                                   priority)


def test_queue_keys_cover_every_priority_list() -> None:
    assert queue_keys("engine.ops")[0] == "engine.ops"
    assert len(set(queue_keys("engine.ops"))) == len(PRIORITY_STEPS)


def test_wait_replicas_default_to_one_with_sentinels_else_zero() -> None:
    assert Settings(redis_url="redis://127.0.0.1/0").wait_replicas == 0
    sentinel = Settings(redis_url="redis://127.0.0.1/0", redis_sentinels=("127.0.0.1:1",),
                        redis_master="m")
    assert sentinel.wait_replicas == 1
    assert Settings(redis_url="redis://127.0.0.1/0", redis_sentinels=("127.0.0.1:1",),
                    redis_master="m", redis_wait_replicas=0).wait_replicas == 0
    assert Settings(redis_url="redis://127.0.0.1/0", redis_wait_replicas=2).wait_replicas == 2
