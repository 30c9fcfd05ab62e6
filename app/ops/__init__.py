"""Ops: running Dockyard itself: Prometheus metrics (metrics) and the beat leader lease that
lets any number of beats run (beat). May import: app.core, app.jobs.
"""
