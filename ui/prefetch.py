"""Import the breed head's libraries on a spare core while the build embeds.

A warm small build spends more time importing scikit-learn, skops and matplotlib (~2 s of
CPU on a 2-core EPYC, issue 21) than embedding its photos. The build's main thread is busy
with reading, embedding and near-duplicate grouping first, which leave the second core
mostly idle; importing there turns those seconds into overlap. Imports are thread-safe in
Python (per-module locks), and these libraries never import the ones the main thread loads
meanwhile (numpy, pandas, pyarrow, PIL, OpenCV, FAISS, LiteRT), so the two cannot wait on
each other. A failure here is left to the real import to report.
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
