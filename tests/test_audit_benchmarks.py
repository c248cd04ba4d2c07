"""Smoke test: the audit's scale benchmark runs end to end on tiny data."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def test_audit_scale_runs_on_tiny_data(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "audit_scale.py"),
                          "--rows", "1200", "--dim", "16", "--workdir", str(tmp_path)],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "knn graph" in out.stdout and "label issues" in out.stdout
    assert "exact_duplicate 12" in out.stdout  # 1 % of 1200 planted, all found
