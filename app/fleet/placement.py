"""Placement of provisions across hosts: by label selector, least loaded, or all (fan-out)."""

from __future__ import annotations

from typing import Any

from app.core.errors import InvalidInputError
from app.core.task_names import HOSTS_SUMMARY
from app.fleet.hosts import queues_for
from app.jobs.dispatch import lane_alive, run_queries
from app.security.auth import Principal


def matching_hosts(records: list[dict[str, Any]], labels: dict[str, str],
                   caller: Principal) -> list[dict[str, Any]]:
    """Hosts the caller may use whose labels include every selector pair."""
    return [r for r in records
            if caller.may_see_host(r["name"])
            and all((r.get("labels") or {}).get(k) == v for k, v in labels.items())]


def served(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Hosts whose lanes have a live worker (a host nobody serves cannot take work)."""
    return [r for r in records if all(lane_alive(q) for q in queues_for(r))]


def least_loaded(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The host with the fewest running containers (ties by name); unreachable hosts skipped.

    Raises:
        InvalidInputError: no candidate answered.
    """
    answers = run_queries([(HOSTS_SUMMARY, r, []) for r in records])
    ranked = sorted(((a["containers"]["running"], r["name"], r)
                     for r, a in zip(records, answers, strict=True)
                     if isinstance(a, dict)), key=lambda t: (t[0], t[1]))
    if not ranked:
        raise InvalidInputError("no host matching the selector is reachable",
                                errors={"placement": ["no reachable host matches"]})
    return ranked[0][2]


def select_hosts(records: list[dict[str, Any]], labels: dict[str, str], mode: str,
                 caller: Principal) -> list[dict[str, Any]]:
    """The hosts a placed provision goes to: one (least loaded) or all matching.

    Raises:
        InvalidInputError: the selector matches no usable host.
    """
    candidates = served(matching_hosts(records, labels, caller))
    if not candidates:
        raise InvalidInputError(f"no served host matches the selector {labels or '{}'}",
                                errors={"placement": ["no host matches"]})
    return candidates if mode == "all" else [least_loaded(candidates)]
