"""Stable operation ids: what a client generated from the OpenAPI document names its calls.

One table, keyed by method and path (below ``/api/v1``); a test checks that every
operation the API serves has exactly one id here and that no id is left over.
"""

from __future__ import annotations

from typing import Any

from apispec import BasePlugin

from schemas.common import JobResult

PREFIX = "/api/v1"

OPERATION_IDS: dict[tuple[str, str], str] = {
    # jobs
    ("GET", "/jobs"): "listJobs",
    ("GET", "/jobs/{job_id}"): "getJob",
    ("POST", "/jobs/{job_id}/cancel"): "cancelJob",
    ("GET", "/jobs/{job_id}/events"): "streamJobEvents",
    ("GET", "/jobs/{job_id}/deliveries"): "listJobDeliveries",
    # hosts
    ("GET", "/hosts"): "listHosts",
    ("POST", "/hosts"): "registerHost",
    ("GET", "/hosts/{host}"): "getHost",
    ("PATCH", "/hosts/{host}"): "updateHost",
    ("DELETE", "/hosts/{host}"): "deleteHost",
    ("POST", "/hosts/{host}/agent-credentials"): "rekeyHostAgent",
    ("GET", "/hosts/{host}/info"): "getHostInfo",
    ("GET", "/hosts/{host}/version"): "getHostVersion",
    ("GET", "/hosts/{host}/df"): "getHostDiskUsage",
    ("GET", "/hosts/{host}/events"): "listHostEvents",
    ("GET", "/hosts/{host}/events/stream"): "streamHostEvents",
    # containers
    ("POST", "/hosts/auto/containers"): "placeContainer",
    ("GET", "/hosts/{host}/containers"): "listContainers",
    ("POST", "/hosts/{host}/containers"): "provisionContainer",
    ("DELETE", "/hosts/{host}/containers"): "removeContainers",
    ("POST", "/hosts/{host}/containers/prune"): "pruneContainers",
    ("GET", "/hosts/{host}/containers/{ref}"): "inspectContainer",
    ("DELETE", "/hosts/{host}/containers/{ref}"): "removeContainer",
    ("POST", "/hosts/{host}/containers/{ref}/start"): "startContainer",
    ("POST", "/hosts/{host}/containers/{ref}/stop"): "stopContainer",
    ("POST", "/hosts/{host}/containers/{ref}/restart"): "restartContainer",
    ("POST", "/hosts/{host}/containers/{ref}/kill"): "killContainer",
    ("POST", "/hosts/{host}/containers/{ref}/pause"): "pauseContainer",
    ("POST", "/hosts/{host}/containers/{ref}/unpause"): "unpauseContainer",
    ("GET", "/hosts/{host}/containers/{ref}/logs"): "getContainerLogs",
    ("POST", "/hosts/{host}/containers/{ref}/exec"): "execInContainer",
    ("GET", "/hosts/{host}/containers/{ref}/top"): "listContainerProcesses",
    ("GET", "/hosts/{host}/containers/{ref}/stats"): "getContainerStats",
    ("GET", "/hosts/{host}/containers/{ref}/changes"): "listContainerChanges",
    ("GET", "/hosts/{host}/containers/{ref}/port"): "listContainerPorts",
    ("POST", "/hosts/{host}/containers/{ref}/wait"): "waitForContainer",
    ("POST", "/hosts/{host}/containers/{ref}/rename"): "renameContainer",
    ("POST", "/hosts/{host}/containers/{ref}/update"): "updateContainer",
    ("POST", "/hosts/{host}/containers/{ref}/commit"): "commitContainer",
    ("GET", "/hosts/{host}/containers/{ref}/archive"): "copyFromContainer",
    ("PUT", "/hosts/{host}/containers/{ref}/archive"): "copyToContainer",
    ("POST", "/hosts/{host}/containers/{ref}/backups"): "backUpContainer",
    ("POST", "/hosts/{host}/containers/{ref}/sessions"): "openContainerSession",
    # images
    ("GET", "/hosts/{host}/images"): "listImages",
    ("DELETE", "/hosts/{host}/images"): "removeImages",
    ("POST", "/hosts/{host}/images/pull"): "pullImage",
    ("POST", "/hosts/{host}/images/prune"): "pruneImages",
    ("GET", "/hosts/{host}/images/search"): "searchImages",
    ("GET", "/hosts/{host}/images/{ref}"): "inspectImage",
    ("DELETE", "/hosts/{host}/images/{ref}"): "removeImage",
    ("GET", "/hosts/{host}/images/{ref}/history"): "getImageHistory",
    ("POST", "/hosts/{host}/images/{ref}/tag"): "tagImage",
    ("POST", "/hosts/{host}/images/{ref}/push"): "pushImage",
    ("GET", "/hosts/{host}/images/save"): "saveImages",
    ("POST", "/hosts/{host}/images/load"): "loadImages",
    ("POST", "/hosts/{host}/images/import"): "importImage",
    # volumes
    ("GET", "/hosts/{host}/volumes"): "listVolumes",
    ("POST", "/hosts/{host}/volumes"): "createVolume",
    ("POST", "/hosts/{host}/volumes/prune"): "pruneVolumes",
    ("GET", "/hosts/{host}/volumes/{name}"): "inspectVolume",
    ("DELETE", "/hosts/{host}/volumes/{name}"): "removeVolume",
    # builds and registries
    ("POST", "/builds"): "buildImage",
    ("GET", "/registries"): "listRegistries",
    ("POST", "/registries"): "createRegistry",
    ("GET", "/registries/{name}"): "getRegistry",
    ("PATCH", "/registries/{name}"): "updateRegistry",
    ("DELETE", "/registries/{name}"): "deleteRegistry",
    ("POST", "/registries/{name}/check"): "checkRegistry",
    ("GET", "/registries/{name}/repositories"): "listRepositories",
    ("GET", "/registries/{name}/repositories/{repository}/tags"): "listRepositoryTags",
    ("DELETE", "/registries/{name}/repositories/{repository}/manifests/{reference}"):
        "deleteManifest",
    # backups
    ("GET", "/backups"): "listBackups",
    ("GET", "/backups/{backup_id}"): "getBackup",
    ("DELETE", "/backups/{backup_id}"): "deleteBackup",
    ("GET", "/backups/{backup_id}/content"): "downloadBackup",
    ("POST", "/backups/{backup_id}/restore"): "restoreBackup",
    ("GET", "/backup-schedules"): "listBackupSchedules",
    ("POST", "/backup-schedules"): "createBackupSchedule",
    ("GET", "/backup-schedules/{schedule_id}"): "getBackupSchedule",
    ("DELETE", "/backup-schedules/{schedule_id}"): "deleteBackupSchedule",
    # access
    ("GET", "/tokens"): "listTokens",
    ("POST", "/tokens"): "createToken",
    ("DELETE", "/tokens/{token_id}"): "revokeToken",
    ("GET", "/audit"): "listAuditEntries",
    ("POST", "/policy/check"): "checkPolicy",
    # webhooks, events and chat
    ("GET", "/webhooks"): "listWebhooks",
    ("POST", "/webhooks"): "createWebhook",
    ("GET", "/webhooks/example-payload"): "getWebhookExamplePayload",
    ("GET", "/webhooks/{sub_id}"): "getWebhook",
    ("DELETE", "/webhooks/{sub_id}"): "deleteWebhook",
    ("GET", "/webhooks/{sub_id}/deliveries"): "listWebhookDeliveries",
    ("GET", "/events"): "streamEvents",
    ("POST", "/integrations/slack/commands"): "runSlackCommand",
    ("POST", "/integrations/mattermost/commands"): "runMattermostCommand",
    ("GET", "/integrations/{platform}/users"): "listChatUsers",
    ("POST", "/integrations/{platform}/users"): "mapChatUser",
    ("DELETE", "/integrations/{platform}/users/{user_id}"): "unmapChatUser",
}


class OperationIdPlugin(BasePlugin):
    """Gives each operation its id from ``OPERATION_IDS`` as the path is registered."""

    def operation_helper(self, path: str | None = None, operations: dict | None = None,
                         **kwargs: Any) -> None:
        relative = (path or "").removeprefix(PREFIX)
        for method, operation in (operations or {}).items():
            found = OPERATION_IDS.get((method.upper(), relative))
            if found:
                operation["operationId"] = found


def job_result2properties(converter: Any, field: Any, ret: dict, **_: Any) -> dict:
    """A job's ``result`` is its schema or null.

    apispec documents a nullable nested schema as ``anyOf: [schema, {type: object}]``, which
    any object satisfies; a result must be the one schema (or null) for a check to mean anything.
    """
    if not isinstance(field, JobResult):
        return {}
    ret.pop("anyOf", None)
    return {"allOf": [converter.resolve_nested_schema(field.schema)], "nullable": True}
