"""Worker-process wiring: lane heartbeats so the API can tell a served host from a dead one."""

from __future__ import annotations

import logging
import threading

from celery.signals import worker_ready, worker_shutdown

from app.jobs.dispatch import LANE_TTL_SECONDS, beat_lanes, leave_lanes
from app.runtime import runtime

logger = logging.getLogger(__name__)

_stop = threading.Event()
_lanes: dict[str, list[str]] = {}


def _beat_forever(queues: list[str], worker: str) -> None:
    while not _stop.wait(LANE_TTL_SECONDS / 3):
        try:
            beat_lanes(queues, worker)
        except Exception:  # Redis may be briefly away; the next beat retries.
            logger.warning("lane heartbeat failed worker=%s", worker, exc_info=True)


@worker_ready.connect
def start_lane_heartbeat(sender, **_: object) -> None:
    queues = sorted(sender.app.amqp.queues.consume_from or {})
    worker = sender.hostname
    _lanes[worker] = queues
    beat_lanes(queues, worker)
    threading.Thread(target=_beat_forever, args=(queues, worker), daemon=True,
                     name="dockyard-lane-heartbeat").start()
    if "engine.query" in queues and not runtime().settings.agent_host:
        # ACL users are not persisted nor replicated: a restarted Redis has lost them.
        try:
            runtime().hosts.sync_agent_access()
        except Exception:
            logger.warning("could not rebuild the agents' Redis users", exc_info=True)
    logger.info("worker %s serves lanes %s", worker, ",".join(queues))


@worker_shutdown.connect
def stop_lane_heartbeat(sender=None, **_: object) -> None:
    _stop.set()
    for worker, queues in _lanes.items():
        try:
            leave_lanes(queues, worker)
        except Exception:
            logger.warning("could not leave lanes worker=%s", worker, exc_info=True)
