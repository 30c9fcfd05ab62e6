"""Core: the foundations every other part stands on: typed settings read once from the
environment (config), the error types every layer raises (errors), ids, the Redis
connection and key prefix (store), logging, the Celery task names shared by the API and
the workers (task_names) and the dependency-free names and patterns the schemas check
against (names). May import: the standard library and third-party libraries only, never
another part of app/ (tests/unit/test_import_direction.py checks this).
"""
