"""One command of the store's stress test, run as its own process: the tiny test backbone is
registered, then `embed-dogs` runs exactly as a user's shell would run it (exit code, stderr).

Usage: python -m tests.stress_worker build-index --source ... (any embed-dogs arguments)
"""

from __future__ import annotations

import sys

import tests.conftest  # noqa: F401  (registers the tiny backbone)
from ui.cli import app

if __name__ == "__main__":
    app(sys.argv[1:], prog_name="embed-dogs")
