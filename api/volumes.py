"""/hosts/{host}/volumes."""

from __future__ import annotations

from flask_smorest import Blueprint

blp = Blueprint("volumes", __name__, description="Volumes on a host")
