"""An agent's outbox: what must reach shared state, carried out by the central read workers.

An agent's Redis login reaches only its own host's keys (app/security/agent_access.py), so what a
job's end or an engine event must change elsewhere (a fan-out parent, webhooks and chat
replies, ``dy:events``, the audit log) is posted to ``dy:h:<host>:outbox`` instead. The
relay (tasks/outbox.py) reads every agent host's outbox and does the work itself, after
checking that the job an entry names is one of that host's jobs.
"""

from __future__ import annotations

import json
from typing import Any

from app.core.store import get_redis
from app.security.agent_access import key_prefix

JOB_END, AUDIT, ENGINE_EVENT = "job-end", "audit", "engine-event"
KINDS = frozenset({JOB_END, AUDIT, ENGINE_EVENT})
MAXLEN = 10_000


def outbox_key(host: str) -> str:
    return key_prefix(host) + "outbox"


def post(host: str, kind: str, **data: Any) -> None:
    """Append an entry for the relay (raises what Redis raises)."""
    get_redis().xadd(outbox_key(host), {"kind": kind, "data": json.dumps(data, default=str)},
                     maxlen=MAXLEN, approximate=True)
