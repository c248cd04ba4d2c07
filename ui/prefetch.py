"""Import the breed head's libraries on a spare core while the build embeds.

A warm small build spends more time importing scikit-learn and skops (~1.5 s of CPU on a
2-core EPYC, issue 21) than embedding its photos. The build's main thread is busy with
reading, embedding, near-duplicate grouping and the learned space first, which leave the
second core partly idle; importing there turns those seconds into overlap. (matplotlib,
for the report's PNG only, is imported by the thread that draws it, beside the gate's fit.)
Imports are thread-safe in Python (per-module locks). scikit-learn imports pandas, which the
main thread may be importing at the same moment: one then waits for the other's module
lock; no lock is taken crosswise, because these libraries never import the project's own
modules or what the main thread imports inside them. A failure here is left to the real
import to report.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Iterable

# what fit_default_head imports before its head is saved (classify.logreg, skops); the
# report's matplotlib is imported by the thread that draws it, beside the gate's fit
HEAD_MODULES = (
    "sklearn.linear_model", "sklearn.pipeline", "sklearn.preprocessing", "sklearn.metrics",
    "skops.io",
)


def prefetch(modules: Iterable[str] = HEAD_MODULES) -> threading.Thread:
    """Start importing `modules` in a daemon thread; join it before relying on them."""
    names = tuple(modules)

    def run() -> None:
        for name in names:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - the real import says what is wrong
                return

    thread = threading.Thread(target=run, name="prefetch-imports", daemon=True)
    thread.start()
    return thread

