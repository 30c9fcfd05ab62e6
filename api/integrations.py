"""/integrations: Slack and Mattermost slash commands in docker-CLI syntax, and chat users."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import redis
from flask import current_app, g, request
from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import EXCLUDE, Schema, ValidationError
from werkzeug.exceptions import HTTPException

from api.common import accepts, requires
from api.services import Call, backups, builds, containers, images, jobs
from api.services.builds import load_spec
from app.core.errors import DockyardError, InvalidInputError, UnavailableError, problem_from_http
from app.core.store import get_redis, utcnow
from app.factory import REDIS_RETRY_AFTER_SECONDS
from app.integrations.chat import (
    PLATFORMS,
    ChatUserStore,
    message,
    verify_mattermost_token,
    verify_slack_request,
)
from app.integrations.grammar import Command, GrammarError, describe_job, parse, render
from app.integrations.webhook_targets import url_allowed
from app.integrations.webhooks import watch_job
from app.jobs import records as jobstates
from app.runtime import runtime
from app.security import audit
from app.security.auth import Principal
from schemas.backups import BackupJobSchema, BackupSpecSchema, RestoreJobSchema, RestoreSpecSchema
from schemas.builds import BuildJobSchema
from schemas.common import JobSchema
from schemas.containers import (
    ContainerListArgsSchema,
    ContainerRemovedJobSchema,
    ContainerStateJobSchema,
    ContainerSummarySchema,
    LogsArgsSchema,
    NoArgsSchema,
    ProvisionJobSchema,
    ProvisionSpecSchema,
    RemoveArgsSchema,
    StopArgsSchema,
)
from schemas.images import ImageListArgsSchema, ImageSummarySchema, PullJobSchema, PullSpecSchema
from schemas.integrations import ChatReplySchema, ChatUserSchema, ChatUserSpecSchema
from schemas.jobs import JobListArgsSchema, JobPageSchema, JobWaitArgsSchema

logger = logging.getLogger(__name__)

blp = Blueprint("integrations", __name__, description="Chat integrations (Slack, Mattermost)")

FORM = "application/x-www-form-urlencoded"
_PLATFORM = "<any(slack,mattermost):platform>"


def _users() -> ChatUserStore:
    return ChatUserStore(get_redis())


@blp.route("/integrations/slack/commands")
class SlackCommands(MethodView):
    @accepts(FORM)
    @blp.doc(security=[])
    @blp.response(200, ChatReplySchema)
    def post(self) -> dict:
        """Slack slash command (docker-CLI syntax), verified by Slack's v0 signature.

        `X-Slack-Signature` must be `v0=` + hex HMAC-SHA256 (DOCKYARD_SLACK_SIGNING_SECRET) of
        `v0:{X-Slack-Request-Timestamp}:{raw body}`, the timestamp within five minutes;
        otherwise 401 and nothing runs. Answers at once with an ephemeral message; a job's
        outcome is posted to `response_url` when it ends.
        """
        verify_slack_request(runtime().settings.slack_signing_secret,
                             request.headers.get("X-Slack-Request-Timestamp"),
                             request.headers.get("X-Slack-Signature"),
                             request.get_data(cache=True))
        return run_chat_command("slack", request.form.to_dict())


@blp.route("/integrations/mattermost/commands")
class MattermostCommands(MethodView):
    @accepts(FORM)
    @blp.doc(security=[])
    @blp.response(200, ChatReplySchema)
    def post(self) -> dict:
        """Mattermost slash command (docker-CLI syntax), verified by the command's token.

        The `token` form field must equal DOCKYARD_MATTERMOST_TOKEN (constant-time compare);
        otherwise 401 and nothing runs. Same answers as the Slack route.
        """
        form = request.form.to_dict()
        verify_mattermost_token(runtime().settings.mattermost_token, form.get("token"))
        return run_chat_command("mattermost", form)


@blp.route(f"/integrations/{_PLATFORM}/users")
class ChatUsers(MethodView):
    @requires("admin")
    @blp.response(200, ChatUserSchema(many=True))
    def get(self, platform: str) -> list[dict]:
        """Chat users mapped to Dockyard roles; anyone else is refused."""
        caller = g.principal
        return [u for u in _users().list(platform) if caller.hosts is None
                or (u.get("hosts") is not None and set(u["hosts"]) <= caller.hosts)]

    @requires("admin")
    @blp.arguments(ChatUserSpecSchema)
    @blp.response(201, ChatUserSchema)
    def post(self, spec: dict, platform: str) -> dict:
        """Map a chat user id to a token (its role and scope) or to a role and host scope.

        Replaces an earlier mapping of the same user. Unmapped users are refused. A host-scoped
        admin maps users only within its own scope and role (403 `grant-within-scope`), and
        cannot replace a mapping wider than that.
        """
        caller = g.principal
        if spec["token_id"] is not None:
            token = runtime().tokens.get(spec["token_id"])
            caller.require_grant_within_scope(token["role"], token.get("hosts"),
                                              f"{platform} user '{spec['user_id']}'")
        else:
            caller.require_grant_within_scope(spec["role"], spec["hosts"],
                                              f"{platform} user '{spec['user_id']}'")
        _require_mapping_within(caller, platform, spec["user_id"])
        return _users().put(platform, spec["user_id"], role=spec["role"], hosts=spec["hosts"],
                            token_id=spec["token_id"], name=spec["name"],
                            created_by=g.principal.name)


@blp.route(f"/integrations/{_PLATFORM}/users/<string:user_id>")
class ChatUser(MethodView):
    @requires("admin")
    @blp.response(204)
    def delete(self, platform: str, user_id: str) -> None:
        """Unmap a chat user: their commands are refused from now on."""
        _require_mapping_within(g.principal, platform, user_id)
        _users().delete(platform, user_id)


def _require_mapping_within(caller: Principal, platform: str, user_id: str) -> None:
    """A host-scoped admin changes only mappings that act within its own scope."""
    current = _users().principal_for(platform, user_id)
    if current is not None:
        caller.require_grant_within_scope(
            current.role, None if current.hosts is None else sorted(current.hosts),
            f"{platform} user '{user_id}' (mapped wider than this token)")


def run_chat_command(platform: str, form: dict[str, str]) -> dict[str, Any]:
    """Parse, authorize and run one slash command; the reply the platform shows the user."""
    assert platform in PLATFORMS
    caller = _users().principal_for(platform, form.get("user_id", ""))
    if caller is None:
        return message(f"You are not a Dockyard user ({platform} id "
                       f"{form.get('user_id') or '?'}). Ask an admin to map you.")
    try:
        command = parse(form.get("text", ""), check_spec=ProvisionSpecSchema().load)
    except GrammarError as exc:
        return message(str(exc), code=True)
    if not command.method:
        return message(command.text, code=True)
    if command.destructive and not command.confirmed:
        return message(f"`{command.name}` is destructive: repeat it with `--yes` to confirm.")
    logger.info("chat command platform=%s user=%s command=%s", platform, caller.name,
                command.name)
    status, payload = dispatch_as(caller, command, {"platform": platform,
                                                    "user_id": form.get("user_id"),
                                                    "user_name": form.get("user_name")})
    if status == 429:
        retry = payload.get("retry_after", 1) if isinstance(payload, dict) else 1
        return message(f"Slow down: you sent more commands than your Dockyard limit allows "
                       f"(the limit of {caller.name}). `{command.name}` did not run; try again "
                       f"in {retry} s.")
    if status >= 400:
        return message(_problem_text(payload, command))
    if _is_job(payload) and command.name not in ("job", "cancel"):
        return message(_job_ack(payload, form.get("response_url")))
    return message(render(command, payload), code=True)


def _is_job(payload: Any) -> bool:
    return isinstance(payload, dict) and "kind" in payload and "state" in payload and \
        "links" in payload


def _job_ack(job: dict[str, Any], response_url: str | None) -> str:
    if job["state"] in jobstates.FINAL_STATES or not response_url:
        return describe_job(job)
    if not url_allowed(response_url, runtime().settings.webhook_allowed_hosts):
        return (f"{describe_job(job)} (its outcome will not be posted: the reply URL's host "
                "is not on DOCKYARD_WEBHOOK_ALLOWED_HOSTS; ask `job {job['id']}`)")
    watch_job(job["id"], {"format": "chat", "url": response_url})
    return f"{describe_job(job)} — I will post the outcome here."


def _problem_text(problem: Any, command: Command) -> str:
    if not isinstance(problem, dict):
        return f"Error: {problem}"
    text = f"Error: {problem.get('detail') or problem.get('title')}"
    for name, errors in (problem.get("errors") or {}).items():
        text += f"\n• {name}: {errors}"
    if problem.get("status") == 409 and command.name == "restore":
        text += "\nRepeat with `--yes` to replace it."
    return text


@dataclass(frozen=True)
class _Operation:
    """What a chat command calls: the service function and the operation's own schemas.

    ``schema`` loads the arguments exactly as the view's ``@blp.arguments`` does (from the
    query string or the JSON body); ``argument`` is the service's keyword for them;
    ``response`` dumps the answer as the view's ``@blp.response`` does.
    """

    service: Callable[..., Any]
    schema: type[Schema] | None
    location: str
    argument: str
    response: Schema | None
    fixed: dict[str, Any] = field(default_factory=dict)


def _lifecycle(verb: str, schema: type[Schema]) -> _Operation:
    return _Operation(containers.lifecycle, schema, "json", "args", ContainerStateJobSchema(),
                      {"verb": verb})


OPERATIONS: dict[str, _Operation] = {
    "ps": _Operation(containers.list_containers, ContainerListArgsSchema, "query", "args",
                     ContainerSummarySchema(many=True)),
    "run": _Operation(containers.provision, ProvisionSpecSchema, "json", "spec",
                      ProvisionJobSchema()),
    "logs": _Operation(containers.logs, LogsArgsSchema, "query", "args", None),
    "start": _lifecycle("start", NoArgsSchema),
    "stop": _lifecycle("stop", StopArgsSchema),
    "restart": _lifecycle("restart", StopArgsSchema),
    "rm": _Operation(containers.remove, RemoveArgsSchema, "query", "args",
                     ContainerRemovedJobSchema()),
    "images": _Operation(images.list_images, ImageListArgsSchema, "query", "args",
                         ImageSummarySchema(many=True)),
    "pull": _Operation(images.pull, PullSpecSchema, "json", "spec", PullJobSchema()),
    "build": _Operation(builds.submit_build, None, "json", "spec", BuildJobSchema(),
                        {"spool": None}),
    "backup": _Operation(backups.create, BackupSpecSchema, "json", "spec", BackupJobSchema()),
    "restore": _Operation(backups.restore, RestoreSpecSchema, "json", "body",
                          RestoreJobSchema()),
    "jobs": _Operation(jobs.list_jobs, JobListArgsSchema, "query", "args", JobPageSchema()),
    "job": _Operation(jobs.get_job, JobWaitArgsSchema, "query", "args", JobSchema()),
    "cancel": _Operation(jobs.cancel_job, None, "json", "", JobSchema()),
}

_REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
               redis.exceptions.ReadOnlyError, redis.exceptions.BusyLoadingError)


def dispatch_as(caller: Principal, command: Command,
                sender: dict[str, Any]) -> tuple[int, Any]:
    """Run ``command`` as ``caller`` through the service function its HTTP route calls.

    The same steps as the HTTP call, without re-entering Flask: the rate-limit charge on
    ``caller``'s token, the role and scope check, the operation's marshmallow schema, the
    service (policy, ``start_job`` or the query), the response schema, and the audit record
    (``app.security.audit.entry``) naming ``sender``, the chat user. Answers (status, JSON payload).
    """
    operation = OPERATIONS[command.name]
    path = unquote("/api/v1" + command.path)
    try:
        rule, view_args = current_app.url_map.bind("localhost").match(
            path, method=command.method, return_rule=True)
    except HTTPException as exc:  # a segment with "/" in it: no route, nothing to audit
        status = exc.code or 404
        return status, problem_from_http(status, exc.name, exc.description or exc.name)
    query = {key: [str(value)] for key, value in command.query.items()}
    body = json.loads(json.dumps(command.body)) if command.body is not None else None
    try:
        status, payload = _run(operation, caller, command, path, view_args, body)
    except DockyardError as exc:
        status, payload = exc.status, exc.to_problem()
    except _REDIS_DOWN as exc:
        logger.warning("Redis unavailable: %s", type(exc).__name__)
        problem = UnavailableError("the job store (Redis) is unavailable",
                                   retry_after=REDIS_RETRY_AFTER_SECONDS)
        status, payload = problem.status, problem.to_problem()
    except Exception:
        logger.exception("unexpected error in chat command request_id=%s", g.get("request_id"))
        status, payload = 500, problem_from_http(500, "Internal Server Error",
                                                 "an unexpected error occurred")
    if audit.audited(command.method, status):
        try:
            runtime().audit.record(audit.entry(
                ts=utcnow(), request_id=g.get("request_id"), principal=caller,
                method=command.method, route=rule.rule, path=path, view_args=view_args,
                query=query, body=body, status=status, answer=payload,
                chat={key: sender.get(key) for key in ("platform", "user_id", "user_name")}))
        except Exception:  # as over HTTP: the audit store being down answers all the same
            logger.warning("audit record failed request_id=%s", g.get("request_id"),
                           exc_info=True)
    return status, payload


def _run(operation: _Operation, caller: Principal, command: Command, path: str,
         view_args: dict[str, Any], body: Any) -> tuple[int, Any]:
    runtime().rate_limiter.charge(caller, command.method, runtime().settings)
    # Role and scope before the arguments are read, as ``requires`` does before webargs.
    caller.require_role(operation.service.role)
    if "host" in view_args:
        caller.require_host(view_args["host"])
    kwargs: dict[str, Any] = {**view_args, **operation.fixed}
    if command.name == "build":
        kwargs["spec"] = load_spec(body, uploaded=False)
    elif operation.schema is not None:
        raw = command.query if operation.location == "query" else (body or {})
        try:
            kwargs[operation.argument] = operation.schema().load(
                {key: str(value) for key, value in raw.items()}
                if operation.location == "query" else raw,
                **({"unknown": EXCLUDE} if operation.location == "query" else {}))
        except ValidationError as exc:
            errors = exc.normalized_messages()
            raise InvalidInputError("the request has invalid fields: " + ", ".join(
                sorted(errors)), errors=errors) from None
    call = Call(principal=caller, method=command.method, path=path, body=body)
    answer = operation.service(call, **kwargs)
    status = 200
    if isinstance(answer, tuple):
        answer, status = answer[0], answer[1]
    if operation.response is not None:
        answer = operation.response.dump(answer)
    return status, json.loads(json.dumps(answer, default=str))
