"""What readers may not learn: environment values, secret-looking labels, process arguments.

One function, ``redact_for``, takes any answer that carries container (or image)
configuration and the caller's role, and answers it with the secrets replaced. Viewers get
every environment value, every label whose key looks secret and the arguments of every
process redacted; every role gets the environment of Dockyard's own containers redacted.
"""

from __future__ import annotations

import re
from typing import Any

REDACTED = "<redacted>"
SYSTEM_LABEL = "dockyard.system"
_SECRET_KEY = re.compile(
    r"pass|pwd|secret|token|credential|auth|private|key|cookie|session|signature|dsn|cert",
    re.IGNORECASE)
_COMMAND_TITLES = ("CMD", "COMMAND", "ARGS")


def looks_secret(key: str) -> bool:
    """Whether a label or variable name looks like it holds a secret."""
    return bool(_SECRET_KEY.search(key))


def redact_env(env: list[str] | None) -> list[str] | None:
    """``KEY=value`` entries with every value replaced (the names stay: they are useful)."""
    if env is None:
        return None
    return [f"{item.partition('=')[0]}={REDACTED}" for item in env]


def redact_labels(labels: dict[str, str] | None) -> dict[str, str] | None:
    if labels is None:
        return None
    return {k: (REDACTED if looks_secret(k) else v) for k, v in labels.items()}


def _redact_config(config: dict[str, Any] | None, viewer: bool, system: bool) -> dict[str, Any] | None:
    if not isinstance(config, dict):
        return config
    out = dict(config)
    if viewer or system:
        out["Env"] = redact_env(config.get("Env"))
    if viewer:
        out["Labels"] = redact_labels(config.get("Labels"))
        for key in ("Cmd", "Entrypoint"):
            argv = config.get(key)
            if isinstance(argv, list) and len(argv) > 1:
                out[key] = [argv[0], *(REDACTED for _ in argv[1:])]
    return out


def redact_inspect(doc: dict[str, Any], viewer: bool) -> dict[str, Any]:
    """A container's (or image's) ``docker inspect`` document."""
    labels = (doc.get("Config") or {}).get("Labels") or {}
    system = labels.get(SYSTEM_LABEL) == "true"
    if not (viewer or system):
        return doc
    out = dict(doc)
    for key in ("Config", "ContainerConfig"):
        if key in doc:
            out[key] = _redact_config(doc[key], viewer, system)
    if viewer and "Args" in doc:
        out["Args"] = [REDACTED for _ in doc.get("Args") or []]
    return out


def redact_summary(row: dict[str, Any]) -> dict[str, Any]:
    """A ``docker ps`` row (labels, command) or any record with a ``labels`` map."""
    out = dict(row)
    if "labels" in row:
        out["labels"] = redact_labels(row.get("labels"))
    if isinstance(row.get("command"), str):
        program, _, rest = row["command"].partition(" ")
        out["command"] = f"{program} {REDACTED}" if rest else program
    return out


def redact_top(top: dict[str, Any]) -> dict[str, Any]:
    """``docker top``: each process keeps its program, its arguments are redacted."""
    titles = top.get("titles") or []
    columns = [i for i, title in enumerate(titles) if title.upper() in _COMMAND_TITLES]
    if not columns:
        return top
    processes = []
    for row in top.get("processes") or []:
        row = list(row)
        for i in columns:
            if i < len(row) and row[i]:
                program, _, rest = row[i].partition(" ")
                row[i] = f"{program} {REDACTED}" if rest else program
        processes.append(row)
    return {**top, "processes": processes}


def redact_event(event: dict[str, Any]) -> dict[str, Any]:
    """An engine event (the engine's ``Actor`` or Dockyard's ``actor``): its attributes carry
    the container's labels."""
    out = dict(event)
    for actor_key, attributes_key in (("Actor", "Attributes"), ("actor", "attributes")):
        actor = event.get(actor_key)
        if isinstance(actor, dict) and actor.get(attributes_key):
            out[actor_key] = {**actor, attributes_key: redact_labels(actor[attributes_key])}
    return out


_REDACTORS = {"inspect": redact_inspect, "summary": redact_summary, "top": redact_top,
              "event": redact_event}


def redact_for(role: str, kind: str, value: Any) -> Any:
    """``value`` (one item or a list of them) as a caller with ``role`` may see it.

    ``kind`` names the shape: ``inspect`` (container or image inspect), ``summary`` (rows
    with ``labels``), ``top`` or ``event``. Only ``inspect`` is redacted for non-viewers
    (a Dockyard system container's environment).
    """
    viewer = role == "viewer"
    if kind == "inspect":
        if isinstance(value, list):
            return [redact_inspect(v, viewer) for v in value]
        return redact_inspect(value, viewer)
    if not viewer:
        return value
    redact = _REDACTORS[kind]
    if isinstance(value, list):
        return [redact(v) for v in value]
    return redact(value)
