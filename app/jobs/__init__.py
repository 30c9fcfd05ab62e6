"""Jobs: how a request becomes work: job records and their events (records), submission
and the read lane (dispatch), the Celery app (celery), byte pipes between API and worker
(pipes), spooled uploads (spool) and, where present, idempotency keys, the outbox and
handoff. May import: app.core, app.security, app.fleet (which queues serve a host) and
app.runtime (the process's shared stores).
"""
