"""/registries: private registries with credentials brokered per engine call."""

from __future__ import annotations

from flask.views import MethodView
from flask_smorest import Blueprint

from api.common import requires
from app import registries as registryviews
from app.runtime import runtime
from schemas.registries import RegistryCreateSchema, RegistrySchema

blp = Blueprint("registries", __name__, description="Private registries")


@blp.route("/registries")
class Registries(MethodView):
    @requires("viewer")
    @blp.response(200, RegistrySchema(many=True))
    def get(self) -> list[dict]:
        """List registries (never their passwords)."""
        return [registryviews.public_view(r) for r in runtime().registries.list()]

    @requires("admin")
    @blp.arguments(RegistryCreateSchema)
    @blp.response(201, RegistrySchema)
    def post(self, body: dict) -> dict:
        """Store a registry and its credentials (the password is encrypted at rest)."""
        record = runtime().registries.create(body["name"], body["url"], body["username"],
                                             body["password"], body["insecure"])
        return registryviews.public_view(record)


@blp.route("/registries/<string:name>")
class Registry(MethodView):
    @requires("viewer")
    @blp.response(200, RegistrySchema)
    def get(self, name: str) -> dict:
        """One registry (never its password)."""
        return registryviews.public_view(runtime().registries.get(name))

    @requires("admin")
    @blp.response(204)
    def delete(self, name: str) -> None:
        """Forget a registry and its credentials."""
        runtime().registries.delete(name)
