"""/backups."""

from __future__ import annotations

from flask_smorest import Blueprint

blp = Blueprint("backups", __name__, description="Backups")
