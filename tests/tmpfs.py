"""Small tmpfs disks for full-disk tests (the tests run as root); always unmounted."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def mounted(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of our own (we run as root); failing to mount fails the test, never skips."""
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        unmount(where)


def unmount(where: Path) -> None:
    """Unmount; if something still holds it (a failed test's open file), detach it anyway
    so that nothing is left mounted, and fail."""
    if subprocess.run(["umount", str(where)]).returncode:
        subprocess.run(["umount", "-l", str(where)], check=True)
        raise AssertionError(f"{where} was still in use at the end of the test")
