"""The package layers of DESIGN.md, checked on every run: import contracts and a light CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO


def test_import_contracts_are_kept() -> None:
    """`lint-imports` reads the contracts in pyproject.toml: layers and no module cycles."""
    exe = Path(sys.executable).with_name("lint-imports")
    command = [str(exe)] if exe.exists() else [shutil.which("lint-imports") or "lint-imports"]
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "0 broken" in run.stdout


@pytest.mark.parametrize("heavy", ["tensorflow", "keras", "faiss", "sklearn", "streamlit"])
def test_cli_help_imports_no_heavy_library(heavy: str) -> None:
    """`embed-dogs --help` stays instant: the heavy libraries load inside the steps that use
    them, never when the command line is parsed."""
    code = ("import sys, json; from ui.cli import app; "
            "print(json.dumps(sorted(m.split('.')[0] for m in sys.modules)))")
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert heavy not in set(json.loads(run.stdout))
