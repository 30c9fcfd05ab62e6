"""The Flask application factory."""

from __future__ import annotations

import http
import importlib
import logging
import uuid
from typing import Any

import kombu.exceptions
import redis
from apispec import BasePlugin
from flask import Flask, Response, current_app, g, json, request
from flask_smorest import Api
from werkzeug.exceptions import HTTPException

from app import __version__
from app.core.errors import (
    DockyardError,
    UnavailableError,
    UnsupportedMediaTypeError,
    problem_from_http,
)
from app.ops import metrics
from app.request_accounting import (
    PUBLIC_PATHS,
    audit_request,
    forget_folding,
    limit_rate,
    settle_rate,
)
from app.runtime import runtime

logger = logging.getLogger(__name__)

_BODY_METHODS = ("POST", "PUT", "PATCH")
# The HTTP layer, imported by path: app/ never imports api/ or schemas/ (the arrows run from
# api to app, see docs/development.md).
API_PACKAGE = "api"


class DockyardApi(Api):
    """flask-smorest's Api, answering every HTTP error as problem+json."""

    def _register_responses(self) -> None:
        # flask-smorest documents its own errors as application/json with ERROR_SCHEMA; ours
        # are sent as problem+json, so the default and per-status error responses say that.
        problem = {"application/problem+json": {"schema": "Problem"}}
        for status in http.HTTPStatus:
            response: dict[str, Any] = {"description": status.phrase}
            if status >= 400:
                response["content"] = problem
            self.spec.components.response(status.name, response, lazy=True)
        self.spec.components.response(self.DEFAULT_ERROR_RESPONSE_NAME, {
            "description": "Any error, as an RFC 9457 problem", "content": problem}, lazy=True)

    def handle_http_exception(self, error: HTTPException) -> Response:
        extra: dict[str, Any] = {}
        data = getattr(error, "data", None) or {}
        messages = data.get("messages")
        if messages:
            # webargs keys messages by location ({"json": {...}}); clients want fields.
            flat: dict[str, Any] = {}
            for value in messages.values():
                flat.update(value if isinstance(value, dict) else {"_body": value})
            extra["errors"] = flat
        status = error.code or 500
        if status == 413:
            _drain_body()
        title = error.name if status != 422 else "Invalid input"
        detail = _http_detail(error, status, extra)
        slug_title = "invalid-input" if status == 422 else title
        problem = problem_from_http(status, title, detail, **extra)
        if status == 422:
            problem["type"] = problem["type"].rsplit("/", 1)[0] + "/" + slug_title
        response = problem_response(problem)
        if status == 405 and getattr(error, "valid_methods", None):
            response.headers["Allow"] = ", ".join(error.valid_methods)
        return response


def _drain_body(cap: int = 64 << 20) -> None:
    """Read (and drop) an over-limit body so the client sees the 413, not a reset socket."""
    stream = request.environ.get("wsgi.input")
    remaining = min(request.content_length or 0, cap)
    while stream is not None and remaining > 0:
        chunk = stream.read(min(1 << 16, remaining))
        if not chunk:
            break
        remaining -= len(chunk)


def _http_detail(error: HTTPException, status: int, extra: dict) -> str:
    if status == 422 and "errors" in extra:
        return "the request has invalid fields: " + ", ".join(sorted(extra["errors"]))
    if status == 400 and "errors" in extra:
        return "the body is not valid JSON"
    if status == 500:
        return "an unexpected error occurred"
    return error.description or error.name


# About a Sentinel failover (down-after + election); a client retries with its Idempotency-Key.
REDIS_RETRY_AFTER_SECONDS = 5


def problem_response(problem: dict[str, Any]) -> Response:
    # Unsorted: validation errors may key list items by int beside fields by name.
    response = Response(json.dumps(problem, sort_keys=False), status=problem["status"],
                        mimetype="application/problem+json")
    return response


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """Build the API application.

    Args:
        config: Flask settings that override the defaults (tests pass their own).
    """
    app = Flask("dockyard")
    settings = runtime().settings
    app.config.update(
        API_TITLE="Dockyard",
        API_VERSION=__version__,
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/api",
        OPENAPI_JSON_PATH="v1/openapi.json",
        OPENAPI_SWAGGER_UI_PATH="docs",
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
        JSON_SORT_KEYS=False,
    )
    app.config.update(config or {})
    _configure_swagger_ui(app)

    # Extensions are built unbound and bound here, so importing this module starts nothing.
    api = DockyardApi()
    api.ERROR_SCHEMA = None
    api.init_app(app, spec_kwargs={"info": {"description": "REST control plane for Docker engines"}})
    api.spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer"})
    api.spec.options["security"] = [{"bearer": []}]
    http_layer = importlib.import_module(API_PACKAGE)
    _register_problem_schema(api, http_layer.problem_schema())

    # The Celery app must exist before any view enqueues; building it here also makes it
    # the default app for @shared_task.
    app.extensions["celery"] = runtime().celery
    _ensure_bootstrap_token(settings)

    # Metrics first: its timer then covers authentication and every other hook.
    metrics.init_app(app)
    app.before_request(_assign_request_id)
    app.before_request(_authenticate)
    app.before_request(_check_content_type)
    app.before_request(_take_callback_url)
    app.before_request(limit_rate)
    app.after_request(_echo_request_id)
    app.after_request(audit_request)
    app.after_request(settle_rate)  # after_request hooks run last-registered first
    app.teardown_request(forget_folding)
    app.register_error_handler(DockyardError, _dockyard_error)
    app.register_error_handler(redis.exceptions.ConnectionError, _redis_down)
    app.register_error_handler(redis.exceptions.TimeoutError, _redis_down)
    # During a Sentinel failover the old primary refuses writes and a promoted one may still
    # be loading: both are "try again shortly", never a 500.
    app.register_error_handler(redis.exceptions.ReadOnlyError, _redis_down)
    app.register_error_handler(redis.exceptions.BusyLoadingError, _redis_down)
    # The broker (kombu) gives up on a Redis that is away with its own error: same answer.
    app.register_error_handler(kombu.exceptions.OperationalError, _redis_down)
    app.register_error_handler(Exception, _unexpected_error)

    # Blueprints are imported inside the factory so nothing imports the app at load time.
    http_layer.register_blueprints(app, api)
    return app


def _configure_swagger_ui(app: Flask) -> None:
    """Serve Swagger UI from the installed swagger-ui-bundle files, never a CDN."""
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        return
    from flask import send_from_directory

    app.config["OPENAPI_SWAGGER_UI_URL"] = "/api/docs/static/"

    @app.get("/api/docs/static/<path:filename>")
    def swagger_static(filename: str) -> Response:
        return send_from_directory(swagger_ui_path, filename)


class _ServerAnswersPlugin(BasePlugin):
    """Documents, on every operation, the answer gunicorn gives before the app sees a request."""

    def operation_helper(self, path: str | None = None, operations: dict | None = None,
                         **kwargs: Any) -> None:
        for operation in (operations or {}).values():
            operation.setdefault("responses", {}).setdefault("414", "RequestLineTooLong")


def _register_problem_schema(api: Api, problem_schema: type) -> None:
    api.spec.components.schema("Problem", schema=problem_schema)
    # gunicorn refuses a request line over 4094 bytes itself, as an HTML page.
    api.spec.components.response("RequestLineTooLong", {
        "description": "Request line too long (refused by the HTTP server, not a problem object)",
        "content": {"text/html": {"schema": {"type": "string"}}}})
    api.spec.plugins.append(_ServerAnswersPlugin())
    for status, title in ((400, "Malformed request"), (401, "Missing or invalid token"),
                          (403, "Forbidden"), (404, "Not found"), (409, "Conflict"),
                          (413, "Payload too large"), (415, "Unsupported media type"),
                          (422, "Invalid input"), (502, "Engine error"),
                          (503, "Unavailable"), (504, "Timed out")):
        api.spec.components.response(str(status), {
            "description": title,
            "content": {"application/problem+json": {"schema": "Problem"}}})


def _ensure_bootstrap_token(settings) -> None:
    if settings.admin_token:
        try:
            runtime().tokens.ensure_bootstrap(settings.admin_token)
        except redis.exceptions.ConnectionError:
            logger.warning("Redis unreachable at start-up; bootstrap token not (re)written")


def _assign_request_id() -> None:
    incoming = request.headers.get("X-Request-ID", "")
    g.request_id = incoming[:64] if incoming.isprintable() and incoming else uuid.uuid4().hex


def _echo_request_id(response: Response) -> Response:
    response.headers["X-Request-ID"] = g.get("request_id", "")
    return response


def _take_callback_url() -> None:
    """Lift ``callback_url`` out of a JSON body so every operation's schema accepts it.

    API.md lets any operation carry it in the body; the job layer reads it from
    ``g.callback_url`` (or the ``Dockyard-Callback-URL`` header) and checks it there.
    """
    if request.method not in _BODY_METHODS or not request.is_json:
        return
    body = request.get_json(silent=True)
    if isinstance(body, dict) and "callback_url" in body:
        g.callback_url = body.pop("callback_url")
        # webargs re-parses the raw body, so the cached bytes are replaced as well.
        request._cached_data = json.dumps(body).encode()


def _authenticate() -> None:
    path = request.path
    if path.startswith(PUBLIC_PATHS) or request.method == "OPTIONS":
        return
    if request.url_rule is None:
        return  # unknown route: let routing answer 404/405 without revealing anything
    if getattr(current_app.view_functions.get(request.endpoint), "authenticates_itself", False):
        return  # a session's WebSocket (its ticket) and the console page (asks for a token)
    g.principal = runtime().tokens.authenticate(request.headers.get("Authorization"))


def _check_content_type() -> None:
    if request.method not in _BODY_METHODS or request.url_rule is None:
        return
    has_body = (request.content_length or 0) > 0 or "chunked" in request.headers.get(
        "Transfer-Encoding", "").lower()
    if not has_body:
        return
    mimetype = request.mimetype
    if mimetype == "application/json" or mimetype.endswith("+json"):
        return
    accepted = _accepted_mimetypes()
    if mimetype in accepted:
        return
    wanted = ", ".join(("application/json", *accepted))
    raise UnsupportedMediaTypeError(f"send the body as {wanted}, not '{mimetype or 'none'}'")


def _accepted_mimetypes() -> tuple[str, ...]:
    from flask import current_app

    view = current_app.view_functions.get(request.endpoint)
    view_class = getattr(view, "view_class", None)
    method = getattr(view_class, request.method.lower(), None) if view_class else view
    return getattr(method, "accepted_mimetypes", ())


def _dockyard_error(error: DockyardError) -> Response:
    response = problem_response(error.to_problem())
    if error.status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="dockyard"'
    if error.status == 429 or (error.status == 503 and "retry_after" in error.extra):
        response.headers["Retry-After"] = str(error.extra.get("retry_after", 1))
    return response


def _redis_down(error: Exception) -> Response:
    logger.warning("Redis unavailable: %s", type(error).__name__)
    response = problem_response(UnavailableError("the job store (Redis) is unavailable",
                                                 retry_after=REDIS_RETRY_AFTER_SECONDS).to_problem())
    response.headers["Retry-After"] = str(REDIS_RETRY_AFTER_SECONDS)
    return response


def _unexpected_error(error: Exception) -> Response:
    logger.exception("unexpected error request_id=%s", g.get("request_id"))
    return problem_response(problem_from_http(500, "Internal Server Error",
                                              "an unexpected error occurred"))
