"""Security: who may do what, and the trail of it: bearer tokens and principals (auth), the
container/image policy (policy, dockerfiles), the audit log, rate limits, redaction of
what viewers see, encryption at rest (crypto), task-message signing (signing) and, where
present, the agents' narrowed credentials (agent_access). May import: app.core.
"""
