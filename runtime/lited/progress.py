"""What the command line shows while something takes seconds.

On a terminal, work that lasts longer than half a second (a model warming
up, a reload, waiting for the daemon) gets a line on stderr that counts the
seconds and ends with how long it took; elsewhere (pipes, logs, tests)
nothing is printed, so output stays one result per line.
"""
from __future__ import annotations

import sys
import threading
import time
from types import TracebackType
from typing import Optional, TextIO, Type

SHOW_AFTER = 0.5  # seconds: quicker work is not worth a line


class Progress:
    """`with Progress("loading ultraface 1.0.0"):` shows `lited: loading ultraface 1.0.0 ... 3 s`."""

    def __init__(self, what: str, stream: Optional[TextIO] = None) -> None:
        self.what = what
        self.stream = stream or sys.stderr
        self.enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self._done = threading.Event()
        self._shown = False
        self._thread = threading.Thread(target=self._tick, name="progress", daemon=True)

    def __enter__(self) -> "Progress":
        self._t0 = time.monotonic()
        if self.enabled:
            self._thread.start()
        return self

    def _tick(self) -> None:
        if self._done.wait(SHOW_AFTER):
            return
        while True:
            self._shown = True
            self.stream.write(f"\rlited: {self.what} ... {time.monotonic() - self._t0:.0f} s")
            self.stream.flush()
            if self._done.wait(1.0):
                return

    def __exit__(self, kind: Optional[Type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        self._done.set()
        if self.enabled:
            self._thread.join()
        if self._shown:
            outcome = "done" if kind is None else "failed"
            self.stream.write(f"\rlited: {self.what}: {outcome} in {time.monotonic() - self._t0:.1f} s\n")
            self.stream.flush()
