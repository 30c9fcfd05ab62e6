"""/integrations: Slack and Mattermost slash commands in docker-CLI syntax, and chat users."""

from __future__ import annotations

import logging
from typing import Any

from flask import Response, current_app, g, request
from flask.views import MethodView
from flask_smorest import Blueprint

from api.common import accepts, requires
from app import jobs as jobstates
from app.auth import Principal
from app.chat import (
    CHAT_ENVIRON,
    PLATFORMS,
    ChatUserStore,
    message,
    verify_mattermost_token,
    verify_slack_request,
)
from app.grammar import Command, GrammarError, describe_job, parse, render
from app.runtime import runtime
from app.store import get_redis
from app.webhooks import url_allowed, watch_job
from schemas.integrations import ChatReplySchema, ChatUserSchema, ChatUserSpecSchema

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
        command = parse(form.get("text", ""))
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
    for field, errors in (problem.get("errors") or {}).items():
        text += f"\n• {field}: {errors}"
    if problem.get("status") == 409 and command.name == "restore":
        text += "\nRepeat with `--yes` to replace it."
    return text


def dispatch_as(caller: Principal, command: Command,
                sender: dict[str, Any]) -> tuple[int, Any]:
    """Run ``command`` through the API as ``caller``, exactly as an HTTP call would run.

    A request context for the command's route is pushed inside this one and fully
    dispatched: every before-request hook (rate limits included) and after-request hook
    (the audit record) runs. Authentication takes ``caller`` from the request's environ,
    where only this function puts it (the chat platform authenticated the sender), and
    the audit record names ``sender``, the chat user.
    """
    app = current_app._get_current_object()
    path = "/api/v1" + command.path
    kwargs: dict[str, Any] = {"method": command.method, "query_string": command.query,
                              "headers": {"X-Request-ID": g.get("request_id", "")},
                              "environ_overrides": {CHAT_ENVIRON: {"principal": caller,
                                                                   **sender}}}
    if command.body is not None:
        kwargs["json"] = command.body
    with app.test_request_context(path, **kwargs):
        response: Response = app.make_response(app.full_dispatch_request())
        if response.is_json:
            return response.status_code, response.get_json()
        return response.status_code, response.get_data(as_text=True)

