"""CLI: the programs a person runs: `dockyard` (docker-like syntax over the HTTP API), its
local terminal for exec/attach (terminal) and `dockyard-admin` (bootstrap, talking to
Redis directly). May import: app.core, app.security, app.integrations (the grammar),
app.runtime.
"""
