"""Benchmarks: cogo against plain Celery on the same machine, in the same run (issue 4)."""
