"""Dockyard: a REST control plane for Docker engines."""

__version__ = "0.1.0"
