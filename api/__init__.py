"""HTTP API: one flask-smorest blueprint per resource."""

from __future__ import annotations

from flask import Flask


def problem_schema() -> type:
    """The schema every error answer follows (the factory documents it before the blueprints)."""
    from schemas.common import ProblemSchema

    return ProblemSchema


def register_blueprints(app: Flask, api) -> None:
    """Import and register every blueprint (inside the factory, never at import time)."""
    from api import (
        audit,
        backups,
        builds,
        containers,
        events,
        fleet,
        health,
        hosts,
        images,
        integrations,
        jobs,
        registries,
        sessions,
        tokens,
        transfers,
        volumes,
        webhooks,
    )
    from api.operations import OperationIdPlugin, job_result2properties

    api.spec.plugins.append(OperationIdPlugin())
    api.ma_plugin.converter.add_attribute_function(job_result2properties)
    for module in (jobs, hosts, fleet, containers, sessions, images, volumes, transfers, builds,
                   registries, backups, tokens, audit, webhooks, events, integrations):
        api.register_blueprint(module.blp, url_prefix="/api/v1")
    app.register_blueprint(health.blp)
    app.register_blueprint(sessions.pages)
