"""How far a long command is, on stderr: a progress bar on a terminal, plain lines otherwise (a log file, a CI job,
a pipe), where a bar would be either hidden or a mess of carriage returns."""

import sys
import time
from collections.abc import Callable
from typing import NoReturn, TextIO

from tqdm import tqdm

PLAIN_INTERVAL = 10.0
"""Seconds between two plain lines while waiting (the bar, on a terminal, moves with every image)."""


class Progress:
    """One phase counted in images, e.g. `uploaded` or `finished`, with how many of them failed.

    On a terminal, a tqdm bar. Otherwise a line such as `finished 120 of 1000 images (3 failed)`: after every
    advance when `every` is None (one line per uploaded chunk), else at most once per `every` seconds, and a last
    line when the phase ends, so the final count is always said.
    """

    def __init__(self, verb: str, total: int, *, initial: int = 0, failed: int = 0, every: float | None = None,
                 stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.verb = verb
        self.total = total
        self.done = initial
        self.failed = failed
        self._stream = stream or sys.stderr
        self._every = every
        self._clock = clock
        self._said: tuple[int, int] | None = None  # the counts of the last plain line
        self._last_line = clock()
        self._bar: tqdm[NoReturn] | None = None
        if self._stream.isatty():
            self._bar = tqdm(total=total, initial=initial, desc=verb, unit="image", file=self._stream,
                             dynamic_ncols=True)
            self._show_failed()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def advance(self, count: int = 1, *, failed: int = 0) -> None:
        self.done += count
        self.failed += failed
        if self._bar is not None:
            self._bar.update(count)
            if failed:
                self._show_failed()
        elif self._every is None or self._clock() - self._last_line >= self._every:
            self._say()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self._said != (self.done, self.failed) and self.done:
            self._say()

    def _show_failed(self) -> None:
        if self._bar is not None and self.failed:
            self._bar.set_postfix(failed=self.failed)

    def _say(self) -> None:
        failed = f" ({self.failed} failed)" if self.failed else ""
        print(f"{self.verb} {self.done} of {self.total} images{failed}", file=self._stream, flush=True)
        self._said = (self.done, self.failed)
        self._last_line = self._clock()
