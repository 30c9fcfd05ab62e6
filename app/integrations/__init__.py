"""Integrations: talking to people and other systems: Slack/Mattermost verification and
chat users (chat), the docker-like command grammar chat and the CLI share (grammar) and
outbound webhooks and job callbacks (webhooks). May import: app.core, app.security,
app.jobs, app.runtime.
"""
