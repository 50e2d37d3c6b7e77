"""Benchmarks: each figure is a ratio against a baseline measured in the same run (``python -m bench --help``).

Benchmarks are not tests: nothing here passes or fails on a number. Each benchmark builds what it needs
(a tiny pipeline run in a temporary copy of the repo, a tiny prepared dataset) or reads an existing
MLflow store (``--home``), prints its table as it goes and rewrites its section of ``docs/benchmarks.md``.
"""
