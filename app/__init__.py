"""Dockyard: a REST control plane for Docker engines."""

from app.engine import ssh_transport as _ssh_transport

__version__ = "0.1.0"

# Before anything imports docker-py: its SSH transport (paramiko) loads only when a process
# talks to an ssh:// host (app/engine/ssh_transport.py).
_ssh_transport.defer()
