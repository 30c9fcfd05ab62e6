"""Dockyard benchmarks (issue 3). Run them with `make bench`; see docs/benchmarks.md."""
