"""Registry: stored registries and their credentials (registries) and the Distribution v2
HTTP client that lists and deletes in them (client). May import: app.core,
app.security.
"""
