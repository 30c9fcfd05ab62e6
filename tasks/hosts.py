"""Reads of a whole engine: ping, version, info, disk usage, events."""

from __future__ import annotations

from celery import shared_task

from app.core.task_names import (
    HOSTS_DF,
    HOSTS_EVENTS,
    HOSTS_INFO,
    HOSTS_SUMMARY,
    HOSTS_SYNC_AGENT_ACCESS,
    HOSTS_VERSION,
)
from app.engine import events, system
from app.runtime import runtime
from tasks.base import QueryTask


@shared_task(bind=True, base=QueryTask, name=HOSTS_SUMMARY)
def host_summary(self: QueryTask, reply_id: str, host: str, revision: int) -> None:
    def read(client):
        summary = system.host_summary(client)
        runtime().hosts.record_seen(host, summary["engine_version"])
        return summary

    self.reply(reply_id, host, revision, read)


@shared_task(name=HOSTS_SYNC_AGENT_ACCESS, acks_late=False)
def sync_agent_access() -> dict[str, int]:
    """Rebuild the agents' Redis ACL users from the host records (beat, every minute)."""
    return runtime().hosts.sync_agent_access()


@shared_task(bind=True, base=QueryTask, name=HOSTS_INFO)
def host_info(self: QueryTask, reply_id: str, host: str, revision: int) -> None:
    self.reply(reply_id, host, revision, system.engine_info)


@shared_task(bind=True, base=QueryTask, name=HOSTS_VERSION)
def host_version(self: QueryTask, reply_id: str, host: str, revision: int) -> None:
    self.reply(reply_id, host, revision, system.engine_version)


@shared_task(bind=True, base=QueryTask, name=HOSTS_DF)
def host_df(self: QueryTask, reply_id: str, host: str, revision: int) -> None:
    self.reply(reply_id, host, revision, system.disk_usage)


@shared_task(bind=True, base=QueryTask, name=HOSTS_EVENTS)
def host_events(self: QueryTask, reply_id: str, host: str, revision: int, since: float,
                until: float, filters: dict[str, list[str]], limit: int) -> None:
    self.reply(reply_id, host, revision,
               lambda client: events.list_events(client, since, until, filters, limit))
