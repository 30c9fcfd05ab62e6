"""docker-py without its SSH transport until a process talks to an ``ssh://`` host.

``import docker`` imports ``docker.transport.sshconn``, and with it paramiko, invoke, PyNaCl
and bcrypt: ~7 MiB in every worker process, which most never use (docs/benchmarks.md, idle
memory). ``defer()``, run before docker-py is first imported, puts a stand-in for that module
in ``sys.modules``: docker-py then binds ``SSHHTTPAdapter`` to a factory that loads the real
module on its first call. ``load()`` does that load and rebinds docker-py's names to the real
class, so ``docker.DockerClient(base_url="ssh://…")`` works either way.
"""

from __future__ import annotations

import importlib
import sys
import threading
import types
from typing import Any

MODULE = "docker.transport.sshconn"
# The docker-py modules that bind SSHHTTPAdapter when they are imported.
_BINDERS = ("docker.transport", "docker.api.client")
_lock = threading.RLock()


class _Deferred(types.ModuleType):
    """What docker-py finds in place of its SSH transport until ``load()`` runs.

    Any other name asked of it (``from docker.transport.sshconn import SSHConnection``)
    loads the real module and answers from it; dunder lookups (the import system's) do not.
    """

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(load(), name)


def _deferred_adapter(*args: Any, **kwargs: Any) -> Any:
    """docker-py's ``SSHHTTPAdapter(...)`` until the real one is loaded: load it, then build."""
    return load().SSHHTTPAdapter(*args, **kwargs)


def defer() -> None:
    """Make the next ``import docker`` leave the SSH transport (and paramiko) unloaded.

    Does nothing once docker-py or its transport is imported: it is too late, or done.
    """
    with _lock:
        if "docker" in sys.modules or MODULE in sys.modules:
            return
        stand_in = _Deferred(MODULE, "docker-py's SSH transport, loaded on first use "
                                     "(app.engine.ssh_transport)")
        stand_in.SSHHTTPAdapter = _deferred_adapter  # type: ignore[attr-defined]
        sys.modules[MODULE] = stand_in


def deferred() -> bool:
    """Whether the SSH transport is still a stand-in (nothing has loaded paramiko through it)."""
    return isinstance(sys.modules.get(MODULE), _Deferred)


def load() -> types.ModuleType:
    """docker-py's real ``docker.transport.sshconn``, imported on the first call."""
    with _lock:
        if deferred():
            del sys.modules[MODULE]
        module = importlib.import_module(MODULE)
        for name in _BINDERS:
            binder = sys.modules.get(name)
            if binder is not None and getattr(binder, "SSHHTTPAdapter", None) is _deferred_adapter:
                binder.SSHHTTPAdapter = module.SSHHTTPAdapter  # type: ignore[attr-defined]
        return module
