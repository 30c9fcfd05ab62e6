"""Backups: bundles of a container's filesystem, configuration and volumes in shared storage.

This package owns the bundle format and its parts (``parts``), the storage of bundles with
their staging, publishing, catalog and safe part paths (``storage``), the download as one
deterministic tar with its checksum and ``Range`` parsing (``download``), the provision spec
a bundle restores to (``restore``), and backup schedules with their cron parser and
retention (``schedules``). It may import ``app.core.errors``, ``app.core.ids`` and ``app.core.store`` (and
the standard library, redis and zstandard); it never imports the engine layer, ``api``,
``tasks`` or ``schemas``: the engine-side work (export, archive, import) lives in
``app/engine/backups.py`` and the Celery tasks in ``tasks/backups.py``. Import from the
modules themselves; this package re-exports nothing.
"""
