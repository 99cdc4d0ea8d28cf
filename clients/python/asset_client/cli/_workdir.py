"""asset run's working folder: beside the input cache, locked while used, swept when dead."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import uuid
from pathlib import Path
from types import TracebackType

log = logging.getLogger(__name__)

LOCK_NAME = ".asset-run.lock"


class Workdir:
    """<cache>/runs/<random>/, or the folder given (kept as it is at the end).

    Kept on the cache's file system so inputs are hard links to cached blobs, not copies.
    The run holds an flock on a file in it; folders of runs whose lock is free (their
    process died before removing them) are removed when the next run starts.
    """

    def __init__(self, cache_root: Path, given: Path | None, keep: bool) -> None:
        self.runs = cache_root / "runs"
        self.given = given
        self.keep = keep or given is not None
        self.path = (given or self.runs / uuid.uuid4().hex).absolute()
        self._lock: int | None = None

    def __enter__(self) -> Workdir:
        if self.given is None:
            self.runs.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.runs.mkdir(mode=0o700, exist_ok=True)
            self._sweep()
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._lock = fd
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self.keep:
            shutil.rmtree(self.path, ignore_errors=True)
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def _sweep(self) -> None:
        for entry in self.runs.iterdir():
            try:
                fd = os.open(entry / LOCK_NAME, os.O_RDWR | os.O_CLOEXEC)
            except OSError:
                continue  # not a run folder, or one still being made
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live run
            finally:
                os.close(fd)
            log.info("removing %s, left by a run that ended without cleaning up", entry)
            with contextlib.suppress(OSError):
                shutil.rmtree(entry)
