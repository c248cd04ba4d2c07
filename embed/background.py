"""Work run in threads beside the caller's own, all finished when the caller's block ends.

A build's last steps include writes nothing after them reads (the report's confusion-matrix
PNG, issue 21): they can run beside the next steps instead of before them. The block waits
for every one of them and raises the first failure, so what a transaction commits is on
disk, and a failed block leaves no thread writing into a staging folder being removed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any


class Background:
    """`with Background() as later: later.submit(fn, *args); ...`: each `fn` runs in its own
    daemon thread; leaving the block joins them all, then raises the first error (unless the
    block itself raised, whose exception goes on)."""

    def __init__(self) -> None:
        self._threads: list[threading.Thread] = []
        self._errors: list[BaseException] = []

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        def run() -> None:
            try:
                fn(*args)
            except BaseException as exc:  # noqa: BLE001 - raised again by __exit__
                self._errors.append(exc)

        thread = threading.Thread(target=run, name=f"background-{fn.__name__}", daemon=True)
        thread.start()
        self._threads.append(thread)

    def wait(self) -> None:
        """Join every thread started so far; raise the first error."""
        for thread in self._threads:
            thread.join()
        self._threads.clear()
        if self._errors:
            error, self._errors = self._errors[0], []
            raise error

    def __enter__(self) -> Background:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if kind is None:
            self.wait()
            return
        for thread in self._threads:  # the block failed: wait, then let its error go on
            thread.join()
