"""/hosts/{host}/images."""

from __future__ import annotations

from flask_smorest import Blueprint

blp = Blueprint("images", __name__, description="Images on a host")
