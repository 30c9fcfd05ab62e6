"""/builds."""

from __future__ import annotations

from flask_smorest import Blueprint

blp = Blueprint("builds", __name__, description="Builds")
