"""Every Celery task name in one place: API, beat and webhooks send these; workers register them."""

from __future__ import annotations

# backups
BACKUPS_CREATE = "backups.create"
BACKUPS_RESTORE = "backups.restore"
BACKUPS_RUN_SCHEDULES = "backups.run_schedules"

# builds
BUILDS_BUILD = "builds.build"

# containers
CONTAINERS_ACTION = "containers.action"
CONTAINERS_CHANGES = "containers.changes"
CONTAINERS_CHECK_RUNNING = "containers.check_running"
CONTAINERS_CHECK_ACCESS = "containers.check_access"
CONTAINERS_COMMIT = "containers.commit"
CONTAINERS_EXEC = "containers.exec"
CONTAINERS_EXISTS = "containers.exists"
CONTAINERS_INSPECT = "containers.inspect"
CONTAINERS_LIST = "containers.list"
CONTAINERS_LOGS = "containers.logs"
CONTAINERS_PORTS = "containers.ports"
CONTAINERS_PROVISION = "containers.provision"
CONTAINERS_PRUNE = "containers.prune"
CONTAINERS_REMOVE = "containers.remove"
CONTAINERS_REMOVE_MATCHING = "containers.remove_matching"
CONTAINERS_RENAME = "containers.rename"
CONTAINERS_STATS = "containers.stats"
CONTAINERS_TOP = "containers.top"
CONTAINERS_UPDATE = "containers.update"
CONTAINERS_WAIT = "containers.wait"

# hosts
HOSTS_DF = "hosts.df"
HOSTS_EVENTS = "hosts.events"
HOSTS_INFO = "hosts.info"
HOSTS_SUMMARY = "hosts.summary"
HOSTS_SYNC_AGENT_ACCESS = "hosts.sync_agent_access"
HOSTS_VERSION = "hosts.version"

# images
IMAGES_HISTORY = "images.history"
IMAGES_INSPECT = "images.inspect"
IMAGES_LIST = "images.list"
IMAGES_PRUNE = "images.prune"
IMAGES_PULL = "images.pull"
IMAGES_PUSH = "images.push"
IMAGES_REMOVE = "images.remove"
IMAGES_REMOVE_MANY = "images.remove_many"
IMAGES_SEARCH = "images.search"
IMAGES_TAG = "images.tag"

# jobs
JOBS_PRUNE_INDEX = "jobs.prune_index"

# registries
REGISTRIES_CHECK = "registries.check"
REGISTRIES_DELETE_MANIFEST = "registries.delete_manifest"
REGISTRIES_REPOSITORIES = "registries.repositories"
REGISTRIES_TAGS = "registries.tags"

# sessions
SESSIONS_CHECK = "sessions.check"
SESSIONS_REAP = "sessions.reap"
SESSIONS_RUN = "sessions.run"

# transfers
TRANSFERS_ARCHIVE_IN = "transfers.archive_in"
TRANSFERS_ARCHIVE_OUT = "transfers.archive_out"
TRANSFERS_FOLLOW_EVENTS = "transfers.follow_events"
TRANSFERS_FOLLOW_LOGS = "transfers.follow_logs"
TRANSFERS_IMPORT = "transfers.import"
TRANSFERS_LOAD = "transfers.load"
TRANSFERS_SAVE = "transfers.save"

# volumes
VOLUMES_CREATE = "volumes.create"
VOLUMES_FIND = "volumes.find"
VOLUMES_INSPECT = "volumes.inspect"
VOLUMES_LIST = "volumes.list"
VOLUMES_PRUNE = "volumes.prune"
VOLUMES_REMOVE = "volumes.remove"

# webhooks
WEBHOOKS_DELIVER = "webhooks.deliver"


ALL: frozenset[str] = frozenset(
    value for key, value in list(globals().items()) if key.isupper() and isinstance(value, str))
"""Every task name above; tests check it equals the set the workers register."""
