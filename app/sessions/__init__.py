"""Sessions: interactive `docker exec -it` / `attach` relayed between a WebSocket and the
worker holding the engine stream (relay). May import: app.core, app.security, app.jobs.
"""
