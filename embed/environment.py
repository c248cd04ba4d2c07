"""What this process may use: CPU cores, thread counts from the environment, cache folders,
and the settings a build runs under (BLAS threads for small fits, the collector's thresholds).

One place for the knobs that the reader, the runtimes and the app's thumbnails share, so they
agree on what "every core" and "the cache" mean.
"""

from __future__ import annotations

import functools
import gc
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CACHE_ENV = "EMBED_DOGS_CACHE"
VERBOSE_ENV = "EMBED_DOGS_VERBOSE"


def cpu_cores() -> int:
    """CPU cores this process may use (respects affinity/cgroup pinning, unlike cpu_count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def threads_from_env(variable: str) -> int:
    """A thread count: the integer in `variable` when set (at least 1), else every usable core."""
    value = os.environ.get(variable)
    return max(1, int(value)) if value else cpu_cores()


def cache_dir(kind: str) -> Path:
    """`$EMBED_DOGS_CACHE/<kind>`, else `~/.cache/embed-dogs/<kind>`: caches live outside
    bundles, so serving never writes into one. Where that folder cannot be written (a
    container's read-only or missing home), a private folder under the system's temporary
    folder serves instead, with one warning: caches only save time, so they never stop a
    command."""
    root = os.environ.get(CACHE_ENV)
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "embed-dogs"
    return _writable_cache(str(base)) / kind


@functools.lru_cache(maxsize=8)
def _writable_cache(preferred: str) -> Path:
    base = Path(preferred)
    try:
        base.mkdir(parents=True, exist_ok=True)
        if os.access(base, os.W_OK | os.X_OK):
            return base
    except OSError:
        pass
    fallback = Path(tempfile.gettempdir()) / f"embed-dogs-cache-{os.getuid()}"
    try:
        fallback.mkdir(mode=0o700, exist_ok=True)
        if fallback.is_symlink() or fallback.stat().st_uid != os.getuid():
            raise PermissionError(f"{fallback} belongs to someone else")
    except OSError:
        fallback = Path(tempfile.mkdtemp(prefix="embed-dogs-cache-"))
    logging.getLogger(__name__).warning(
        "cache folder %s cannot be written; caching in %s instead. Set %s to a writable"
        " folder to keep the caches between runs", base, fallback, CACHE_ENV)
    return fallback


@contextmanager
def quiet_native_output() -> Iterator[None]:
    """Silence what native libraries write straight to file descriptor 2 (TensorFlow's absl
    and oneDNN lines, XNNPACK's INFO line) for the block, unless $EMBED_DOGS_VERBOSE is set.
    Python's own `sys.stderr` writes in the block are silenced too, so keep blocks short."""
    if os.environ.get(VERBOSE_ENV):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """BLAS on one thread for the block (threadpoolctl, a scikit-learn dependency).

    For small fits (a build's heads, LDA): on the 2-core EPYC a waiting OpenBLAS thread
    spins while its partner is descheduled, so two threads cost more CPU and wall time than
    one (issue 21: a 30-row logistic regression 0.70 s against 0.04 s wall at load 6)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="blas"):
        yield


# Below this many rows a bundle's fits (near-duplicate kNN, gate, space, figures) run on one
# BLAS thread: their matrices are small, and a second OpenBLAS thread spins between calls.
SMALL_FIT_ROWS = 2_000


@contextmanager
def blas_threads_for(rows: int) -> Iterator[None]:
    """One BLAS thread for the block when `rows` < `SMALL_FIT_ROWS`, else as configured.

    Measured on the 2-core EPYC (issue 21), a warm 40-photo build: CPU 3.0-3.5 s with two
    BLAS threads after embedding, 2.8-2.9 s with one; larger bundles keep both threads for
    their O(n^2 d) kNN products."""
    if rows >= SMALL_FIT_ROWS:
        yield
        return
    with one_blas_thread():
        yield


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
