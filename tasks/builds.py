"""Builds jobs and reads."""

from __future__ import annotations
