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

`fewer_collections` is the other start-up cost of a build that is the interpreter's: see
there.
"""

from __future__ import annotations

import gc
import importlib
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

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


# The cyclic collector's thresholds while a build runs (CPython's default: 700, 10, 10).
BUILD_GC_THRESHOLDS = (10_000, 50, 100)


@contextmanager
def fewer_collections() -> Iterator[None]:
    """Run the block with the collector's thresholds at `BUILD_GC_THRESHOLDS`, then restore
    them.

    Why: a build's imports (scikit-learn, SciPy, pandas, skops' walk over every
    scikit-learn module) allocate so many long-lived objects that the default thresholds
    ran 4 full and ~50 middle collections over them, 0.6 s of a warm 40-photo build's CPU
    on the 2-core EPYC (issue 21); with these, 0.13 s. Reference counting still frees
    everything as before; only cyclic garbage waits a little longer for its collection."""
    saved = gc.get_threshold()
    gc.set_threshold(*BUILD_GC_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*saved)
