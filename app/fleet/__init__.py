"""Fleet: the engines Dockyard drives: host records and their TLS/SSH material (hosts),
choosing a host for a job (placement) and the on-host agent program (agent). May import:
app.core, app.security, app.jobs and app.engine (the agent starts workers).
"""
