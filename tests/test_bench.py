"""Smoke test of the benchmark command line (benchmarks are not tests: nothing here measures anything)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


def test_bench_help_lists_every_benchmark():
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    for name in ("serving", "overhead", "isolation", "tracking", "pruning", "workers", "pipeline", "main"):
        assert name in proc.stdout


def test_results_writer_keeps_other_blocks(tmp_path):
    from bench.report import Section, write

    doc = tmp_path / "benchmarks.md"
    for key, value in (("tracking", 1.5), ("serving", 2.0), ("tracking", 1.25)):
        section = Section(key, f"title {key}")
        section.table("t", ["a", "ratio"]).add("x", value)
        write(section, doc)
    text = doc.read_text()
    assert text.index("bench:serving") < text.index("bench:tracking")
    assert "| x | 1.25 |" in text and "| x | 1.50 |" not in text and "| x | 2.00 |" in text
