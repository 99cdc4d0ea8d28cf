"""A small progress bar on stderr, drawn only when stderr is a terminal."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

# Called with (bytes sent so far, total) as an upload goes; never with a smaller first value.
ProgressCallback = Callable[[int, int], None]

_MIB = 1024 * 1024
_WIDTH = 24


class Progress:
    """Byte progress of one transfer; a no-op unless enabled and the stream is a TTY."""

    def __init__(
        self, total: int | None, desc: str, enabled: bool = True, stream: TextIO | None = None
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled and _isatty(self.stream)
        self.total = total
        self.desc = desc
        self.done = 0
        self._start = time.monotonic()
        self._last_draw = 0.0

    def update(self, n: int) -> None:
        self.done += n
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last_draw >= 0.1:
            self._last_draw = now
            self._draw(now)

    def close(self) -> None:
        if self.enabled:
            self._draw(time.monotonic())
            self.stream.write("\n")
            self.stream.flush()
            self.enabled = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _draw(self, now: float) -> None:
        rate = self.done / max(now - self._start, 1e-6) / _MIB
        if self.total:
            frac = min(self.done / self.total, 1.0)
            filled = int(frac * _WIDTH)
            bar = "#" * filled + "-" * (_WIDTH - filled)
            text = (
                f"\r{self.desc} [{bar}] {frac:4.0%} "
                f"{self.done / _MIB:.1f}/{self.total / _MIB:.1f} MiB {rate:.1f} MiB/s"
            )
        else:
            text = f"\r{self.desc} {self.done / _MIB:.1f} MiB {rate:.1f} MiB/s"
        self.stream.write(text)
        self.stream.flush()


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
